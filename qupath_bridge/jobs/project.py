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
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import shapely
import shapely.geometry

from engine.errors import AnnotationError, RefineError
from engine.features import ProgressFactory
from engine.pipeline import RefineSettings, SlideInput, open_slide, plan, refine
from engine.regions import clean
from qupath_bridge.classes import REFINED_COLOR, ClassNames, class_matches
from qupath_bridge.errors import ProjectError
from qupath_bridge.export import RESULTS_FORMAT, ImageRecord, read_export
from qupath_bridge.geojson_io import (
    QuPathObject,
    clip_to_frame,
    polygons,
    read_objects,
    refined_features,
    union,
    write_features,
)
from qupath_bridge.memory import (
    Memory,
    annotation_keys,
    memory_file,
    read_memory,
    remembered_negative,
    write_memory,
)
from qupath_bridge.outputs import write_json
from qupath_bridge.project import (
    check_version,
    entry_names,
    list_images,
    open_project,
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
from qupath_bridge.summaries import result_fields, rounded

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
class ImageRow:
    """One image of a project run (field order is summary.json's key order)."""

    image: str
    patches: int
    patch_um: float
    coarse_mm2: float
    refined_mm2: float
    relabelled: float
    outline: str
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
) -> ProjectRun | ProjectPlan:
    """Run the whole project command; returns the report (also written as JSON).

    Holds the project's lock for the run (a dry run writes nothing and takes none)."""
    pfile = project_file(project)
    if options.dry_run:
        return _run_project(pfile, options, settings, classes, progress)
    with project_lock(pfile), signals_interrupt():
        return _run_project(pfile, options, settings, classes, progress)


