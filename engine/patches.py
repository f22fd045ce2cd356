"""Tissue detection, the patch grid, and each patch's label from the coarse polygons."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import shapely
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from engine.errors import SettingsError, SlideError

#: patch sides (µm) ``patch_um="auto"`` chooses from: steps of about 1.5x, so that a re-run
#: after small edits of the outline lands on the same grid (and the same cached features)
AUTO_SIDES_UM = (16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0)


@dataclass(frozen=True)
class GridSettings:
    """Where patches are cut.

    ``mpp`` is the resolution patches are embedded at (0.5 µm/px is about 20x, the paper's
    setting); ``patch_um`` their side in µm, or ``"auto"``: chosen per slide from the coarse
    outline's area and the slide's tissue (:func:`auto_patch_um`); ``stride_um`` the step
    between patches (smaller than the patch for an overlapping grid and finer region
    boundaries); ``min_tissue`` the tissue share a patch needs to be kept.

    ``auto_inside`` and ``auto_max_patches`` drive ``"auto"``: about ``auto_inside`` patches
    inside the coarse outline (a fixed 128 µm grid leaves a gland-level outline a few dozen
    patches, too few for any edit to show), but never more than ``auto_max_patches`` on the
    slide's tissue (time grows with the patch count).
    ``max_patches`` is the most grid positions (tissue or not) a slide may have, checked
    before the grid is built (:func:`check_patch_budget`).
    """

    mpp: float = 0.5
    patch_um: float | str = "auto"
    stride_um: float | None = None
    min_tissue: float = 0.25
    tissue_mpp: float = 8.0
    auto_inside: int = 1000
    auto_max_patches: int = 30_000
    # 2 M positions of 128 µm cover 33,000 mm² (a slide is ~1,000): far above any real slide,
    # low enough that the lattice's arrays stay in the hundreds of MB.
    max_patches: int = 2_000_000

    @property
    def is_auto(self) -> bool:
        return self.patch_um == "auto"

    @property
    def side_um(self) -> float:
        """The patch side in µm; only for a resolved grid (see :meth:`resolved`)."""
        if isinstance(self.patch_um, str):
            raise ValueError("patch_um is 'auto': resolve it per slide first (resolved())")
        return float(self.patch_um)

    @property
    def patch_px(self) -> int:
        """Patch side in pixels at ``mpp``, what the encoder is fed (before its own resize)."""
        return max(8, round(self.side_um / self.mpp))

    @property
    def step_um(self) -> float:
        return self.stride_um if self.stride_um else self.side_um

    def resolved(self, coarse_um2: float, tissue_um2: float) -> GridSettings:
        """These settings with ``patch_um`` a number: itself, or the auto rule's choice."""
        if not self.is_auto:
            return self
        return replace(self, patch_um=auto_patch_um(coarse_um2, tissue_um2, self))

    def validate(self) -> None:
        if isinstance(self.patch_um, str):
            if self.patch_um != "auto":
                raise SettingsError(
                    f"GridSettings.patch_um is a size in µm or 'auto', not {self.patch_um!r}"
                )
            if self.stride_um is not None:
                raise SettingsError(
                    "GridSettings.stride_um needs a numeric GridSettings.patch_um (not 'auto')"
                )
            if self.auto_inside < 1 or self.auto_max_patches < 1:
                raise SettingsError(
                    "GridSettings.auto_inside and GridSettings.auto_max_patches must be positive"
                )
        elif not math.isfinite(self.patch_um) or self.patch_um <= 0:
            raise SettingsError(
                f"GridSettings.patch_um must be a positive size in µm, not {self.patch_um!r}"
            )
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise SettingsError("GridSettings.mpp must be a positive number of µm per pixel")
        if self.stride_um is not None and not (
            math.isfinite(self.stride_um) and 0 < self.stride_um <= self.side_um
        ):
            raise SettingsError(
                "GridSettings.stride_um must be positive and not exceed the patch size (patches "
                "would leave gaps)"
            )
        if not 0 <= self.min_tissue <= 1:
            raise SettingsError("GridSettings.min_tissue is a fraction between 0 and 1")
        if self.max_patches < 1:
            raise SettingsError("GridSettings.max_patches, the patch budget, must be at least 1")


def auto_patch_um(coarse_um2: float, tissue_um2: float, g: GridSettings) -> float:
    """The ``patch_um="auto"`` rule: the side that puts about ``g.auto_inside`` patches inside
    the coarse outline (``sqrt(area / auto_inside)``), raised until the tissue holds at most
    ``g.auto_max_patches``, snapped (in log scale) to :data:`AUTO_SIDES_UM`. Snapping keeps
    a re-run after small edits on the same grid; the range keeps patches between a few cells
    (16 µm) and the paper's 128 µm."""
    want = math.sqrt(max(coarse_um2, 0.0) / g.auto_inside)
    budget = math.sqrt(max(tissue_um2, 0.0) / g.auto_max_patches)
    side = max(want, budget, AUTO_SIDES_UM[0])
    logs = np.log(np.asarray(AUTO_SIDES_UM))
    snapped = AUTO_SIDES_UM[int(np.argmin(np.abs(logs - math.log(side))))]
    # Snapping down must not break the patch budget.
    bigger = [s for s in AUTO_SIDES_UM if s >= budget]
    return max(snapped, bigger[0]) if bigger else AUTO_SIDES_UM[-1]


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


def check_patch_budget(
    width: int, height: int, slide_mpp: float, g: GridSettings, label: str
) -> None:
    """Refuse, before anything is read, a grid over ``g.max_patches`` positions: a wrong pixel
    size or a tiny patch would otherwise build it until memory runs out."""
    w_um, h_um = width * slide_mpp, height * slide_mpp
    n = lattice_size(w_um, h_um, g.side_um, g.step_um)
    if n > g.max_patches:
        raise SlideError(
            f"{label}: {g.side_um:g} µm patches every {g.step_um:g} µm over {w_um / 1000:g} x "
            f"{h_um / 1000:g} mm ({width} x {height} px at {slide_mpp:g} µm/px) make {n:,} grid "
            f"positions, over the budget of {g.max_patches:,}. Check the pixel size "
            "(SlideInput.mpp overrides the file's), or use larger patches (GridSettings.patch_um, "
            "GridSettings.stride_um) or a larger GridSettings.max_patches."
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
