"""The ``evaluate`` job: score a predicted outline against the truth on one slide."""

from __future__ import annotations

import logging
from pathlib import Path

import shapely

from engine.errors import AnnotationError
from engine.evaluation import evaluate, mask_to_geometry
from engine.patches import GridSettings, check_patch_budget
from engine.slide import Slide
from qupath_bridge.geojson_io import read_objects, select_geometry
from qupath_bridge.summaries import Evaluation

log = logging.getLogger("qupath_refine")


def evaluate_files(
    slide_path: Path,
    truth_path: Path,
    pred_path: Path,
    truth_class: str | None,
    pred_class: str | None,
    mpp: float | None,
    eval_mpp: float,
    patch_um: float,
) -> Evaluation:
    """The ``evaluate`` command: truth from GeoJSON or a mask image, prediction from GeoJSON."""
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
        return Evaluation(**evaluate(s, truth, pred, eval_mpp, grid))


def _objects_geometry(
    path: Path, class_name: str | None, object_type: str | None
) -> shapely.Geometry:
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