def _run_project(
    pfile: Path,
    options: ProjectOptions,
    settings: RefineSettings,
    classes: ClassNames | None,
    progress: bool | ProgressFactory,
) -> ProjectRun | ProjectPlan:
    classes = classes or ClassNames()
    export = read_export(options.from_export) if options.from_export else None
    if export is not None:
        records = export.images
        objects_of = {r.id: read_objects(r.geojson) for r in records}
    else:
        repair_images(pfile, _chosen_ids(pfile, options.images), fix=not options.dry_run)
        with open_project(pfile, write=False) as qp:
            records = list_images(qp, pfile)
            chosen = select_images(records, options.images)
            objects_of = {r.id: read_image_objects(qp, r.id) for r in chosen}
    records = select_images(records, options.images)
    records = check_slides(records, options.skip_missing)
    memories = {r.id: read_memory(pfile, r.id) for r in records}
    rejected = {
        r.id: remembered_negative(
            r.name,
            memories[r.id],
            objects_of[r.id],
            r.detection_classes is None
            or (memories[r.id] is not None and memories[r.id].refined_class in r.detection_classes),
            options.mpp or r.pixel_um,
        )
        for r in records
    }
    items, used, inputs = gather_inputs(records, objects_of, classes, options.mpp, rejected)

    if options.dry_run:
        plans = plan(items, settings)
        return ProjectPlan(
            tuple(
                PlanRow(
                    image=p.name,
                    patches=p.patches,
                    patch_um=p.patch_um,
                    inside=p.inside,
                    hard_negative=p.negative,
                    coarse_mm2=round(shapely.area(it.coarse) * p.mpp**2 / 1e6, 4),
                    mpp=round(p.mpp, 4),
                )
                for p, it in zip(plans, items, strict=True)
            )
        )

    write_paquo = not options.geojson_only and any(not r.live for r in used)
    if write_paquo:
        check_version(pfile)  # no QuPath, or too old: say so now, not after embedding

    t0 = time.perf_counter()
    result = refine(items, settings, progress=progress)
    shared = sum(result.timings[k] for k in ("prototypes", "train", "regions"))

    results_dir = work_dir(pfile) / "results"
    stamp = timestamp()
    manifest_images, rows, errors = [], [], []
    result_files: list[tuple[Path, list]] = []
    if write_paquo:
        repair_images(pfile, [r.id for r in used if not r.live])
    ctx = open_project(pfile, write=True) if write_paquo else None
    qp = ctx.__enter__() if ctx is not None else None
    try:
        for r, inp, res in zip(used, inputs, result.slides, strict=True):
            regions = res.regions
            if inp.keep is not None:
                # QuPath rounds the kept outlines to 0.01 px, so cutting them out leaves
                # zero-area slivers along their borders: drop pieces under half a patch (the
                # engine's own smallest region).
                cut = shapely.make_valid(regions.difference(inp.keep))
                regions = clean(cut, res.grid.size**2 / 2, 0.0)
            polys = polygons(regions)
            feats = refined_features(
                shapely.MultiPolygon(polys),
                res.grid.xy if options.tiles else None,
                res.grid.size,
                res.proba if options.tiles else None,
                classes.coarse,
                classes.refined,
                REFINED_COLOR,
                mpp=res.info.mpp,
                frame=(res.info.width, res.info.height),
            )
            # written with the manifest after the loop: an interrupted run leaves the last
            # run's results folder as it was
            gj = results_dir / f"{r.id}.geojson"
            result_files.append((gj, feats))
            written, error = False, None
            before = memories.get(r.id)
            notes = annotation_keys(objects_of[r.id])
            if qp is not None and not r.live:
                log.info(f"writing {r.name}")
                tiles = []
                if options.tiles:
                    tiles = list(zip(res.grid.boxes(), res.proba.tolist(), strict=True))
                # Until the save is confirmed, which regions the image holds is unknown.
                write_memory(
                    pfile, r.id, Memory(classes.refined, "pending", polys, inp.rejected, notes)
                )
                try:
                    rep = write_refined(
                        qp, pfile, r.id, polys, tiles, classes.coarse, REFINED_COLOR, stamp
                    )
                    written = True
                    write_memory(
                        pfile, r.id, Memory(classes.refined, "project", polys, inp.rejected, notes)
                    )
                    log.info(
                        "%s: replaced %d refined objects by %d (backup: %s)",
                        r.name,
                        rep.removed,
                        rep.added,
                        rep.backup,
                    )
                except RefineError as e:
                    error = str(e)
                    errors.append(error)
                    log.error("%s", error)
                    # restored from backup: the image holds what it held before
                    if before is not None:
                        write_memory(pfile, r.id, replace(before, rejected=inp.rejected))
                    else:
                        memory_file(pfile, r.id).unlink(missing_ok=True)
            elif r.live:
                # the menu script puts these into the open image after this run
                write_memory(
                    pfile, r.id, Memory(classes.refined, "live", polys, inp.rejected, notes)
                )
            elif before is not None and inp.rejected is not None:
                # --geojson-only: the project still holds what it held; keep what was learnt
                write_memory(pfile, r.id, replace(before, rejected=inp.rejected))
            rows.append(
                ImageRow(
                    image=r.name,
                    **result_fields(res, inp.coarse, regions),
                    seconds=round(res.seconds + shared / len(used), 1),
                    written="project" if written else ("live" if r.live else "geojson"),
                )
            )
            entry = {
                "id": r.id,
                "name": r.name,
                "geojson": gj.name,
                "written_by_paquo": written,
                "refined_class": classes.refined,
            }
            if error:
                entry["error"] = error
            manifest_images.append(entry)
        if qp is not None and any(e["written_by_paquo"] for e in manifest_images):
            save_project(qp)
            prune_backups(pfile, keep=BACKUPS_KEPT)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    for path, feats in result_files:
        write_features(path, feats)
    manifest = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "export_created": export.created if export else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "images": manifest_images,
    }
    write_json(results_dir / "manifest.json", manifest)
    report = ProjectRun(
        images=tuple(rows),
        timings=rounded(result.timings, 2),
        seconds=round(time.perf_counter() - t0, 1),
        results=str(results_dir),
        backup=str(work_dir(pfile) / "backup" / stamp) if write_paquo else None,
        errors=tuple(errors),
    )
    write_json(results_dir / "summary.json", report.to_json())
    if errors:
        raise ProjectError(
            f"{len(errors)} image(s) could not be written (each was restored from its backup): "
            + " | ".join(errors)
        )
    return report
