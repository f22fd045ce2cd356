"""Tissue detection, the patch grid, and each patch's label from the coarse polygons."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from engine.errors import SlideError


@dataclass(frozen=True)
class GridSettings:
    """Where patches are cut.

    ``mpp`` is the resolution patches are embedded at (0.5 µm/px is about 20x, the paper's
    setting); ``patch_um`` their side (128 µm = 256 px at 0.5 µm/px, the paper's CAMELYON16
    and PAIP2020 size); ``stride_um`` the step between patches (smaller than the patch for an
    overlapping grid and finer region boundaries); ``min_tissue`` the tissue share a patch needs
    to be kept; ``max_patches`` the most grid positions (tissue or not) a slide may have, checked
    before the grid is built (:func:`check_patch_budget`).
    """

    mpp: float = 0.5
    patch_um: float = 128.0
    stride_um: float | None = None
    min_tissue: float = 0.25
    tissue_mpp: float = 8.0
    # 2 M positions of 128 µm cover 33,000 mm² (a slide is ~1,000): far above any real slide,
    # low enough that the lattice's arrays stay in the hundreds of MB.
    max_patches: int = 2_000_000

    @property
    def patch_px(self) -> int:
        """Patch side in pixels at ``mpp``, what the encoder is fed (before its own resize)."""
        return max(8, round(self.patch_um / self.mpp))

    @property
    def step_um(self) -> float:
        return self.stride_um if self.stride_um else self.patch_um

    def validate(self) -> None:
        if not (self.mpp > 0 and self.patch_um > 0 and self.step_um > 0):
            raise ValueError("mpp, patch size and stride must be positive")
        if self.step_um > self.patch_um:
            raise ValueError("stride must not exceed the patch size (patches would leave gaps)")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError("min_tissue is a fraction between 0 and 1")
        if self.max_patches < 1:
            raise ValueError("the patch budget must be at least 1")


@dataclass
class PatchGrid:
    """Kept patches of one slide, in level-0 pixels of QuPath's frame.

    ``xy`` are top-left corners, ``ij`` the (column, row) index of each patch on the stride
    lattice (for rasterising predictions), ``size`` and ``stride`` in level-0 pixels.
    """

    xy: npt.NDArray[np.float64]
    ij: npt.NDArray[np.int64]
    size: float
    stride: float
    tissue: npt.NDArray[np.float32]
    shape: tuple[int, int]  # lattice (rows, cols)

    def __len__(self) -> int:
        return len(self.xy)

    def boxes(self) -> npt.NDArray[np.object_]:
        """Each patch as a shapely box."""
        x, y = self.xy[:, 0], self.xy[:, 1]
        return shapely.box(x, y, x + self.size, y + self.size)


def lattice_size(width_um: float, height_um: float, patch_um: float, step_um: float) -> int:
    """Grid positions :func:`make_grid` lays over a frame of this size (tissue or not)."""

    def n(side: float) -> int:
        return max(1, math.ceil((side - patch_um) / step_um) + 1) if side > patch_um else 1

    return n(width_um) * n(height_um)


def check_patch_budget(width: int, height: int, slide_mpp: float, g: GridSettings, label: str):
    """Refuse, before anything is read, a grid over ``g.max_patches`` positions: a wrong pixel
    size or a tiny patch would otherwise build it until memory runs out."""
    w_um, h_um = width * slide_mpp, height * slide_mpp
    n = lattice_size(w_um, h_um, g.patch_um, g.step_um)
    if n > g.max_patches:
        raise SlideError(
            f"{label}: {g.patch_um:g} µm patches every {g.step_um:g} µm over {w_um / 1000:g} x "
            f"{h_um / 1000:g} mm ({width} x {height} px at {slide_mpp:g} µm/px) make {n:,} grid "
            f"positions, over the budget of {g.max_patches:,}. Check the pixel size (--mpp "
            "overrides the file's), or use larger patches (--patch-um, --stride-um) or a larger "
            "--max-patches."
        )


def tissue_mask(
    rgb: npt.NDArray[np.uint8], min_saturation: float = 0.07, min_object_px: int = 16
) -> npt.NDArray[np.bool_]:
    """Tissue pixels of a low-resolution RGB thumbnail.

    H&E tissue is coloured and glass is not, so threshold saturation (Otsu, with a floor so a
    blank slide yields no tissue instead of noise), drop near-white pixels, then remove specks
    and fill small holes such as lumina and fat vacuoles.
    """
    hsv = rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    if float(sat.max()) < min_saturation:
        return np.zeros(sat.shape, dtype=bool)
    t = max(float(threshold_otsu(sat)), min_saturation)
    mask = (sat > t) & (val < 0.97)
    mask = remove_small_objects(mask, max_size=min_object_px)
    return remove_small_holes(mask, max_size=min_object_px * 4)


def make_grid(
    width: int,
    height: int,
    mask: npt.NDArray[np.bool_],
    mask_downsample: float,
    patch_size: float,
    stride: float,
    min_tissue: float,
) -> PatchGrid:
    """A lattice of square patches over the frame, kept when they hold enough tissue.

    Tissue share is read from the mask with a summed-area table, so the cost does not grow
    with patch size. Patches at the right and bottom edge may reach past the frame; what lies
    outside reads as glass.
    """
    cols = max(1, int(np.ceil((width - patch_size) / stride)) + 1) if width > patch_size else 1
    rows = max(1, int(np.ceil((height - patch_size) / stride)) + 1) if height > patch_size else 1
    jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    ij = np.stack([ii.ravel(), jj.ravel()], axis=1)
    xy = ij.astype(np.float64) * stride
    frac = _tissue_fraction(mask, mask_downsample, xy, patch_size)
    keep = frac >= min_tissue
    return PatchGrid(
        xy=xy[keep],
        ij=ij[keep],
        size=float(patch_size),
        stride=float(stride),
        tissue=frac[keep].astype(np.float32),
        shape=(rows, cols),
    )


def _tissue_fraction(
    mask: npt.NDArray[np.bool_], ds: float, xy: npt.NDArray[np.float64], size: float
) -> npt.NDArray[np.float64]:
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.round(xy[:, 0] / ds).astype(int), 0, w)
    y0 = np.clip(np.round(xy[:, 1] / ds).astype(int), 0, h)
    # The patch's full area is the denominator: a patch half off the frame is half glass.
    side = max(1, round(size / ds))
    x1 = np.clip(x0 + side, 0, w)
    y1 = np.clip(y0 + side, 0, h)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return inside / float(side * side)


def overlap_fraction(grid: PatchGrid, geometry: shapely.Geometry | None) -> npt.NDArray[np.float32]:
    """Share of each patch's area covered by ``geometry`` (holes respected)."""
    n = len(grid)
    if geometry is None or geometry.is_empty or n == 0:
        return np.zeros(n, dtype=np.float32)
    boxes = grid.boxes()
    shapely.prepare(geometry)
    frac = np.zeros(n, dtype=np.float32)
    # Most patches are wholly in or wholly out: settle those with cheap predicates and compute
    # intersections only for the ones on the outline.
    touching = shapely.intersects(geometry, boxes)
    inside = touching & shapely.contains_properly(geometry, boxes)
    frac[inside] = 1.0
    edge = touching & ~inside
    if edge.any():
        area = shapely.area(shapely.intersection(boxes[edge], geometry))
        frac[edge] = area / (grid.size * grid.size)
    return frac


def coarse_labels(
    grid: PatchGrid, coarse: shapely.Geometry | None, min_overlap: float = 0.5
) -> npt.NDArray[np.int8]:
    """1 for patches the coarse annotation covers by at least ``min_overlap``, else 0."""
    return (overlap_fraction(grid, coarse) >= min_overlap).astype(np.int8)
