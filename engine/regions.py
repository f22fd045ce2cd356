"""Patch probabilities back to regions (METHOD.md step 8).

Probabilities are laid on the stride lattice (on an overlapping grid each lattice cell takes
the mean of every patch covering it, which gives boundaries finer than a patch), thresholded,
turned into polygons with shapely, cleaned of specks and small holes, and smoothed by a
morphological closing and opening of the polygons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon

from engine.patches import PatchGrid


@dataclass(frozen=True)
class RegionSettings:
    """``min_area_um2`` drops smaller regions and ``min_hole_um2`` fills smaller holes
    (None: one patch's area); ``smooth`` is the closing/opening radius in lattice cells."""

    threshold: float = 0.5
    min_area_um2: float | None = None
    min_hole_um2: float | None = None
    smooth: float = 0.5


def cell_probabilities(grid: PatchGrid, proba: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Mean probability of the patches covering each stride-sized lattice cell; NaN where no
    kept patch covers a cell. Shape (rows + m - 1, cols + m - 1), m = patches per side."""
    m = max(1, round(grid.size / grid.stride))
    rows, cols = grid.shape
    total = np.zeros((rows + m, cols + m), dtype=np.float64)
    count = np.zeros_like(total)
    # A patch at lattice (r, c) covers cells r..r+m-1, c..c+m-1: add it at one corner of a
    # summed-area table and subtract at the others (a 2-D difference array).
    c, r = grid.ij[:, 0], grid.ij[:, 1]
    for arr, val in ((total, np.asarray(proba, dtype=np.float64)), (count, 1.0)):
        np.add.at(arr, (r, c), val)
        np.add.at(arr, (r + m, c), -val)
        np.add.at(arr, (r, c + m), -val)
        np.add.at(arr, (r + m, c + m), val)
    total = total.cumsum(0).cumsum(1)[: rows + m - 1, : cols + m - 1]
    count = count.cumsum(0).cumsum(1)[: rows + m - 1, : cols + m - 1]
    out = np.full(total.shape, np.nan, dtype=np.float32)
    covered = count > 0.5
    out[covered] = total[covered] / count[covered]
    return out


def mask_to_polygons(mask: npt.NDArray[np.bool_], cell: float) -> shapely.Geometry:
    """Union of the true cells of a lattice mask, in level-0 pixels.

    Runs of true cells in a row become one box each, so the union sees far fewer pieces
    than cells; edges of boxes coincide, which ``coverage_union_all`` merges exactly.
    """
    boxes = []
    for r in range(mask.shape[0]):
        row = np.concatenate([[False], mask[r], [False]])
        d = np.diff(row.astype(np.int8))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        if len(starts):
            boxes.append(shapely.box(starts * cell, r * cell, ends * cell, (r + 1) * cell))
    if not boxes:
        return Polygon()
    return shapely.coverage_union_all(np.concatenate(boxes))


def _polygons(geom: shapely.Geometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons(g)]
    return []


def clean(geom: shapely.Geometry, min_area: float, min_hole: float) -> MultiPolygon:
    """Drop polygons under ``min_area`` and holes under ``min_hole`` (level-0 px²)."""
    out = []
    for p in _polygons(geom):
        holes = [h for h in p.interiors if Polygon(h).area >= min_hole]
        q = Polygon(p.exterior, holes)
        if q.area >= min_area:
            out.append(q)
    return MultiPolygon(out)


def smooth(geom: shapely.Geometry, radius: float) -> shapely.Geometry:
    """Closing then opening with a disc: rounds the staircase of lattice cells and drops
    slivers narrower than the disc. ``quad_segs`` stays low to keep vertex counts small."""
    if radius <= 0 or geom.is_empty:
        return geom
    closed = geom.buffer(radius, quad_segs=3).buffer(-radius, quad_segs=3)
    return closed.buffer(-radius, quad_segs=3).buffer(radius, quad_segs=3)


def regions_from_probabilities(
    grid: PatchGrid,
    proba: npt.NDArray[np.floating],
    mpp: float,
    settings: RegionSettings = RegionSettings(),
    frame: tuple[int, int] | None = None,
) -> MultiPolygon:
    """Refined regions (level-0 px, QuPath frame) from per-patch probabilities."""
    cells = cell_probabilities(grid, proba)
    mask = np.nan_to_num(cells, nan=0.0) >= settings.threshold
    geom = mask_to_polygons(mask, grid.stride)
    patch_area = grid.size * grid.size
    px2_per_um2 = 1.0 / (mpp * mpp)
    min_area = (
        settings.min_area_um2 * px2_per_um2 if settings.min_area_um2 is not None else patch_area
    )
    min_hole = (
        settings.min_hole_um2 * px2_per_um2 if settings.min_hole_um2 is not None else patch_area
    )
    geom = clean(geom, min_area, min_hole)
    geom = smooth(geom, settings.smooth * grid.stride)
    if frame is not None:
        geom = geom.intersection(shapely.box(0, 0, frame[0], frame[1]))
    # Cleaning again after smoothing: the opening can split thin necks into small pieces.
    return clean(shapely.make_valid(geom), min_area, min_hole)
