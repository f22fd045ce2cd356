"""The paper's eight metrics, pixel-level inside tissue and patch-level.

Conventions: Dice, IoU and F1 are 1.0 when truth and prediction are both empty (nothing to
find, nothing found); any other ratio with a zero denominator is NaN (``null`` in JSON).
Dice and F1 coincide for one slide; over a cohort ``summarise`` reports Dice as the mean of
per-slide values and F1 pooled over all pixels, which is how the two differ in the paper.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import shapely
from skimage.draw import polygon as draw_polygon

from engine.geometry import polygons

METRICS = ("dice", "iou", "f1", "ppv", "npv", "tpr", "tnr", "accuracy")


def confusion(
    pred: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_] | None = None,
) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) over the ``valid`` elements."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(pred.size - tp - fp - fn)
    return tp, fp, fn, tn


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The eight metrics from a confusion matrix."""
    empty = tp + fp + fn == 0
    dice = 1.0 if empty else 2 * tp / (2 * tp + fp + fn)
    return {
        "dice": dice,
        "iou": 1.0 if empty else tp / (tp + fp + fn),
        "f1": dice,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "tpr": _ratio(tp, tp + fn),
        "tnr": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def rasterize(
    geom: shapely.Geometry | None, shape: tuple[int, int], downsample: float
) -> npt.NDArray[np.bool_]:
    """Polygons (level-0 px) to a boolean raster of ``shape`` at ``downsample``: a pixel is in
    when its centre is (holes respected). Pixel (r, c) covers level-0 [c*ds, (c+1)*ds)."""
    out = np.zeros(shape, dtype=bool)
    for p in polygons(geom):
        # Pixel centres sit at (i + 0.5) * ds; shift rings so centres fall on integers.
        ring = np.asarray(p.exterior.coords) / downsample - 0.5
        rr, cc = draw_polygon(ring[:, 1], ring[:, 0], shape)
        out[rr, cc] = True
        for hole in p.interiors:
            h = np.asarray(hole.coords) / downsample - 0.5
            rr, cc = draw_polygon(h[:, 1], h[:, 0], shape)
            out[rr, cc] = False
    return out


def pixel_metrics(
    pred: shapely.Geometry | None,
    truth: shapely.Geometry | None,
    tissue: npt.NDArray[np.bool_],
    downsample: float,
) -> dict[str, float]:
    """Metrics over the tissue pixels of a raster at ``downsample`` (level-0 px per pixel)."""
    p = rasterize(pred, tissue.shape, downsample)
    t = rasterize(truth, tissue.shape, downsample)
    return scores(*confusion(p, t, tissue))


def patch_metrics(
    pred: npt.NDArray[np.integer], truth: npt.NDArray[np.integer]
) -> dict[str, float]:
    """Metrics over patches (labels 0/1)."""
    return scores(*confusion(np.asarray(pred) == 1, np.asarray(truth) == 1))


def summarise(
    per_slide: list[dict[str, float]], confusions: list[tuple[int, int, int, int]]
) -> dict[str, float]:
    """Cohort metrics: Dice and IoU as per-slide means, the rest pooled."""
    pooled = scores(*np.sum(np.array(confusions), axis=0).tolist())
    pooled["dice"] = float(np.nanmean([m["dice"] for m in per_slide]))
    pooled["iou"] = float(np.nanmean([m["iou"] for m in per_slide]))
    return pooled
