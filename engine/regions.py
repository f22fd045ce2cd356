"""Patch probabilities back to regions (METHOD.md step 8).

Probabilities are laid on the stride lattice (on an overlapping grid each lattice cell takes
the mean of every patch covering it, which gives boundaries finer than a patch). The outline
is the threshold's iso-line of that map, traced by marching squares between cell centres, so
it runs diagonally where the map does instead of in lattice staircases; shapely then builds
polygons with holes, drops specks and small holes, and smooths them with a morphological
closing and opening.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import shapely
from scipy.ndimage import gaussian_filter, map_coordinates
from shapely.geometry import MultiPolygon, Polygon
from skimage.measure import find_contours

from engine.errors import SettingsError
from engine.geometry import polygons
from engine.patches import PatchGrid, coarse_labels

#: what ``RegionSettings.outline`` may say (the words of ``--outline``)
OutlineChoice = Literal["auto", "edit", "redraw"]
OUTLINES: tuple[OutlineChoice, ...] = get_args(OutlineChoice)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RegionSettings:
    """How the result is drawn.

    The classifier's per-patch scores are first smoothed over the patch lattice: a Gaussian
    of ``sigma`` lattice cells, normalised by the smoothed tissue indicator so that tissue
    edges are not pulled towards 0 (LCMIL smooths the same way; tumour is contiguous).
    Tumour away from the outline (islands, and the tumour outside that gets an edited outline
    re-drawn) is found, and an island drawn, on ``find_sigma`` cells (None: ``sigma``); the
    guard's self-test re-draws on ``sigma``, as the engine does. Finding a focus is a
    detection, which more smoothing makes surer; drawing a line is a delineation, which it
    blurs: on the tuning part, drawing on 0.75 cells and finding on 1 (LCMIL's 1 for both
    until stop 27) raised the mean gain with the worst slide case above -0.01; drawing
    and finding on less both found specks away from the outline on fine grids
    (BENCHMARKS.md, issue 9, "how much the scores are smoothed").

    ``mode="edit"`` (default): the coarse outline itself, changed only where the evidence is
    clear: tissue outside it whose smoothed **and** unsmoothed scores are both above
    ``add_above`` is added (smoothing alone would leak the inside's scores across the
    outline), and tissue inside it whose smoothed score is below a bar is cut out: below
    ``remove_below`` where the outline is loose, below ``edit_cut_below`` (never above
    ``remove_below``) where it is only edited (below). ``mode=
    "replace"``: the paper's step 8, regions from the smoothed scores alone, thresholded at
    ``threshold``. The thresholds (cut below 0.4, add above 0.8) were chosen on the tuning
    part of the benchmark for the worst slide, not the mean (BENCHMARKS.md, issue 9 item).

    An **edited** outline, neither loose nor tight, is cut only where the scores are
    surer, below ``edit_cut_below`` (None: never cut): its rim does not score like the
    outside, so nothing says it was drawn too far out. On the tuning part, with slides that
    have edited WSSS4LUAD outlines, cuts below 0.3 made none of 107 edited slide cases worse
    and cuts below 0.4 made 8 worse (BENCHMARKS.md, issue 9, "edited outlines"); the verdict
    counts the regions inside that score below ``remove_below`` of which the cuts took less
    than half.
    A loose outline is cut below ``remove_below``: deep inside a re-draw (also one re-drawn
    for tumour outside or normal tissue inside, below), an outline the user asked to re-draw
    that has no rim to re-draw along (too few patches in a band), and the edit a loose
    outline falls back to with ``redraw_depth`` None.
    ``mode`` is not a user setting (users choose ``outline``): ``"replace"`` is the paper's
    literal step 8, kept for the ablation benchmark (``benchmarks/methods.py``) and reused by
    the guard's re-draw to trace its iso-line.

    ``outline`` (``edit`` mode) says what happens to the coarse outline: ``"auto"`` lets the
    guard below choose per slide; ``"edit"`` always edits; ``"redraw"`` always re-draws.

    The guard (``outline="auto"``): a loose outline is one drawn well outside the tumour, so the
    band of tissue just inside it scores like the tissue outside rather than like the deep
    inside (:class:`RimScores`). Where the rim's level is below ``redraw_below`` the slide's
    outline is **re-drawn inside itself** from the smoothed scores instead (their iso-line
    at the midpoint of the outside and deep-inside levels, at least 0.5), and tissue outside
    it whose smoothed score exceeds ``redraw_add_above`` is added. A loose rim says the
    outline was drawn too far out, nothing about tumour beyond it: additions keep the edit's
    bar (0.8); lower, they added false tumour on fine grids (BENCHMARKS.md, issue 9). The
    re-draw moves the outline inwards by at most ``redraw_depth`` patches (None: anywhere);
    deeper inside, only confident cuts (below ``remove_below``) apply: re-draws that cut
    deeper dropped tumour on gland-level slides (BENCHMARKS.md, issue 9, "how far a re-draw
    may cut").

    A re-draw also adds **islands**: regions whose smoothed score exceeds ``island_above``
    and that lie more than ``island_gap`` patches away from the outline (None: none), tumour
    the outline missed altogether. A slide whose outline was drawn loosely, and whose scores
    found its edge in the self-test, is one where a missed focus is both likely and
    findable; next to the outline the edit's bar still holds (the smoothing leaks the
    inside's scores out there). An edited slide gets only large ones (below): on close
    outlines small islands were mostly false tumour (BENCHMARKS.md, issue 9, "islands").
    An island covering at least ``island_grow_um2`` (None: none) at that bar is drawn along
    the smoothed score's ``island_grow_to`` line instead (hysteresis: the high bar finds a
    missed focus, the lower line draws it; an island whose lower line comes within
    ``island_gap`` patches of the outline keeps its own): drawn on its own bar a focus came
    out too small. Smaller islands keep their bar: on the fine grid most were false, and
    grown they lost up to 0.059 on a tuning slide case; above 0.04 mm² every grown island
    raised its tuning slide case
    (BENCHMARKS.md, issue 9, "large islands drawn out").

    The **self-test** (``self_test``, :mod:`engine.guard`) decides what trusts the scores
    away from the line: the outline loosened by ``self_test_dilate`` patches, a model
    trained on that, and its re-draw must take at least ``self_test_recovered`` of the added
    band back out. A loose slide that fails it is still re-drawn (inside the outline a
    capped re-draw differs from an edit with cuts only within ``redraw_depth`` patches of
    the line, and on the tuning part it beat the edit on every loose slide case, the
    refused ones included), but gets no islands; with ``redraw_depth`` None it is edited
    instead. The same holds for an outline re-drawn because it left tumour out or closed over
    normal tissue (below).

    An edited outline gets the islands a re-draw would add away from it that cover at least
    ``missed_min_um2`` (None: none) beyond the edit, where the slide passes the self-test
    (a slide that fails it gets them counted in the verdict, not added; ``outline="edit"``
    asks it too, ``"redraw"`` adds them unasked as its islands): tumour foci the outline
    left out. The floor (0.02 mm², a disc of 160 µm) is the smallest at
    which adding them made no edited tuning slide worse (smaller ones were specks on close
    outlines); on the tuning part they raised the edited slide cases that had one, and
    were chosen over re-drawing those outlines by stop 17's rule (BENCHMARKS.md, issue 9,
    "islands on edited outlines").

    An outline the rim calls edited is also re-drawn (``outline="auto"``) where the slide
    scores tumour away from it: the tissue ``outside_beyond`` patches or more outside it
    whose smoothed score reaches the re-draw's own level (``RimScores.cut_at``) amounts to at
    least ``redraw_outside`` patches of depth along the outline (:func:`tumour_outside`;
    None: never). Such an outline was drawn coarsely, leaving tumour out; a close one (mild
    noise) leaves almost nothing there, and re-drawing it on a coarse grid only re-traces
    the line less finely. It is re-drawn as a loose one is, islands of any size included
    where the self-test passes (the study judged it so); with ``redraw_depth`` None and the
    self-test refusing, it falls back to the edit it would have had. On the tuning part this
    re-drew 33 of 107 edited slide cases (region and gland level, mostly moderate and severe
    noise; 5 mild region-level outlines on the fine auto grid, where the measure in patches
    runs higher) and raised the mean gain, the worst slide from -0.0068 to -0.0049 (4 cases
    lost against the edit, by up to 0.016) (BENCHMARKS.md, issue 9, "Edited outlines that
    left tumour out"). The verdict says ``re-drawn (tumour outside)``.
    ``outside_tested`` (off) re-draws such an outline only where the slide passes the
    self-test, where one can run (the measure is made of scores away from the line, which a
    slide that fails it says not to trust); one refused keeps the edit it would have had,
    and the verdict says ``tumour scored outside, not re-drawn``. Stop 30 chose it, with the
    measure from the line (``outside_beyond`` 0) at 0.5 (stop 17's pick in stop 29's
    study), ran it on both parts, then judged it by a criterion set before on six tuning
    slides per benchmark never looked at: there the self-test refused re-draws that gained
    (up to 0.061 a slide case), and over every tuning row stop 24's rule kept the highest
    mean gain (by 0.0010, no slide case below coarse - 0.03), so stop 24's rule stays
    (BENCHMARKS.md, issue 9, "The outside rule gated by the self-test").

    The other side: an outline the rim calls edited, that left no tumour out, is also
    re-drawn (``outline="auto"``, the same way) where the slide scores normal tissue deep
    inside it: the tissue two patches or more inside whose smoothed score is below
    ``RimScores.cut_at`` amounts to at least ``redraw_inside`` patches of depth along the
    outline (:func:`normal_inside`; None: never). Such an outline closed over normal tissue
    (WSSS4LUAD-like slides, whose outlines cover most of the tissue and leave nothing
    outside to score); re-drawn, its deep cuts go to the loose outline's bar. On the tuning
    part (stop 28, the 107 edited slide cases of stop 21: the tuning slides', 6 more
    WSSS4LUAD-like slides' and CI's small slides') this re-drew 5 edited outlines, all
    WSSS4LUAD-like, 4 of them on a small slide (3 up by up to +0.035, 2 down by 0.008),
    chosen by stop 17's rule from stop 24's family, which had kept the edit; on 12 more such
    slides from the tuning part's images it re-drew 7 of 216 slide cases, all up (+0.013 to
    +0.028) (BENCHMARKS.md, issue 9, "normal tissue deep inside an edited outline"). The
    verdict says ``re-drawn (normal inside)``.

    Tumour continuing across the line (``outline="auto"``): a re-drawn outline whose slide
    fails the self-test (it ran, and its share is below ``self_test_recovered``) also gets
    the tissue that continues the coarse outline's own tumour across its line, regions whose
    smoothed score exceeds ``near_add_above`` (None: never) and that overlap the coarse
    outline (:func:`near_additions`). Such a slide's scores take little of a band added to
    the outline back out: they fall off slowly across the tumour's edge, and tumour beyond
    the line scores below the re-draw's 0.8 bar too; where the self-test passes, the scores
    drop sharply at the edge, and what scores 0.7-0.8 next to the line is the smoothing's
    leak of the inside. Chosen by stop 17's rule on the tuning part's own slides (162 slide
    cases: mean gain +0.04775 -> +0.04835, 19 moved, 17 of them gland level at moderate and
    severe noise) and
    checked on 324 tuning slide cases never looked at, by a criterion set before (+0.03772
    -> +0.03819; 24 moved, 16 up, 8 down by up to 0.021, none below coarse - 0.03), it is
    the default (BENCHMARKS.md, issue 9, "Tumour continuing across a re-drawn line").

    A tight outline (``outline="auto"``): where the rim's level is ``tight_above`` or more
    (None: not by this bar), the band just inside the outline scores like its deep inside:
    the line already runs along tumour, and the outline is left as drawn (``Outline.tight``).
    Edits there changed outlines by a few patches' worth, mostly for the worse
    (BENCHMARKS.md, issue 9, "tight outlines"). On patches of ``fine_um`` or less the bar is
    also ``tight_fine_above`` (None: ``tight_above`` only; both None: never tight): the rim
    is half a patch deep, thinner there than a close line's own wander, so a close outline's
    rim reads lower, and the edits and re-draws of such outlines lost more than they gained
    on the tuning part (stop 31: 0.75 on patches of 32 µm or less, chosen by stop 17's rule
    on 540 tuning slide cases, worst -0.029 -> -0.002; on 324 never looked at, the shipped
    engine's worst -0.036 -> -0.002; BENCHMARKS.md, issue 9, "Close outlines on fine
    grids"), except where the slide scores ``tight_fine_inside`` patches or more of normal
    tissue deep inside the outline (:func:`normal_inside`; None: never): it closed over
    normal tissue and is not close, whatever its rim (WSSS4LUAD-like outlines at 16-24 µm;
    the close outlines the bar was chosen on measure 0.2 at most, those that closed over
    normal tissue 1.06 and more).

    Weak evidence: where the deep inside of the outline does not score at least
    ``min_separation`` above the tissue outside it, the scores separate nothing the
    pathologist drew, and the outline is **kept** unchanged (``Outline.kept``), whatever
    ``outline`` says.

    ``min_area_um2`` drops smaller regions and ``min_hole_um2`` fills smaller holes (None:
    half a patch's area); ``smooth`` is the closing/opening radius in lattice cells. The
    opening also sets the smallest edit: a cut or an addition narrower than about two
    lattice cells disappears (a lone patch's score is weak evidence on its own), and the
    patch labels are read back from the drawn outline so that they say what it shows.
    """

    mode: str = "edit"
    sigma: float = 0.75
    find_sigma: float | None = 1.0
    add_above: float = 0.8
    remove_below: float = 0.4
    threshold: float = 0.5
    min_area_um2: float | None = None
    min_hole_um2: float | None = None
    smooth: float = 0.5
    outline: OutlineChoice = "auto"
    redraw_below: float = 0.6
    redraw_add_above: float = 0.8
    redraw_depth: float | None = 1.0
    min_separation: float = 0.1
    self_test: bool = True
    self_test_dilate: float = 2.0
    self_test_recovered: float = 0.5
    island_above: float | None = 0.75
    island_gap: float = 1.0
    island_grow_um2: float | None = 40_000.0
    island_grow_to: float = 0.6
    tight_above: float | None = 0.9
    tight_fine_above: float | None = 0.75
    fine_um: float = 32.0
    tight_fine_inside: float | None = 0.5
    edit_cut_below: float | None = 0.3
    missed_min_um2: float | None = 20_000.0
    redraw_outside: float | None = 0.25
    outside_beyond: float = 1.0
    outside_tested: bool = False
    redraw_inside: float | None = 1.5
    near_add_above: float | None = 0.7

    @property
    def away_sigma(self) -> float:
        """The smoothing that finds tumour away from the outline (islands, and the tumour
        outside that gets an edited outline re-drawn): ``find_sigma``, or ``sigma`` where that
        is None."""
        return self.sigma if self.find_sigma is None else self.find_sigma

    @property
    def edit_bar(self) -> float | None:
        """The bar an edited outline is cut below: ``edit_cut_below``, never above the loose
        outline's ``remove_below`` (None: not cut)."""
        if self.edit_cut_below is None:
            return None
        return min(self.edit_cut_below, self.remove_below)

    def validate(self) -> None:
        if self.mode not in ("edit", "replace"):
            raise SettingsError(f"region mode is 'edit' or 'replace', not {self.mode!r}")
        if self.outline not in OUTLINES:
            raise SettingsError(f"outline is one of {', '.join(OUTLINES)}, not {self.outline!r}")
        probs = (self.remove_below, self.add_above, self.redraw_add_above, self.threshold)
        if not all(0 <= v <= 1 for v in probs):
            raise SettingsError(
                "add_above, remove_below, redraw_add_above and threshold are probabilities "
                "between 0 and 1"
            )
        if not self.redraw_below >= 0:
            raise SettingsError("redraw_below is a rim level, 0 or more")
        finite = {
            "redraw_outside": "a depth in patches, 0 or more (or None)",
            "redraw_inside": "a depth in patches, 0 or more (or None)",
            "sigma": "a number of lattice cells, 0 or more",
            "find_sigma": "a number of lattice cells, 0 or more",
        }
        for name, what in finite.items():
            v = getattr(self, name)
            if v is not None and not 0 <= v < math.inf:
                raise SettingsError(f"{name} is {what}")
        if (
            not isinstance(self.outside_beyond, int | float)
            or not 0 <= self.outside_beyond < math.inf
        ):
            raise SettingsError("outside_beyond is a number of patches, 0 or more")
        if self.missed_min_um2 is not None and not self.missed_min_um2 >= 0:
            raise SettingsError("missed_min_um2 is an area in µm², 0 or more (or None)")
        for name in ("island_above", "edit_cut_below", "near_add_above"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise SettingsError(f"{name} is a probability between 0 and 1 (or None)")
        if self.tight_above is not None and not self.tight_above >= 0:
            raise SettingsError("tight_above is a rim level, 0 or more (or None)")
        for name in ("tight_fine_above", "tight_fine_inside"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < math.inf:
                raise SettingsError(f"{name} is a rim level or depth, 0 or more (or None)")
        if not 0 <= self.fine_um < math.inf:
            raise SettingsError("fine_um is a patch side in µm, 0 or more")
        if not self.island_gap >= 0:
            raise SettingsError("island_gap is a number of patches, 0 or more")
        if self.island_grow_um2 is not None and not self.island_grow_um2 >= 0:
            raise SettingsError("island_grow_um2 is an area in µm², 0 or more (or None)")
        if not 0 <= self.island_grow_to <= 1:
            raise SettingsError("island_grow_to is a probability between 0 and 1")
        if self.redraw_depth is not None and not self.redraw_depth >= 0:
            raise SettingsError("redraw_depth is a number of patches, 0 or more (or None)")
        if not (self.smooth >= 0 and self.min_separation >= 0):
            raise SettingsError("smooth and min_separation must be 0 or more")


def smooth_on_grid(grid: PatchGrid, values: npt.NDArray[np.floating], sigma: float) -> F32:
    """Gaussian smoothing (``sigma`` lattice cells) of per-patch values over the lattice,
    normalised by the smoothed tissue indicator: a patch at the tissue's edge averages over
    its tissue neighbours only."""
    values = np.asarray(values, dtype=np.float32)
    if sigma <= 0 or len(values) == 0:
        return values
    rows, cols = grid.shape
    img = np.zeros((rows, cols))
    weight = np.zeros((rows, cols))
    r, c = grid.ij[:, 1], grid.ij[:, 0]
    img[r, c] = values
    weight[r, c] = 1.0
    num = gaussian_filter(img, sigma, mode="constant")
    den = gaussian_filter(weight, sigma, mode="constant")
    return (num[r, c] / np.maximum(den[r, c], 1e-9)).astype(np.float32)


#: the rim is inside the outline and within this many patch sizes of it; the deep inside and
#: the outside are at least DEEP and OUTSIDE patch sizes away; each needs MIN_PATCHES
RIM, DEEP, OUTSIDE, MIN_PATCHES = 0.5, 2.0, 1.0, 5


@dataclass(frozen=True)
class RimScores:
    """Mean classifier scores of one slide's tissue by its depth relative to the coarse
    outline: ``outside`` it (at least a patch away), in its ``rim`` (inside, within half a
    patch of it) and ``deep`` inside (two patches or more)."""

    outside: float
    rim: float
    deep: float

    @property
    def level(self) -> float:
        """Where the rim sits between the outside (0) and the deep inside (1): near 1 the
        outline hugs tumour, near 0 it runs through tissue that looks normal."""
        return (self.rim - self.outside) / (self.deep - self.outside)

    @property
    def cut_at(self) -> float:
        """The score that separates this slide's two levels (at least 0.5)."""
        return max(0.5, (self.outside + self.deep) / 2)


def outline_depth(grid: PatchGrid, coarse: shapely.Geometry) -> F32:
    """Distance of each patch's centre to the coarse outline, in patch sizes."""
    if coarse is None or coarse.is_empty or len(grid) == 0:
        return np.full(len(grid), np.inf, dtype=np.float32)
    centres = shapely.points(grid.xy + grid.size / 2)
    return (shapely.distance(centres, coarse.boundary) / grid.size).astype(np.float32)


Bands = tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]


def rim_bands(
    coarse_labels: npt.NDArray[np.integer], depth: npt.NDArray[np.floating]
) -> Bands | None:
    """The patches outside the outline, in its rim and deep inside it (:class:`RimScores`);
    None where a band has too few patches to judge."""
    inside = np.asarray(coarse_labels).astype(bool)
    bands = (~inside & (depth >= OUTSIDE), inside & (depth < RIM), inside & (depth >= DEEP))
    return None if min(int(b.sum()) for b in bands) < MIN_PATCHES else bands


def rim_scores(
    proba: npt.NDArray[np.floating],
    coarse_labels: npt.NDArray[np.integer],
    depth: npt.NDArray[np.floating],
) -> RimScores | None:
    """The slide's :class:`RimScores`; None where a band has too few patches to judge."""
    p = np.asarray(proba, dtype=np.float64)
    bands = rim_bands(coarse_labels, depth)
    if bands is None:
        return None
    outside, rim, deep = (float(p[b].mean()) for b in bands)
    return RimScores(outside, rim, deep)


def tumour_outside(
    s: SlideScores,
    depth: npt.NDArray[np.floating],
    rim: RimScores,
    sigma: float,
    beyond: float = 1.0,
) -> float:
    """How much tumour the slide's scores find outside the outline (``depth``:
    :func:`outline_depth`), as a depth in patches along it: the patches ``beyond`` patches
    or more outside it whose smoothed score reaches ``rim.cut_at``, per patch of the
    outline's inner edge (inside, within a patch of the line). Next to the line the
    smoothing leaks the inside's scores out, hence ``beyond`` (the engine's
    ``RegionSettings.outside_beyond``; 0 counts from the line)."""
    c = np.asarray(s.coarse_labels).astype(bool)
    tumour = smooth_on_grid(s.grid, s.proba, sigma) >= rim.cut_at
    return _along_outline(c, depth, ~c & tumour & (depth >= beyond))


def normal_inside(
    s: SlideScores,
    depth: npt.NDArray[np.floating],
    rim: RimScores,
    sigma: float,
    beyond: float = 2.0,
) -> float:
    """The other side of :func:`tumour_outside`: how much normal tissue the slide's scores
    find deep inside the outline (``depth``: :func:`outline_depth`), as a depth in patches
    along it: the patches ``beyond`` patches or more inside it whose smoothed score is below
    ``rim.cut_at``, per patch of the outline's inner edge. Nearer the line, a capped re-draw
    moves it anyway."""
    c = np.asarray(s.coarse_labels).astype(bool)
    normal = smooth_on_grid(s.grid, s.proba, sigma) < rim.cut_at
    return _along_outline(c, depth, c & normal & (depth >= beyond))


def is_tight(
    s: SlideScores, depth: npt.NDArray[np.floating], rim: RimScores, settings: RegionSettings
) -> bool:
    """Whether the outline is left as drawn (``RegionSettings.tight_above``): its rim level
    reaches ``tight_above``, or on patches of ``fine_um`` or less ``tight_fine_above``, there
    only where the slide scores less than ``tight_fine_inside`` patches of normal tissue deep
    inside it (:func:`normal_inside`): an outline that closed over normal tissue is not close,
    whatever its rim."""
    if settings.tight_above is not None and rim.level >= settings.tight_above:
        return True
    fine_bar = settings.tight_fine_above
    # patch sides come back from µm through pixels: a hair over fine_um is fine_um
    fine = s.grid.size * s.mpp <= settings.fine_um * (1 + 1e-9)
    if fine_bar is None or not fine or rim.level < fine_bar:
        return False
    bar = settings.tight_fine_inside
    return bar is None or normal_inside(s, depth, rim, settings.sigma) < bar


def _along_outline(
    inside: npt.NDArray[np.bool_], depth: npt.NDArray[np.floating], chosen: npt.NDArray[np.bool_]
) -> float:
    """The ``chosen`` patches per patch of the outline's inner edge (``inside``, within a
    patch of the line): how deep they would lie spread along the outline, in patches."""
    edge = max(1, int((inside & (depth < 1.0)).sum()))
    return float(chosen.sum() / edge)


def weak_evidence(
    proba: npt.NDArray[np.floating],
    coarse_labels: npt.NDArray[np.integer],
    rim: RimScores | None,
    min_separation: float,
) -> str | None:
    """Why the slide's scores cannot be trusted to change its outline, or None.

    Without depth bands (too few patches deep inside or outside) the separation is taken
    between all inside and all outside patches."""
    if rim is not None:
        inside, outside = rim.deep, rim.outside
    else:
        c = np.asarray(coarse_labels).astype(bool)
        if c.all() or not c.any():
            return "no tissue patches on one side of the outline"
        p = np.asarray(proba, dtype=np.float64)
        inside, outside = float(p[c].mean()), float(p[~c].mean())
    if inside - outside < min_separation:
        return (
            f"scores do not separate inside from outside ({inside:.2f} inside vs "
            f"{outside:.2f} outside)"
        )
    return None


def edit_masks(
    grid: PatchGrid,
    proba: npt.NDArray[np.floating],
    coarse_labels: npt.NDArray[np.integer],
    settings: RegionSettings,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Patches an edit with cuts would cut from the coarse outline, and patches it adds."""
    c = np.asarray(coarse_labels).astype(bool)
    raw = np.asarray(proba, dtype=np.float32)
    smoothed = smooth_on_grid(grid, raw, settings.sigma)
    remove = c & (smoothed < settings.remove_below)
    add = ~c & (np.minimum(raw, smoothed) > settings.add_above)
    return remove, add


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
    than cells. (``coverage_union_all`` would be faster but needs shared edges to have the
    same vertices, which runs of different length do not.)
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
    return shapely.union_all(np.concatenate(boxes))


def contour_polygons(
    cells: npt.NDArray[np.floating], threshold: float, cell: float
) -> shapely.Geometry:
    """Areas where the bilinear interpolation of ``cells`` (values at cell centres) reaches
    ``threshold``, in level-0 px. NaN counts as 0 (no tissue, no tumour)."""
    v = np.pad(np.nan_to_num(np.asarray(cells, dtype=np.float64), nan=0.0), 1)
    if not (v >= threshold).any():
        return Polygon()
    # Padding with zeros closes every contour; each ring is a closed iso-line.
    rings = [c for c in find_contours(v, threshold) if len(c) >= 4]
    # (row, col) of the padded array -> level-0 x, y of cell centres.
    lines = [shapely.LineString((c[:, ::-1] - 1 + 0.5) * cell) for c in rings]
    faces = list(shapely.polygonize(lines).geoms)
    if not faces:
        return Polygon()
    # Iso-lines never cross, so each face lies wholly above or below the threshold: test one
    # interior point of each against the interpolated map.
    pts = np.array([f.representative_point().coords[0] for f in faces]) / cell - 0.5 + 1
    vals = map_coordinates(v, [pts[:, 1], pts[:, 0]], order=1)
    inside = shapely.union_all([f for f, val in zip(faces, vals, strict=True) if val >= threshold])
    # Marching squares puts a vertex on every cell edge it crosses; most are collinear.
    return shapely.simplify(inside, cell * 0.02, preserve_topology=True)


def valid_polygons(
    geom: shapely.Geometry | None, frame: tuple[int, int] | None = None
) -> MultiPolygon:
    """``geom`` as valid, non-overlapping polygons (inside ``frame`` = width, height).

    ``make_valid`` alone can return polygons with lines and points, and polygons collected
    from it may touch along an edge; their union is one valid geometry. Parts without area
    (slivers of a few vertices) are dropped: QuPath and shapely reject them."""
    if geom is None or geom.is_empty:
        return MultiPolygon()
    if frame is not None:
        geom = shapely.make_valid(geom).intersection(shapely.box(0, 0, frame[0], frame[1]))
    parts = polygons(shapely.make_valid(geom))
    merged = shapely.union_all(parts) if len(parts) > 1 else (parts[0] if parts else Polygon())
    out = [p for p in polygons(shapely.make_valid(merged)) if p.area > 1e-6]
    result = MultiPolygon(out)
    if not result.is_valid:  # touching parts that union_all left apart
        result = MultiPolygon(polygons(result.buffer(0)))
    return result


def clean(geom: shapely.Geometry, min_area: float, min_hole: float) -> MultiPolygon:
    """Drop polygons under ``min_area`` and holes under ``min_hole`` (level-0 px²)."""
    out = []
    for p in polygons(geom):
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
    """Refined regions (level-0 px, QuPath frame) from per-patch probabilities, smoothed
    over the lattice by ``settings.sigma`` first."""
    cells = cell_probabilities(grid, smooth_on_grid(grid, proba, settings.sigma))
    geom = contour_polygons(cells, settings.threshold, grid.stride)
    patch_area = grid.size * grid.size / 2
    px2_per_um2 = 1.0 / (mpp * mpp)
    min_area = (
        settings.min_area_um2 * px2_per_um2 if settings.min_area_um2 is not None else patch_area
    )
    min_hole = (
        settings.min_hole_um2 * px2_per_um2 if settings.min_hole_um2 is not None else patch_area
    )
    geom = clean(geom, min_area, min_hole)
    geom = smooth(geom, settings.smooth * grid.stride)
    # Cleaning again after smoothing: the opening can split thin necks into small pieces.
    return valid_polygons(clean(valid_polygons(geom, frame), min_area, min_hole))


def refined_labels(
    grid: PatchGrid,
    coarse: npt.NDArray[np.integer],
    proba: npt.NDArray[np.floating],
    settings: RegionSettings,
) -> npt.NDArray[np.int8]:
    """The label of each patch under ``settings.mode``, the guard aside (``edit``: the
    coarse labels with the edit's additions, and its cuts below ``settings.edit_bar``;
    :func:`refine_outline` draws the outline itself)."""
    if settings.mode == "replace":
        return (smooth_on_grid(grid, proba, settings.sigma) >= settings.threshold).astype(np.int8)
    if settings.mode != "edit":
        raise ValueError(f"region mode is 'edit' or 'replace', not {settings.mode!r}")
    below = settings.edit_bar
    remove, add = edit_masks(grid, proba, coarse, replace(settings, remove_below=below or 0.0))
    return _edited_labels(coarse, remove & (below is not None), add)


def _edited_labels(
    coarse: npt.NDArray[np.integer], remove: npt.NDArray[np.bool_], add: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int8]:
    return ((np.asarray(coarse).astype(bool) & ~remove) | add).astype(np.int8)


@dataclass
class Outline:
    """The refined outline of one slide and how it was reached."""

    regions: MultiPolygon
    labels: npt.NDArray[np.int8]  # the final label of each patch, read from ``regions``
    redrawn: bool  # the coarse outline was re-drawn (by the guard, or as asked)
    rim: RimScores | None
    #: why the coarse outline was kept unchanged (weak evidence), else None
    kept: str | None = None
    #: the edit left the outline as it was (no confident edit survived the tracer)
    unchanged: bool = False
    #: regions added away from the outline (tumour it missed altogether): a re-draw's
    #: islands, or those of an edited outline that cover ``missed_min_um2``
    islands: int = 0
    #: left as drawn: its rim scores like its deep inside (:func:`is_tight`)
    tight: bool = False
    #: re-drawn without islands: the self-test did not confirm the scores
    unconfirmed: bool = False
    #: regions inside an edited outline that score as normal (below ``remove_below``) of
    #: which less than half was cut (the edit cuts below ``edit_cut_below``)
    left_in: int = 0
    #: large islands of an edited outline not added: the self-test did not trust the scores
    missed: int = 0
    #: an edited outline whose slide scored tumour outside it (``redraw_outside``) but failed
    #: the self-test: not re-drawn for it
    refused: bool = False
    #: why the guard re-drew it: "loose" (its rim), "tumour outside" (tumour left out) or
    #: "normal inside" (it closed over normal tissue)
    why: str = "loose"
    #: the area (µm²) by which a re-draw whose slide failed the self-test was extended
    #: across the coarse line (``near_add_above``)
    near_um2: float = 0.0

    def verdict(self, settings: RegionSettings) -> str:
        """What was done, in the words of the summary tables: ``edited``, ``re-drawn
        (loose)``, ``re-drawn (tumour outside)`` or ``re-drawn (normal inside)`` (the guard's
        call, and why), ``re-drawn``
        (as asked), each with how many regions it added away from the outline (or by how
        much it was extended across its line), an outline
        the guard re-drew without islands (its slide failed the self-test), ``unchanged
        (…)`` or ``kept (weak evidence: why)``. An edit (or an unchanged outline) also says
        how many regions inside it score as normal and were left in, whether tumour scored
        outside it was not re-drawn for, and how many large islands its slide's self-test
        kept out (both for want of the self-test), for the pathologist to look at."""
        if self.kept:
            return f"kept (weak evidence: {self.kept})"
        if self.tight:
            return "unchanged (tight outline: its edge scores like its inside)"
        if self.unconfirmed:
            done = f"re-drawn ({self.why}; {NO_ISLANDS_WHY})"
        elif not self.redrawn:
            if not self.left_in:
                done = "unchanged (no confident edit)" if self.unchanged else "edited"
            else:  # confident cuts were found but not made: say that they are there
                done = "unchanged (nothing confident to add)" if self.unchanged else "edited"
        else:
            done = f"re-drawn ({self.why})" if settings.outline == "auto" else "re-drawn"
        if self.islands:  # new regions the pathologist should look at
            n = self.islands
            done += f", {n} region{'s' * (n > 1)} added away from the outline"
        if self.near_um2:  # likewise (a slide that failed the self-test: never with islands)
            mm2 = self.near_um2 / 1e6
            by = f"{mm2:.3f}" if mm2 >= 0.0005 else "less than 0.001"
            done += f", extended across its line by {by} mm²"
        if self.left_in and not self.redrawn:
            n = self.left_in
            done += f"; {n} region{'s' * (n > 1)} inside scored normal, not cut"
        if self.refused and not self.redrawn:  # found, not trusted: say so
            done += f"; {OUTSIDE_REFUSED}"
        if self.missed:  # found, not trusted: the pathologist should look at them
            n = self.missed
            done += f"; {n} region{'s' * (n > 1)} outside scored tumour, {NOT_TRUSTED}"
        return done


NO_ISLANDS_WHY = "no islands: self-test not passed"
UNCONFIRMED = re.compile(rf"^re-drawn \((.*); {NO_ISLANDS_WHY}\)")
NEAR_ADDED = re.compile(r", extended across its line by (?:less than )?[.\d]+ mm²")
ADDED = re.compile(r", \d+ regions? added away from the outline")
LEFT_IN = re.compile(r"; \d+ regions? inside scored normal, not cut")
NOT_TRUSTED = "not added (self-test not passed)"
OUTSIDE_REFUSED = "tumour scored outside, not re-drawn (self-test not passed)"
#: stop 22's verdicts counted such regions without a reason: they group the same
MISSED = re.compile(
    r"; \d+ regions? outside scored tumour, not added(?: \(self-test not passed\))?"
)


def verdict_group(verdict: str) -> str:
    """``verdict`` without its counts, and shorter: what tallies of many slides group by
    ("re-drawn (loose) + islands", "re-drawn (loose) no islands", "re-drawn (tumour outside)
    + islands", "edited + normal left in", "edited + islands", "edited + tumour left out",
    "edited + outside not trusted")."""
    grouped = LEFT_IN.sub(" + normal left in", ADDED.sub(" + islands", verdict))
    grouped = MISSED.sub(" + tumour left out", grouped)
    grouped = grouped.replace(f"; {OUTSIDE_REFUSED}", " + outside not trusted")
    grouped = NEAR_ADDED.sub(" + across the line", grouped)
    return UNCONFIRMED.sub(r"re-drawn (\1) no islands", grouped)


def patch_labels(grid: PatchGrid, geom: shapely.Geometry) -> npt.NDArray[np.int8]:
    """1 for patches the drawn regions cover by half or more, so labels and outline agree."""
    return coarse_labels(grid, geom, 0.5)


def refine_outline(
    coarse: shapely.Geometry,
    grid: PatchGrid,
    proba: npt.NDArray[np.floating],
    coarse_labels: npt.NDArray[np.integer],
    mpp: float,
    settings: RegionSettings = RegionSettings(),
    frame: tuple[int, int] | None = None,
    confirm: Callable[[], bool | float | None] | None = None,
    kept: str | None = None,
) -> Outline:
    """``edit`` mode with its guard: the coarse outline kept where the scores separate
    nothing, left as drawn where it is tight, edited (:func:`edit_pieces`: added to, and cut
    below ``settings.remove_below`` where loose, else below ``edit_cut_below``), or re-drawn
    inside itself (:func:`redraw_outline`) where its rim scores like normal tissue, the
    slide scores tumour outside it (``redraw_outside``) or normal tissue deep inside it
    (``redraw_inside``; all three ``outline="auto"``) or as asked (``"redraw"``).
    ``confirm()``, the guard's self-test (the share of its band taken back out, None where it
    cannot run, or a bool: passed or not, ``False`` meaning it ran and failed), is asked at
    most once, and only where its answer matters: in ``auto`` mode an edited outline is
    re-drawn for tumour outside (with ``outside_tested``), a re-drawn outline's islands are
    added, or its re-draw is uncapped, and in ``auto`` or ``edit`` mode an edited outline's
    large islands (at least ``missed_min_um2``) are added, only if it agrees; with
    ``near_add_above``, an outline re-drawn in ``auto`` mode asks it where tissue continues
    across its line (a failed test adds it). ``kept``: the caller's reason to keep
    the outline whatever the scores say (e.g. too few patches to learn from)."""
    c = np.asarray(coarse_labels).astype(np.int8)
    if coarse is None or coarse.is_empty:
        return Outline(MultiPolygon(), np.zeros(len(grid), np.int8), False, None, kept=kept)
    depth = outline_depth(grid, coarse)
    rim = rim_scores(proba, c, depth)
    weak = kept or weak_evidence(proba, c, rim, settings.min_separation)
    if weak:
        return Outline(valid_polygons(coarse, frame), c, False, rim, kept=weak)
    scores = SlideScores(coarse, grid, proba, c, mpp, frame)
    if settings.outline == "auto" and rim is not None and is_tight(scores, depth, rim, settings):
        return Outline(valid_polygons(coarse, frame), c, False, rim, unchanged=True, tight=True)
    share = None if confirm is None else cache(confirm)  # asked once, whichever rule asks
    confirm = None if share is None else partial(_passed, share, settings.self_test_recovered)
    outside = closed = refused = False
    if settings.outline == "auto" and rim is not None and rim.level >= settings.redraw_below:
        # It looks edited by its rim, but it was drawn coarsely too where it left tumour out
        # (read off scores away from the line: outside_tested asks the self-test to trust them)
        outside = settings.redraw_outside is not None and (
            tumour_outside(scores, depth, rim, settings.away_sigma, settings.outside_beyond)
            >= settings.redraw_outside
        )
        if outside and settings.outside_tested and confirm is not None and not confirm():
            outside, refused = False, True
        # ... or closed over normal tissue deep inside, which the rim cannot tell
        closed = (
            not outside
            and settings.redraw_inside is not None
            and normal_inside(scores, depth, rim, settings.sigma) >= settings.redraw_inside
        )
    # rough: drawn too far out (its rim, or as the user says); loose: re-drawn either way
    rough = settings.outline == "redraw" or (
        settings.outline == "auto" and rim is not None and rim.level < settings.redraw_below
    )
    loose = rough or outside or closed
    if loose and rim is not None:
        # Islands (on a bar below the edit's) and an uncapped re-draw's deep cuts trust the
        # scores away from the line: in auto mode the self-test must agree, and it is asked
        # only then. Inside the outline a capped re-draw differs from an edit with cuts only
        # within redraw_depth patches of the line, and outside it adds on the edit's bar.
        islands = island_additions(scores, settings)
        asks = settings.outline == "auto" and (
            not islands.is_empty or settings.redraw_depth is None
        )
        trusted = not asks or confirm is None or confirm()
        if trusted or settings.redraw_depth is not None:
            geom, labels = redraw_outline(scores, rim, settings)
            if not trusted:
                islands = MultiPolygon()
            if not islands.is_empty:
                geom = _in_frame(geom.union(islands), frame)
                labels = patch_labels(grid, geom)
            near = 0.0
            bar = settings.near_add_above
            if bar is not None and settings.outline == "auto" and confirm is not None:
                more = near_additions(scores, bar, settings)
                # the self-test (a model trained again) is asked only where they add tissue;
                # they do where it ran and failed: tumour continuing across the line
                adds = not valid_polygons(more.difference(geom)).is_empty
                if adds and share is not None and share() is not None and not confirm():
                    wider = _in_frame(geom.union(more), frame)
                    near = wider.difference(geom).area * mpp**2
                    geom = wider
                    labels = patch_labels(grid, geom)
            n = len(islands.geoms)
            why = "tumour outside" if outside else "normal inside" if closed else "loose"
            return Outline(
                geom, labels, True, rim, islands=n, unconfirmed=not trusted, why=why, near_um2=near
            )
    # A rough outline is cut on the edit's bar; any other only where the scores are surer,
    # since nothing else says it was drawn too far out (one re-drawn only for tumour outside
    # or normal inside gets the edit it would have had). Loose ones reach this edit when
    # asked to re-draw with no rim to draw along (rim None), or in auto mode with an
    # uncapped re-draw whose self-test refused.
    cuts, adds = edit_pieces(scores, settings)
    below = settings.remove_below if rough else settings.edit_bar
    made = MultiPolygon() if below is None else cuts
    if below is not None and below != settings.remove_below:
        made = cut_pieces(scores, settings, below)  # the additions are the same
    geom = apply_edit(scores, made, adds)
    # Large islands (missed_islands): in auto mode a rough outline reaches this edit only
    # where the scores were not trusted away from it, so it gets none; one asked to be
    # re-drawn (no rim to draw along) gets them unasked, as a re-draw's islands; any other
    # where the self-test trusts the scores, as a loose outline's islands.
    trusted_away = not (rough and settings.outline == "auto")
    islands = missed_islands(scores, settings, geom) if trusted_away else []
    missed = 0
    asks = settings.outline != "redraw"
    if islands and asks and confirm is not None and not confirm():
        islands, missed = [], len(islands)
    if islands:
        geom = _in_frame(shapely.union_all([geom, *islands]), frame)
    # Unchanged: less than 1% of one patch's area moved (clipping and validity repairs).
    moved = shapely.area(shapely.symmetric_difference(geom, valid_polygons(coarse, frame)))
    unchanged = bool(moved < 0.01 * grid.size * grid.size)
    # Left in: a region scored normal of which the cuts took less than half (a region cut
    # but for its fringe between the two bars is not counted).
    left_in = sum(g.difference(made).area > 0.5 * g.area for g in cuts.geoms)
    labels = patch_labels(grid, geom)
    n = len(islands)
    return Outline(
        geom,
        labels,
        False,
        rim,
        unchanged=unchanged,
        islands=n,
        left_in=left_in,
        missed=missed,
        refused=refused,
    )


def _passed(share: Callable[[], bool | float | None], at_least: float) -> bool:
    """The self-test's answer: its share reaches ``at_least`` (a bool answer is itself)."""
    v = share()
    return bool(v) if isinstance(v, bool) else v is not None and v >= at_least


def near_additions(
    s: SlideScores, bar: float, settings: RegionSettings, own: bool = False
) -> shapely.Geometry:
    """Tumour continuing the coarse outline's own across its line: the regions whose
    smoothed score (with ``own``, and the patch's own score: studies) exceeds ``bar`` and
    that overlap or touch the coarse outline, less the outline (the coarse outline's, not a
    re-draw's; regions away from it are islands)."""
    smoothed = smooth_on_grid(s.grid, s.proba, settings.sigma)
    values = np.minimum(smoothed, s.proba) if own else smoothed
    trace = replace(settings, mode="replace", sigma=0.0, threshold=bar)
    found = regions_from_probabilities(s.grid, values, s.mpp, trace)
    near = MultiPolygon([g for g in found.geoms if g.intersects(s.coarse)])
    return near.difference(s.coarse)


def missed_islands(
    s: SlideScores, settings: RegionSettings, edited: shapely.Geometry
) -> list[Polygon]:
    """The islands a re-draw would add (:func:`island_additions`) that cover at least
    ``settings.missed_min_um2`` beyond the ``edited`` outline (none where that is None)."""
    if settings.missed_min_um2 is None:
        return []
    floor = settings.missed_min_um2 / s.mpp**2
    found = island_additions(s, settings).geoms
    return [g for g in found if g.difference(edited).area >= floor]


@dataclass(frozen=True)
class SlideScores:
    """A slide's coarse outline with its patches' scores and coarse labels: what an edit and
    a re-draw read (``frame``: the image's width and height, to clip to)."""

    coarse: shapely.Geometry
    grid: PatchGrid
    proba: npt.NDArray[np.floating]
    coarse_labels: npt.NDArray[np.integer]
    mpp: float
    frame: tuple[int, int] | None = None


def edit_pieces(s: SlideScores, settings: RegionSettings) -> tuple[MultiPolygon, MultiPolygon]:
    """The edit's cuts (confidently normal regions inside the coarse outline) and additions
    (confidently tumour regions outside it), traced like :func:`regions_from_probabilities`.
    """
    remove, add = edit_masks(s.grid, s.proba, s.coarse_labels, settings)
    return _traced(s, remove, settings), _traced(s, add, settings)


def cut_pieces(s: SlideScores, settings: RegionSettings, below: float) -> MultiPolygon:
    """The edit's cuts on bar ``below`` instead of ``settings.remove_below``, alone."""
    remove, _ = edit_masks(s.grid, s.proba, s.coarse_labels, replace(settings, remove_below=below))
    return _traced(s, remove, settings)


def _traced(s: SlideScores, mask: npt.NDArray[np.bool_], settings: RegionSettings) -> MultiPolygon:
    """Patches ``mask`` as regions. The masks are not smoothed over the lattice again (the
    scores already were); the tracer's opening drops edits narrower than about two cells
    (RegionSettings)."""
    if not mask.any():
        return MultiPolygon()
    traced = replace(settings, threshold=0.5, sigma=0.0)
    return regions_from_probabilities(s.grid, mask.astype(np.float32), s.mpp, traced)


def edit_outline(
    s: SlideScores, settings: RegionSettings = RegionSettings(), cut: bool = True
) -> MultiPolygon:
    """The coarse outline minus its cuts (unless not ``cut``) plus its additions
    (:func:`edit_pieces`)."""
    cuts, adds = edit_pieces(s, settings)
    return apply_edit(s, cuts if cut else MultiPolygon(), adds)


def apply_edit(s: SlideScores, cuts: MultiPolygon, adds: MultiPolygon) -> MultiPolygon:
    """The coarse outline minus ``cuts`` plus ``adds``, inside the frame."""
    geom = s.coarse if s.coarse is not None else Polygon()
    if not cuts.is_empty:
        geom = geom.difference(cuts)
    if not adds.is_empty:
        geom = geom.union(adds)
    return _in_frame(geom, s.frame)


def redraw_outline(
    s: SlideScores,
    rim: RimScores,
    settings: RegionSettings = RegionSettings(),
    add_scores: npt.NDArray[np.floating] | None = None,
) -> tuple[MultiPolygon, npt.NDArray[np.int8]]:
    """A loose outline re-drawn: inside it, the smoothed scores' iso-line at ``rim.cut_at``
    (finer than whole patches: a loose rim is often narrower than one); outside it, tissue
    whose smoothed score (or ``add_scores``, per patch: studies of other additions) exceeds
    ``settings.redraw_add_above``. Deeper inside the outline than ``settings.redraw_depth``
    patches only confident cuts (``settings.remove_below``) apply. Returns the regions and
    the label of each patch."""
    smoothed = smooth_on_grid(s.grid, s.proba, settings.sigma)
    trace = replace(settings, mode="replace", sigma=0.0, threshold=rim.cut_at)
    keep = regions_from_probabilities(s.grid, smoothed, s.mpp, trace)
    added = regions_from_probabilities(
        s.grid,
        smoothed if add_scores is None else add_scores,
        s.mpp,
        replace(trace, threshold=settings.redraw_add_above),
    )
    geom = s.coarse.intersection(keep).union(added.difference(s.coarse))
    if settings.redraw_depth is not None:
        core = s.coarse.buffer(-settings.redraw_depth * s.grid.size)
        geom = geom.union(core.intersection(edit_outline(s, settings)))
    geom = _in_frame(geom, s.frame)
    return geom, patch_labels(s.grid, geom)


def island_additions(s: SlideScores, settings: RegionSettings) -> MultiPolygon:
    """Tumour the outline missed altogether: regions whose smoothed score reaches
    ``settings.island_above`` and that lie more than ``settings.island_gap`` patches away from
    the coarse outline (empty when ``island_above`` is None). Regions touching the outline
    are left to the edit's stricter bar: there the smoothing leaks the inside's scores out.
    An island covering at least ``settings.island_grow_um2`` is traced out to the smoothed
    score's ``island_grow_to`` line (hysteresis: found on the high bar, drawn on the lower
    one) where that line, too, stays more than ``island_gap`` patches from the outline; one
    whose lower line reaches the outline keeps its own (the lower line would run along the
    outline's leak)."""
    if settings.island_above is None or s.coarse is None or s.coarse.is_empty:
        return MultiPolygon()
    smoothed = smooth_on_grid(s.grid, s.proba, settings.away_sigma)
    trace = replace(settings, mode="replace", sigma=0.0, threshold=settings.island_above)
    found = regions_from_probabilities(s.grid, smoothed, s.mpp, trace)
    near = s.coarse.buffer(settings.island_gap * s.grid.size)
    islands = [g for g in found.geoms if not g.intersects(near)]
    grow = settings.island_grow_um2
    large = [] if grow is None else [g for g in islands if g.area >= grow / s.mpp**2]
    if not large:
        return MultiPolygon(islands)
    wide = regions_from_probabilities(
        s.grid, smoothed, s.mpp, replace(trace, threshold=settings.island_grow_to)
    )
    grown = [
        g for g in wide.geoms if not g.intersects(near) and any(g.intersects(b) for b in large)
    ]
    return valid_polygons(shapely.union_all([*islands, *grown]))


def _in_frame(geom: shapely.Geometry, frame: tuple[int, int] | None) -> MultiPolygon:
    """``geom`` clipped to the image (``frame`` = width, height) as valid polygons."""
    return valid_polygons(geom, frame)
