"""What the CLI commands do, as functions tests call directly.

Slides and GeoJSON in, refined GeoJSON, overlay pictures and a summary out. Everything is
computed before anything is written, and every file is written atomically, so a failure
leaves the output folder as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import geojson
import shapely

from engine.errors import AnnotationError, RefineError
from engine.evaluation import evaluate
from engine.features import ProgressFactory
from engine.overlay import render_overlay
from engine.pipeline import (
    RefineResult,
    RefineSettings,
    SlideInput,
    SlideResult,
    open_slide,
    refine,
)
from engine.slide import Slide
from qupath_bridge.classes import REFINED_COLOR, ClassNames
from qupath_bridge.geojson_io import (
    DEFAULT_COLORS,
    annotation_features,
    class_geometry,
    clip_to_frame,
    read_objects,
    refined_features,
    select_geometry,
    write_features,
)
from qupath_bridge.outputs import check_out_dir, locked_out_dir, write_files

log = logging.getLogger("qupath_refine")

OVERLAY_SIDE = 1600  # px, long side of overlay pictures: detail without huge files


def load_inputs(
    slides: list[Path], coarse_files: list[Path], classes: ClassNames, mpp: float | None
) -> list[SlideInput]:
    """Pair slides with their GeoJSON (in order), select the classes, check the frame."""
    if len(slides) != len(coarse_files):
        raise AnnotationError(
            f"Got {len(slides)} slides and {len(coarse_files)} --coarse files: give one "
            "GeoJSON per slide, in the same order."
        )
    items = []
    for path, gj in zip(slides, coarse_files, strict=True):
        with Slide(path, mpp=mpp) as s:
            # Only annotations are inputs: a cell export's detections are skipped unbuilt.
            objects = read_objects(gj, ("annotation",))
            source = f"{gj.name} (for {path.name})"
            coarse = select_geometry(objects, classes.coarse, source)
            coarse = clip_to_frame(coarse, s.width, s.height, source)
            # the same class rule as projects: `Ignore*` also takes `Ignore*: folds`
            negative = class_geometry(objects, classes.negative) if classes.negative else None
        items.append(SlideInput(path=path, coarse=coarse, negative=negative, mpp=mpp))
    return items


#: inner extensions that belong to the format, stripped along with the last one
_FORMAT_INFIXES = (".ome",)


def _stem(path: Path) -> str:
    """The name outputs are called by: the file name without its extension (``case.A1.svs``
    -> ``case.A1``; double extensions such as ``.ome.tif`` -> ``slide``)."""
    name = Path(path).name
    stem = Path(name).stem or name
    for infix in _FORMAT_INFIXES:
        if stem.lower().endswith(infix) and len(stem) > len(infix):
            stem = stem[: -len(infix)]
    return stem


def output_names(paths: list[Path]) -> tuple[list[str], list[dict]]:
    """A unique output name per input slide, and the collisions that had to be resolved.

    Slides whose stems collide (``x/slide.svs``, ``y/slide.tif``; compared case-blind, as
    macOS and Windows do) get their folder's name appended (``slide.x``, ``slide.y``), else
    a hash of their full path, else (the same file given twice) their position: the same
    inputs get the same names in any order, and a slide that collides with nothing keeps
    its plain stem.
    """
    stems = [_stem(p) for p in paths]
    names = list(stems)

    def clashes(ns: list[str]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(ns):
            groups.setdefault(n.casefold(), []).append(i)
        return [g for g in groups.values() if len(g) > 1]

    def path_hash(i: int) -> str:
        return hashlib.sha256(str(Path(paths[i]).resolve()).encode()).hexdigest()[:8]

    ways = (
        lambda i: f"{stems[i]}.{Path(paths[i]).resolve().parent.name or 'root'}",
        lambda i: f"{stems[i]}.{path_hash(i)}",
        lambda i: f"{stems[i]}.{path_hash(i)}.{i + 1}",
    )
    for way in ways:
        groups = clashes(names)
        if not groups:
            break
        for g in groups:
            for i in g:
                names[i] = way(i)
    collisions = []
    for g in clashes(stems):
        collisions.append(
            {
                "stem": stems[g[0]],
                "slides": [str(paths[i]) for i in g],
                "names": [names[i] for i in g],
            }
        )
    for c in collisions:
        pairs = ", ".join(f"{s} -> {n}.*" for s, n in zip(c["slides"], c["names"], strict=True))
        log.warning(f"slides share the output name {c['stem']!r}; writing {pairs}")
    return names, collisions


def slide_rows(result: RefineResult, items: list[SlideInput], seconds: float) -> list[dict]:
    """Per-slide summary: patches, coarse and refined area, share relabelled, and whether the
    coarse outline was edited or, judged loose, re-drawn."""
    rows = []
    for item, r in zip(items, result.slides, strict=True):
        rows.append(
            {
                "slide": r.name,
                **result_fields(r, item.coarse, r.regions),
                "regions": len(getattr(r.regions, "geoms", [])),
                "cached": r.cached,
                "seconds": round(seconds, 2),
            }
        )
    return rows


def result_fields(r: SlideResult, coarse: shapely.Geometry, regions: shapely.Geometry) -> dict:
    """The columns the slide and project summaries share: patches, coarse and refined area
    (mm²), share of patches relabelled, and how the outline was drawn."""
    um2 = r.info.mpp**2
    return {
        "patches": len(r.grid),
        "patch_um": r.grid_settings.side_um,
        "coarse_mm2": round(shapely.area(coarse) * um2 / 1e6, 4),
        "refined_mm2": round(shapely.area(regions) * um2 / 1e6, 4),
        "relabelled": round(r.relabelled_share, 4),
        "outline": r.outline,
    }


def render_outputs(
    result: RefineResult,
    items: list[SlideInput],
    out_dir: Path,
    classes: ClassNames,
    tiles: bool = True,
    truths: list[shapely.Geometry | None] | None = None,
    names: list[str] | None = None,
) -> tuple[dict[Path, bytes], list[dict[str, Path]]]:
    """Every slide's refined GeoJSON and overlay PNG, computed in memory (thumbnails read,
    pictures encoded) so that nothing is written until all of it has worked."""
    files: dict[Path, bytes] = {}
    written = []
    truths = truths or [None] * len(items)
    names = names or output_names([Path(i.path) for i in items])[0]
    for item, r, truth, stem in zip(items, result.slides, truths, names, strict=True):
        feats = refined_features(
            r.regions,
            r.grid.xy if tiles else None,
            r.grid.size,
            r.proba if tiles else None,
            classes.coarse,
            classes.refined,
            REFINED_COLOR,
            mpp=r.info.mpp,
            frame=(r.info.width, r.info.height),
        )
        gj = out_dir / f"{stem}.refined.geojson"
        files[gj] = geojson.dumps(geojson.FeatureCollection(feats)).encode("utf-8")
        with open_slide(item) as s:
            thumb, ds = s.thumbnail(s.mpp * max(1.0, max(s.width, s.height) / OVERLAY_SIDE))
        img = render_overlay(thumb, ds, item.coarse, r.regions, truth, r.grid, r.proba)
        png = out_dir / f"{stem}.overlay.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        files[png] = buf.getvalue()
        written.append({"geojson": gj, "overlay": png})
    return files, written


def write_outputs(
    result: RefineResult,
    items: list[SlideInput],
    out_dir: Path,
    classes: ClassNames,
    tiles: bool = True,
    truths: list[shapely.Geometry | None] | None = None,
    names: list[str] | None = None,
) -> list[dict[str, Path]]:
    """Refined GeoJSON and an overlay PNG per slide, all written together (or none); returns
    the paths written."""
    files, written = render_outputs(result, items, out_dir, classes, tiles, truths, names)
    write_files(files)
    return written


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> Path:
    """One JSON file, written atomically (an :class:`OutputError` when it cannot be)."""
    write_files({Path(path): json_bytes(data)})
    return path


def settings_dict(settings: RefineSettings) -> dict:
    d = asdict(settings)
    d["cache_dir"] = str(settings.cache_dir) if settings.cache_dir else None
    return d


def refine_slides(
    slides: list[Path],
    coarse_files: list[Path],
    out_dir: Path,
    settings: RefineSettings,
    classes: ClassNames = ClassNames(),
    mpp: float | None = None,
    tiles: bool = True,
    progress: bool | ProgressFactory = True,
    on_stage=None,
) -> dict:
    """The ``slide`` command: refine slides together, write GeoJSON, pictures, summary."""
    check_out_dir(out_dir)  # before any work: a bad --out fails in seconds
    t0 = time.perf_counter()
    items = load_inputs(slides, coarse_files, classes, mpp)
    names, collisions = output_names([Path(i.path) for i in items])
    # Locked from here: a second run on this --out is refused before it embeds anything.
    with locked_out_dir(out_dir):
        result = refine(items, settings, progress=progress, on_stage=on_stage)
        seconds = time.perf_counter() - t0
        (on_stage or log.info)(f"writing the results to {out_dir}")
        files, written = render_outputs(result, items, out_dir, classes, tiles, names=names)
        summary = slide_summary(result, items, seconds, written, collisions, settings, classes)
        files[out_dir / "summary.json"] = json_bytes(summary)
        write_files(files)  # all or none, the summary included
    return summary


def slide_summary(
    result: RefineResult,
    items: list[SlideInput],
    seconds: float,
    written: list[dict[str, Path]],
    collisions: list[dict],
    settings: RefineSettings,
    classes: ClassNames,
) -> dict:
    return {
        "slides": slide_rows(result, items, seconds),
        "outputs": [
            {"slide": str(item.path), **{k: str(v) for k, v in w.items()}}
            for item, w in zip(items, written, strict=True)
        ],
        "name_collisions": collisions,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "pseudo_labels": None
        if result.pseudo is None
        else {
            "major_prototypes": [int(i) for i in result.pseudo.major.nonzero()[0]],
            "outside_to_tumour": result.pseudo.n_flipped_in,
            "inside_to_normal": result.pseudo.n_flipped_out,
        },
        "settings": settings_dict(settings),
        "class": classes.coarse,
        "refined_class": classes.refined,
    }


def evaluate_files(
    slide_path: Path,
    truth_path: Path,
    pred_path: Path,
    truth_class: str | None,
    pred_class: str | None,
    mpp: float | None,
    eval_mpp: float,
    patch_um: float,
) -> dict:
    """The ``evaluate`` command: truth from GeoJSON or a mask image, prediction from GeoJSON."""
    from engine.evaluation import mask_to_geometry
    from engine.patches import GridSettings, check_patch_budget

    with Slide(slide_path, mpp=mpp) as s:
        if truth_path.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".bmp"):
            if not truth_path.is_file():
                raise AnnotationError(f"Truth mask not found: {truth_path}")
            truth = mask_to_geometry(truth_path, s.width, s.height)
        else:
            truth = _objects_geometry(truth_path, truth_class, "annotation")
        pred = _objects_geometry(pred_path, pred_class, None)
        grid = GridSettings(patch_um=patch_um)
        check_patch_budget(s.width, s.height, s.mpp, grid, slide_path.name)
        return evaluate(s, truth, pred, eval_mpp, grid)


def _objects_geometry(path: Path, class_name: str | None, object_type: str | None):
    """Union of a file's areal objects (tiles excluded), filtered by class if given.

    A file without any such object is an empty outline, not an error: the truth of a benign
    slide, or a prediction that found nothing. A class that matches none of the objects
    present is an error (most likely a typo)."""
    objects = [o for o in read_objects(path) if o.object_type != "tile"]
    if not objects:
        log.info("%s holds no objects with an area: scored as an empty outline", path.name)
        return shapely.Polygon()
    if object_type:
        objects = [o for o in objects if o.object_type == object_type] or objects
    if class_name:
        return select_geometry(objects, class_name, path.name, ("annotation", "detection"))
    return shapely.make_valid(shapely.unary_union([o.geometry for o in objects]))


def run_demo(
    out_dir: Path,
    seed: int = 0,
    progress: bool | ProgressFactory = True,
    on_stage=None,
    cache_dir: Path | None = None,
    device: str = "auto",
) -> dict:
    """The ``demo`` command: a synthetic slide with a known truth, refined end to end."""
    from engine.patches import GridSettings
    from engine.synthetic import make_demo_slide

    t0 = time.perf_counter()
    (on_stage or log.info)("writing a synthetic slide")
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = make_demo_slide(out_dir / "demo-slide.tif", seed=seed)
    coarse_path = write_features(
        out_dir / "demo-slide.coarse.geojson", annotation_features(demo.coarse, "Tumor")
    )
    truth_path = write_features(
        out_dir / "demo-slide.truth.geojson", annotation_features(demo.truth, "Tumor")
    )
    # Small patches so the small demo slide still has ~1,000 of them.
    settings = RefineSettings(
        grid=GridSettings(patch_um=64.0), cache_dir=cache_dir, device=device
    ).with_seed(seed)
    classes = ClassNames()
    items = load_inputs([demo.path], [coarse_path], classes, None)
    result = refine(items, settings, progress=progress, on_stage=on_stage)
    written = write_outputs(result, items, out_dir, classes, tiles=True, truths=[demo.truth])
    r = result.slides[0]
    with Slide(demo.path) as s:
        grid = GridSettings(patch_um=64.0)
        coarse_m = evaluate(s, demo.truth, items[0].coarse, 2.0, grid)
        refined_m = evaluate(s, demo.truth, r.regions, 2.0, grid)
    summary = {
        "slide": str(demo.path),
        "coarse": coarse_m,
        "refined": refined_m,
        "rows": slide_rows(result, items, time.perf_counter() - t0),
        "outputs": {
            "refined_geojson": str(written[0]["geojson"]),
            "overlay": str(written[0]["overlay"]),
            "coarse_geojson": str(coarse_path),
            "truth_geojson": str(truth_path),
        },
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }
    write_json(out_dir / "summary.json", summary)
    return summary


__all__ = [
    "ClassNames",
    "RefineError",
    "evaluate_files",
    "load_inputs",
    "refine_slides",
    "run_demo",
    "DEFAULT_COLORS",
]
