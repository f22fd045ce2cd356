"""``qupath-refine PROJECT.qpproj``: refine every selected image of a QuPath project together.

Reads the coarse annotations through paquo (or from the QuPath script's export folder), runs
the engine over all images in one run (with ``--method prototype`` the global prototypes span
the project), and writes back
image by image: refined regions as detections and patches as tiles with ``p_<class>``, under
the derived class ``<class>: refined``. Round-trip rules, so the pathologist can edit and run
again:

* the coarse input is the current annotations of the coarse class (edited outlines count);
* annotations of the negative class (``Ignore*``) are hard negatives: always normal, whatever
  the model or the pseudo-labels say;
* a refined region the user kept, by converting it to an annotation or locking it, is left
  alone and new regions are cut around it; a converted one also counts as confirmed tumour;
* a refined region the last run wrote that the user deleted (and did not convert to an
  annotation) is remembered as not tumour, like ``Ignore*``, in this and every later run
  (``qupath-refine/memory/<id>.json``; delete that file to forget);
* only unlocked ``<class>: refined`` detections and tiles are replaced; nothing else changes.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import shapely
import shapely.geometry

from engine.cluster import DaskSettings
from engine.errors import AnnotationError, RefineError
from engine.features import ProgressFactory
from engine.geometry import polygons
from engine.pipeline import (
    STAGES,
    RefineSettings,
    SlideInput,
    SlideResult,
    open_slide,
    plan,
    refine,
)
from engine.regions import clean
from qupath_bridge.classes import REFINED_COLOR, ClassNames, class_matches
from qupath_bridge.errors import DiskFullError, OutputError, ProjectError
from qupath_bridge.export import RESULTS_FORMAT, Export, ImageRecord, read_export
from qupath_bridge.geojson_io import (
    QuPathObject,
    clip_to_frame,
    collection_json,
    read_objects,
    refined_features,
    union,
)
from qupath_bridge.memory import (
    Memory,
    annotation_keys,
    memory_file,
    read_memory,
    remembered_negative,
    write_memory,
)
from qupath_bridge.outputs import PROJECT_ADVICE, json_bytes, write_files
from qupath_bridge.project import (
    check_version,
    disk_full,
    entry_names,
    list_images,
    open_project,
    os_error_in,
    project_file,
    project_lock,
    prune_backups,
    read_image_objects,
    repair_image_data,
    save_project,
    timestamp,
    work_dir,
    write_refined,
)
from qupath_bridge.summaries import OutlineColumns, result_fields, rounded, run_json

log = logging.getLogger("qupath_refine")

BACKUPS_KEPT = 10  # runs whose data-file backups are kept under qupath-refine/backup/


@dataclass(frozen=True)
class ProjectOptions:
    images: tuple[str, ...] = ()  # image names or IDs; empty: every image
    from_export: Path | None = None
    dry_run: bool = False
    skip_missing: bool = False
    geojson_only: bool = False  # write results GeoJSON only, never the project's data files
    mpp: float | None = None
    tiles: bool = True


@dataclass(frozen=True)
class PlanRow:
    """One image of a dry run: what a real run would refine."""

    image: str
    patches: int
    patch_um: float
    inside: int
    hard_negative: int
    coarse_mm2: float
    mpp: float


@dataclass(frozen=True)
class ProjectPlan:
    """What ``--dry-run`` reports; it writes nothing."""

    images: tuple[PlanRow, ...]


@dataclass(frozen=True)
class _ImageName:
    image: str


@dataclass(frozen=True)
class ImageRow(OutlineColumns, _ImageName):
    """One image of a project run: ``image``, the :class:`OutlineColumns`, then these."""

    seconds: float
    written: str  # "project", "live" (the menu script writes it) or "geojson"


@dataclass(frozen=True)
class ProjectRun:
    """What a project run did; :meth:`to_json` is its results/summary.json."""

    images: tuple[ImageRow, ...]
    timings: dict[str, float]
    seconds: float
    results: str
    backup: str | None  # the data files' backups of this run; None when none were written
    errors: tuple[str, ...]
    #: on a Dask cluster: the images not refined and why ({"image", "error"}), and where it
    #: ran ({"address", "workers"}); neither is in a single-process summary.json
    failed: tuple[dict[str, str], ...] = ()
    dask: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return run_json(self)


@dataclass
class ImageInputs:
    """An image's objects sorted by the round-trip rules."""

    coarse: shapely.Geometry | None
    negative: shapely.Geometry | None
    keep: shapely.Geometry | None  # user-kept refined regions: not replaced, not overlapped
    classes: set[str] = field(default_factory=set)
    rejected: shapely.Geometry | None = None  # refined regions the user deleted (remembered)


