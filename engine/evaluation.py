"""Score a predicted outline against a true one on a slide: pixel- and patch-level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image

from engine.errors import AnnotationError
from engine.metrics import patch_metrics, pixel_metrics
from engine.patches import GridSettings, coarse_labels, make_grid, tissue_mask
from engine.regions import mask_to_polygons
from engine.slide import Slide

#: A raster side above this makes evaluation slow and memory-hungry; coarser is still exact
#: enough for region-level scores, so the resolution is lowered to stay under it.
MAX_RASTER_SIDE = 8192


def mask_to_geometry(path: str | Path, width: int, height: int) -> shapely.Geometry:
    """A binary mask image (non-zero = tumour) covering the slide frame, as polygons.

    The mask may be at any resolution with the slide's aspect ratio; its scale is inferred.
    """
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise AnnotationError(f"Cannot read mask {path}: {e}") from None
    mask = np.asarray(img.convert("L")) > 0
    scale_x, scale_y = width / mask.shape[1], height / mask.shape[0]
    if abs(scale_x - scale_y) > 0.02 * max(scale_x, scale_y):
        raise AnnotationError(
            f"Mask {Path(path).name} is {mask.shape[1]}x{mask.shape[0]} px, which does not "
            f"match the slide's aspect ratio ({width}x{height}); it must cover the whole slide."
        )
    return mask_to_polygons(mask, (scale_x + scale_y) / 2)


def evaluate(
    slide: Slide,
    truth: shapely.Geometry,
    pred: shapely.Geometry,
    eval_mpp: float = 2.0,
    grid: GridSettings | None = None,
) -> dict:
    """The eight metrics pixel-level inside tissue at ``eval_mpp`` (lowered if the raster
    would exceed :data:`MAX_RASTER_SIDE`) and patch-level on the grid of ``grid``."""
    grid = grid or GridSettings(patch_um=128.0)
    mpp = max(eval_mpp, slide.mpp * max(slide.width, slide.height) / MAX_RASTER_SIDE)
    thumb, ds = slide.thumbnail(mpp)
    tissue: npt.NDArray[np.bool_] = tissue_mask(thumb)
    pixel = pixel_metrics(pred, truth, tissue, ds)
    size = grid.side_um / slide.mpp
    g = make_grid(
        slide.width, slide.height, tissue, ds, size, grid.step_um / slide.mpp, grid.min_tissue
    )
    patch = patch_metrics(coarse_labels(g, pred), coarse_labels(g, truth))
    return {
        "pixel": pixel,
        "patch": patch,
        "pixel_um": ds * slide.mpp,
        "tissue_pixels": int(tissue.sum()),
        "patch_um": grid.side_um,
        "patches": len(g),
        "truth_area_mm2": shapely.area(truth) * slide.mpp**2 / 1e6,
        "pred_area_mm2": shapely.area(pred) * slide.mpp**2 / 1e6,
    }
