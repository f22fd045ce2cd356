"""What the CLI commands do, as functions tests call directly.

Slides and GeoJSON in, refined GeoJSON, overlay pictures and a summary out. Everything is
computed before anything is written, and every file is written atomically, so a failure
leaves the output folder as it was.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import shapely

from engine.errors import AnnotationError, RefineError
from engine.evaluation import evaluate
from engine.features import ProgressFactory
from engine.overlay import render_overlay, save_png
from engine.pipeline import (
    RefineResult,
    RefineSettings,
    SlideInput,
    SlideResult,
    open_slide,
    refine,
)
from engine.slide import Slide
from qupath_bridge.geojson_io import (
    DEFAULT_COLORS,
    annotation_features,
    clip_to_frame,
    read_objects,
    refined_features,
    select_geometry,
    write_features,
)

log = logging.getLogger("qupath_refine")

REFINED_COLOR = (0, 170, 60)
OVERLAY_SIDE = 1600  # px, long side of overlay pictures: detail without huge files


@dataclass(frozen=True)
class ClassNames:
    """The coarse class, the class marking tissue that is not tumour, and the derived class
    refined objects get (``Tumor: refined``), so they never mix with the user's objects."""

    coarse: str = "Tumor"
    negative: str | None = "Ignore*"

    @property
    def refined(self) -> str:
        return f"{self.coarse}: refined"


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
            objects = read_objects(gj)
            source = f"{gj.name} (for {path.name})"
            coarse = select_geometry(objects, classes.coarse, source)
            coarse = clip_to_frame(coarse, s.width, s.height, source)
            negative = None
            if classes.negative:
                neg = [
                    o.geometry
                    for o in objects
                    if o.object_type == "annotation" and o.classification == classes.negative
                ]
                if neg:
                    negative = shapely.make_valid(shapely.unary_union(neg))
        items.append(SlideInput(path=path, coarse=coarse, negative=negative, mpp=mpp))
    return items


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or path.name


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


def write_outputs(
    result: RefineResult,
    items: list[SlideInput],
    out_dir: Path,
    classes: ClassNames,
    tiles: bool = True,
    truths: list[shapely.Geometry | None] | None = None,
) -> list[dict[str, Path]]:
    """Refined GeoJSON and an overlay PNG per slide; returns the paths written."""
    written = []
    truths = truths or [None] * len(items)
    for item, r, truth in zip(items, result.slides, truths, strict=True):
        stem = _stem(Path(item.path))
        feats = refined_features(
            r.regions,
            r.grid.xy if tiles else None,
            r.grid.size,
            r.proba if tiles else None,
            classes.coarse,
            classes.refined,
            REFINED_COLOR,
            mpp=r.info.mpp,
        )
        gj = write_features(out_dir / f"{stem}.refined.geojson", feats)
        with open_slide(item) as s:
            thumb, ds = s.thumbnail(s.mpp * max(1.0, max(s.width, s.height) / OVERLAY_SIDE))
        img = render_overlay(thumb, ds, item.coarse, r.regions, truth, r.grid, r.proba)
        png = save_png(img, out_dir / f"{stem}.overlay.png")
        written.append({"geojson": gj, "overlay": png})
    return written


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
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
    t0 = time.perf_counter()
    items = load_inputs(slides, coarse_files, classes, mpp)
    result = refine(items, settings, progress=progress, on_stage=on_stage)
    seconds = time.perf_counter() - t0
    written = write_outputs(result, items, out_dir, classes, tiles)
    summary = {
        "slides": slide_rows(result, items, seconds),
        "outputs": [{k: str(v) for k, v in w.items()} for w in written],
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
    write_json(out_dir / "summary.json", summary)
    return summary


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
    from engine.patches import GridSettings

    with Slide(slide_path, mpp=mpp) as s:
        if truth_path.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".bmp"):
            if not truth_path.is_file():
                raise AnnotationError(f"Truth mask not found: {truth_path}")
            truth = mask_to_geometry(truth_path, s.width, s.height)
        else:
            truth = _objects_geometry(truth_path, truth_class, "annotation")
        pred = _objects_geometry(pred_path, pred_class, None)
        return evaluate(s, truth, pred, eval_mpp, GridSettings(patch_um=patch_um))


def _objects_geometry(path: Path, class_name: str | None, object_type: str | None):
    """Union of a file's areal objects (tiles excluded), filtered by class if given."""
    objects = [o for o in read_objects(path) if o.object_type != "tile"]
    if object_type:
        objects = [o for o in objects if o.object_type == object_type] or objects
    if class_name:
        return select_geometry(objects, class_name, path.name, ("annotation", "detection"))
    if not objects:
        raise AnnotationError(f"{path.name} holds no objects with an area.")
    return shapely.make_valid(shapely.unary_union([o.geometry for o in objects]))


def run_demo(
    out_dir: Path,
    seed: int = 0,
    progress: bool | ProgressFactory = True,
    on_stage=None,
    cache_dir: Path | None = None,
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
    settings = RefineSettings(grid=GridSettings(patch_um=64.0), cache_dir=cache_dir).with_seed(seed)
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