def sort_objects(objects: list[QuPathObject], classes: ClassNames) -> ImageInputs:
    """Apply the round-trip rules to one image's objects (see the module docstring)."""
    coarse, negative, keep = [], [], []
    for o in objects:
        c = o.classification
        if o.object_type == "annotation":
            if class_matches(c, classes.coarse):
                coarse.append(o.geometry)
            elif c == classes.refined:  # a refined region the user accepted
                coarse.append(o.geometry)
                keep.append(o.geometry)
            elif classes.negative and class_matches(c, classes.negative):
                negative.append(o.geometry)
        elif o.object_type == "detection" and c == classes.refined and o.locked:
            keep.append(o.geometry)
    present = {
        o.classification or "(unclassified)" for o in objects if o.object_type == "annotation"
    }
    return ImageInputs(union(coarse), union(negative), union(keep), present)


def select_images(records: list[ImageRecord], wanted: tuple[str, ...]) -> list[ImageRecord]:
    if not records:
        raise ProjectError("The project has no images: add slides to it in QuPath first.")
    if not wanted:
        return records
    by_key = {r.name: r for r in records} | {r.id: r for r in records}
    missing = [w for w in wanted if w not in by_key]
    if missing:
        names = ", ".join(repr(r.name) for r in records)
        raise ProjectError(
            f"No image named {', '.join(map(repr, missing))} in the project: {names}."
        )
    return list({by_key[w].id: by_key[w] for w in wanted}.values())


def check_slides(records: list[ImageRecord], skip_missing: bool) -> list[ImageRecord]:
    """Images whose slide is a local file that exists; the others are an error listing each
    name and expected path, or skipped with a warning under ``--skip-missing``."""
    missing = [r for r in records if r.slide is None or not r.slide.is_file()]
    if missing and not skip_missing:
        lines = "; ".join(f"{r.name!r} expects {r.slide or 'a non-local image'}" for r in missing)
        raise ProjectError(
            f"{len(missing)} slide(s) not found: {lines}. Fix the paths in QuPath (File > "
            "Project > Check URIs) or pass --skip-missing to go on without them."
        )
    for r in missing:
        log.warning("skipping %r: slide not found at %s", r.name, r.slide)
    return [r for r in records if r not in missing]


def gather_inputs(
    records: list[ImageRecord],
    objects: dict[str, list[QuPathObject]],
    classes: ClassNames,
    mpp: float | None,
    rejected: dict[str, shapely.Geometry | None] | None = None,
) -> tuple[list[SlideInput], list[ImageRecord], list[ImageInputs]]:
    """SlideInputs for the images that have coarse annotations; the others are skipped.
    ``rejected``: per image, tissue the user rejected by deleting refined regions: negative,
    except where the user has since kept a region (converted or locked)."""
    items, used, sorted_ = [], [], []
    seen: set[str] = set()
    for r in records:
        inp = sort_objects(objects[r.id], classes)
        inp.rejected = (rejected or {}).get(r.id)
        if inp.rejected is not None:
            no = inp.rejected if inp.keep is None else inp.rejected.difference(inp.keep)
            inp.negative = union([g for g in (inp.negative, no) if g is not None])
        seen |= inp.classes
        if inp.coarse is None or inp.coarse.is_empty:
            log.warning("skipping %r: no %r annotation", r.name, classes.coarse)
            continue
        size = (r.width, r.height) if r.width and r.height else None
        assert r.slide is not None, "check_slides keeps only images with a local slide"
        item = SlideInput(
            path=r.slide,
            coarse=inp.coarse,
            negative=inp.negative,
            mpp=mpp or r.pixel_um,
            name=r.name,
            qupath_size=size,
        )
        with open_slide(item) as s:
            item.coarse = clip_to_frame(item.coarse, s.width, s.height, r.name)
        items.append(item)
        used.append(r)
        sorted_.append(inp)
    if not items:
        listing = ", ".join(sorted(seen)) or "none"
        raise AnnotationError(
            f"No image has an annotation of class {classes.coarse!r}. Annotation classes in the "
            f"project: {listing}. Pass --class with one of them."
        )
    return items, used, sorted_


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt while a project run writes, like Ctrl-C,
    so the interrupt path restores the image being written from its backup and releases the
    lock. (The JVM leaves these signals to Python: ``-Xrs``, see project.jvm_options.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {s: signal.signal(s, interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def repair_images(pfile: Path, ids: list[str], fix: bool = True) -> None:
    """Check (and if need be restore) the data files of the images a run will read or write,
    before QuPath opens any of them: one warning line per restored image. ``fix`` False (dry
    run): a damaged file is an error saying what a real run would restore it from."""
    names = entry_names(pfile)
    for eid in ids:
        said = repair_image_data(pfile, eid, names.get(eid), fix=fix)
        if said:
            log.warning("%s", said)


def _chosen_ids(pfile: Path, wanted: tuple[str, ...]) -> list[str]:
    """Entry IDs of the images a run reads, from project.qpproj (no JVM)."""
    records = [ImageRecord(n, i, None) for i, n in entry_names(pfile).items()]
    return [r.id for r in select_images(records, wanted)] if records else []


def refine_project(
    project: Path,
    options: ProjectOptions,
    settings: RefineSettings,
    classes: ClassNames | None = None,
    progress: bool | ProgressFactory = True,
    dask: DaskSettings | None = None,
) -> ProjectRun | ProjectPlan:
    """Run the whole project command; returns the report (also written as JSON), or with
    ``options.dry_run`` the plan. ``dask``: refine the images on a Dask cluster, one task per
    image (a dry run ignores it).

    Holds the project's lock for the run (a dry run writes nothing and takes none)."""
    pfile = project_file(project)
    classes = classes or ClassNames()
    if options.dry_run:
        return plan_project(read_project(pfile, options, classes), settings)
    with project_lock(pfile), signals_interrupt():
        inputs = read_project(pfile, options, classes)
        return refine_and_write(pfile, inputs, options, settings, classes, progress, dask)


@dataclass(frozen=True)
class ProjectInputs:
    """The images a run refines, with what was read for them."""

    export: Export | None  # the menu script's export, when read from one
    records: list[ImageRecord]  # the images with coarse annotations, in run order
    inputs: list[ImageInputs]  # their objects sorted by the round-trip rules
    items: list[SlideInput]  # what the engine refines
    objects: dict[str, list[QuPathObject]]  # every read image's objects, by entry ID
    memories: dict[str, Memory | None]  # what earlier runs wrote, by entry ID


def read_project(pfile: Path, options: ProjectOptions, classes: ClassNames) -> ProjectInputs:
    """The selected images' objects, from the export folder or through paquo, sorted by the
    round-trip rules; regions deleted since an earlier run become hard negatives."""
    export, records, objects = _read_objects(pfile, options)
    records = check_slides(select_images(records, options.images), options.skip_missing)
    memories = {r.id: read_memory(pfile, r.id) for r in records}
    rejected = {r.id: _rejected(r, memories[r.id], objects[r.id], options.mpp) for r in records}
    items, used, inputs = gather_inputs(records, objects, classes, options.mpp, rejected)
    return ProjectInputs(export, used, inputs, items, objects, memories)


def _read_objects(
    pfile: Path, options: ProjectOptions
) -> tuple[Export | None, list[ImageRecord], dict[str, list[QuPathObject]]]:
    """Every image of the project, and the objects of the selected ones."""
    if options.from_export:
        export = read_export(options.from_export)
        objects = {}
        for r in export.images:
            assert r.geojson is not None, "read_export names every image's GeoJSON"
            objects[r.id] = read_objects(r.geojson)
        return export, export.images, objects
    repair_images(pfile, _chosen_ids(pfile, options.images), fix=not options.dry_run)
    with open_project(pfile, write=False) as qp:
        records = list_images(qp, pfile)
        chosen = select_images(records, options.images)
        return None, records, {r.id: read_image_objects(qp, r.id) for r in chosen}


def _rejected(
    r: ImageRecord, memory: Memory | None, objects: list[QuPathObject], mpp: float | None
) -> shapely.Geometry | None:
    # Deleted regions can only be told when the objects include the refined detections:
    # paquo reads them all; an export holds the classes it lists (none from older scripts).
    compare = r.detection_classes is None or (
        memory is not None and memory.refined_class in r.detection_classes
    )
    return remembered_negative(r.name, memory, objects, compare, mpp or r.pixel_um)


def plan_project(inputs: ProjectInputs, settings: RefineSettings) -> ProjectPlan:
    """What a run would refine, from the grids alone (``--dry-run``)."""
    rows = []
    for p, it in zip(plan(inputs.items, settings), inputs.items, strict=True):
        rows.append(
            PlanRow(
                image=p.name,
                patches=p.patches,
                patch_um=p.patch_um,
                inside=p.inside,
                hard_negative=p.negative,
                coarse_mm2=round(shapely.area(it.coarse) * p.mpp**2 / 1e6, 4),
                mpp=round(p.mpp, 4),
            )
        )
    return ProjectPlan(tuple(rows))


@dataclass(frozen=True)
class ImageOutcome:
    """What a run did with one image."""

    row: ImageRow
    geojson: Path  # its results GeoJSON, written with the manifest after all images
    features: list[Any]
    written: bool  # into the project's data file, through paquo
    error: str | None  # why that write failed (the image was restored from its backup)
    live: Memory | None = None  # an open image's memory, written after the results


def refine_and_write(
    pfile: Path,
    got: ProjectInputs,
    options: ProjectOptions,
    settings: RefineSettings,
    classes: ClassNames,
    progress: bool | ProgressFactory,
    dask: DaskSettings | None = None,
) -> ProjectRun:
    """Refine, write each image back (through paquo unless it is open in QuPath or
    ``--geojson-only``), then the results folder; a :class:`ProjectError` if any image
    could not be written.

    With ``dask`` the images are refined on the cluster's workers and each is written here,
    by :meth:`WriteBack.image` as in a single-process run, as soon as its result arrives;
    an image that could not be refined is in the report's ``failed`` and the manifest."""
    write_paquo = not options.geojson_only and any(not r.live for r in got.records)
    if write_paquo:
        check_version(pfile)  # no QuPath, or too old: say so now, not after embedding
    t0 = time.perf_counter()
    results_dir = work_dir(pfile) / "results"
    stamp = timestamp()
    outcomes: dict[int, ImageOutcome] = {}
    failed: dict[int, str] = {}
    try:
        with ExitStack() as stack:
            # on a cluster: connected, and the shared cache checked, before any data file is touched
            done, timings = _refined(stack, got, settings, progress, dask, failed)
            if write_paquo:
                repair_images(pfile, [r.id for r in got.records if not r.live])
            qp = stack.enter_context(open_project(pfile, write=True)) if write_paquo else None
            back = WriteBack(pfile, qp, classes, options.tiles, stamp)
            for k, res, seconds in done:
                r, inp = got.records[k], got.inputs[k]
                outcomes[k] = back.image(r, inp, res, got, results_dir, round(seconds, 1))
            if qp is not None and any(o.written for o in outcomes.values()):
                save_project(qp)
                prune_backups(pfile, keep=BACKUPS_KEPT)
        report = ProjectRun(
            images=tuple(o.row for _, o in sorted(outcomes.items())),
            timings=rounded(timings, 2),
            seconds=round(time.perf_counter() - t0, 1),
            results=str(results_dir),
            backup=str(work_dir(pfile) / "backup" / stamp) if write_paquo else None,
            errors=tuple(o.error for _, o in sorted(outcomes.items()) if o.error),
        )
        if dask is not None:
            why = tuple(
                {"image": got.records[k].name, "error": e} for k, e in sorted(failed.items())
            )
            report = replace(
                report,
                failed=why,
                dask=dask.summary(),
            )
        write_results(results_dir, got, outcomes, failed, classes, report.to_json())
        for k, o in sorted(outcomes.items()):
            if o.live is not None:
                back.remember(got.records[k], o.live)
    except (RefineError, OSError) as e:
        if not (isinstance(e, DiskFullError) or disk_full(e)):
            raise
        raise DiskFullError(full_disk_message(e, got, outcomes)) from None
    if report.errors:
        raise ProjectError(
            f"{len(report.errors)} image(s) could not be written (each was restored from its "
            "backup): " + " | ".join(report.errors)
        )
    return report


def full_disk_message(
    e: BaseException, got: ProjectInputs, outcomes: dict[int, ImageOutcome]
) -> str:
    """One line for a run the disk stopped: where, what each image now holds, what to do."""
    if isinstance(e, DiskFullError):
        what = str(e)  # worded by write_refined or project_lock
    else:
        cause = os_error_in(e)
        where = getattr(e, "path", None) or (cause.filename if cause is not None else None)
        what = f"The disk is full: could not write in {where or 'the project'}."
    written = [got.records[k].name for k, o in sorted(outcomes.items()) if o.written]
    written += [n for n in getattr(e, "written", ()) if n not in written]
    if not written:
        held = "No image's data file was changed"
    elif len(written) == len(got.records):
        held = "Every image was written into the project before that"
    else:
        held = (
            f"Written into the project before that: {', '.join(written)}; every other image "
            "holds what it held"
        )
    return (
        f"{what} {held}, and the results folder may not list this run. Free some space, then "
        "run again."
    )


def _refined(
    stack: ExitStack,
    got: ProjectInputs,
    settings: RefineSettings,
    progress: bool | ProgressFactory,
    dask: DaskSettings | None,
    failed: dict[int, str],
) -> tuple[Iterator[tuple[int, SlideResult, float]], dict[str, float]]:
    """The images' results (index, result, seconds) as they become ready, and the run's stage
    timings. In this process every result is ready at once, each image charged its share of
    the shared stages; on Dask (the client held open by ``stack``) they arrive one by one, the
    timings add up as they do, and images that fail go to ``failed``."""
    done: Iterator[tuple[int, SlideResult, float]]
    if dask is None:
        result = refine(got.items, settings, progress=progress)
        shared = sum(result.timings[k] for k in ("prototypes", "train", "regions"))
        each = shared / len(got.records)
        done = ((k, res, res.seconds + each) for k, res in enumerate(result.slides))
        return done, result.timings
    from qupath_bridge.dask_runner import images_on_dask

    timings = dict.fromkeys(STAGES, 0.0)
    done = stack.enter_context(images_on_dask(got.items, settings, dask, progress, timings, failed))
    return done, timings


def without_kept(regions: shapely.Geometry, inp: ImageInputs, res: SlideResult) -> shapely.Geometry:
    """The refined regions less those the user kept (converted or locked)."""
    if inp.keep is None:
        return regions
    # QuPath rounds the kept outlines to 0.01 px, so cutting them out leaves zero-area
    # slivers along their borders: drop pieces under half a patch (the engine's own smallest
    # region).
    cut = shapely.make_valid(regions.difference(inp.keep))
    return clean(cut, res.grid.size**2 / 2, 0.0)


@dataclass(frozen=True)
class WriteBack:
    """Where a run puts each image's regions: into the project through paquo (``qp``), or,
    for images open in QuPath and with ``--geojson-only``, only into the results folder;
    each image's memory records what it now holds."""

    pfile: Path
    qp: Any | None  # the paquo project, open for writing; None: paquo writes nothing
    classes: ClassNames
    tiles: bool
    stamp: str  # names this run's backups

    def image(
        self,
        r: ImageRecord,
        inp: ImageInputs,
        res: SlideResult,
        got: ProjectInputs,
        results_dir: Path,
        seconds: float,
    ) -> ImageOutcome:
        regions = without_kept(res.regions, inp, res)
        polys = polygons(regions)
        feats = refined_features(
            shapely.MultiPolygon(polys),
            res.grid.xy if self.tiles else None,
            res.grid.size,
            res.proba if self.tiles else None,
            self.classes.coarse,
            self.classes.refined,
            REFINED_COLOR,
            mpp=res.info.mpp,
            frame=(res.info.width, res.info.height),
        )
        before = got.memories.get(r.id)
        notes = annotation_keys(got.objects[r.id])
        written, error, live = False, None, None
        if self.qp is not None and not r.live:
            written, error = self.through_paquo(r, inp, res, polys, before, notes)
        elif r.live:
            # the menu script puts these into the open image after this run: remembered once
            # the results are written (refine_and_write)
            live = Memory(self.classes.refined, "live", polys, inp.rejected, notes)
        elif before is not None and inp.rejected is not None:
            # --geojson-only: the project still holds what it held; keep what was learnt
            self.remember(r, replace(before, rejected=inp.rejected))
        row = ImageRow(
            image=r.name,
            **result_fields(res, inp.coarse, regions),
            seconds=seconds,
            written="project" if written else ("live" if r.live else "geojson"),
        )
        return ImageOutcome(row, results_dir / f"{r.id}.geojson", feats, written, error, live)

    def through_paquo(
        self,
        r: ImageRecord,
        inp: ImageInputs,
        res: SlideResult,
        polys: list[shapely.Polygon],
        before: Memory | None,
        notes: frozenset[str],
    ) -> tuple[bool, str | None]:
        """Replace the image's refined objects in its data file: whether it was written, and
        why the run failed there (the image is then restored from its backup, and its memory
        says what it held before)."""
        log.info(f"writing {r.name}")
        tiles = []
        if self.tiles:
            tiles = [
                (box, p)
                for box, p in zip(res.grid.boxes(), res.proba.tolist(), strict=True)
                if math.isfinite(p)  # NaN: a slide no model scored has no tiles
            ]
        refined = self.classes.refined
        # Until the save is confirmed, which regions the image holds is unknown.
        self.remember(r, Memory(refined, "pending", polys, inp.rejected, notes))
        try:
            rep = write_refined(
                self.qp,
                self.pfile,
                r.id,
                polys,
                tiles,
                self.classes.coarse,
                REFINED_COLOR,
                self.stamp,
            )
        except RefineError as e:
            full = isinstance(e, DiskFullError)  # the run stops: its error line says it
            if not full:
                log.error("%s", e)
            # restored from backup: the image holds what it held before
            if before is not None:
                self.remember(r, replace(before, rejected=inp.rejected))
            else:
                memory_file(self.pfile, r.id).unlink(missing_ok=True)
            if full:
                raise  # the next images would fail alike
            return False, str(e)
        try:
            self.remember(r, Memory(refined, "project", polys, inp.rejected, notes))
        except OutputError as e:
            # written: its memory stays "pending" (the next run learns nothing from it)
            said = (
                f"Image {r.name!r} was written into the project, but the record of what was "
                "written was not"
            )
            if disk_full(e):
                raise DiskFullError(f"The disk is full: {said}.", (r.name,)) from None
            raise ProjectError(f"{said}: {e}") from None
        log.info(
            "%s: replaced %d refined objects by %d (backup: %s)",
            r.name,
            rep.removed,
            rep.added,
            rep.backup,
        )
        return True, None

    def remember(self, r: ImageRecord, memory: Memory) -> None:
        write_memory(self.pfile, r.id, memory)


def write_results(
    results_dir: Path,
    got: ProjectInputs,
    outcomes: dict[int, ImageOutcome],
    failed: dict[int, str],
    classes: ClassNames,
    summary: dict[str, Any],
) -> None:
    """Each image's results GeoJSON, the run's ``summary`` and the manifest the menu script
    reads back, written after every image and together (:func:`write_files`: every file to a
    temporary first, a failure there leaves the last run's results as they were; then
    renamed in that order, the manifest last). ``outcomes`` and ``failed`` (images not
    refined: why) are by index in ``got.records``; a failed image has no results GeoJSON."""
    files = {
        done.geojson: collection_json(done.features, ensure_ascii=True).encode("utf-8")
        for _, done in sorted(outcomes.items())
    }
    entries = []
    for k, r in enumerate(got.records):
        o = outcomes.get(k)
        entry = {
            "id": r.id,
            "name": r.name,
            "geojson": o.geojson.name if o else None,
            "written_by_paquo": o is not None and o.written,
            "refined_class": classes.refined,
        }
        error = o.error if o else failed[k]
        if error:
            entry["error"] = error
        entries.append(entry)
    manifest = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "export_created": got.export.created if got.export else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "images": entries,
    }
    files[results_dir / "summary.json"] = json_bytes(summary)
    files[results_dir / "manifest.json"] = json_bytes(manifest)
    write_files(files, PROJECT_ADVICE)
