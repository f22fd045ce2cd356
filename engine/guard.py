"""The guard's self-test: can this slide's scores undo a looseness we add ourselves?

The rim level (:class:`engine.regions.RimScores`) says an outline *looks* loose; re-drawing
it trusts the slide's scores to find the tumour's edge inside it, and adding islands trusts
them to find tumour the outline missed. Where the scores follow something else (dense
stroma, say), an uncapped re-draw drops tumour and islands are false. So the guard measures
what the scores can do on this slide: it loosens the pathologist's outline by a known amount
(dilated by ``dilate`` patches), trains the slide's model again on the loosened outline,
re-draws that, and counts how much of the added band the re-draw takes back out. Scores
that found the tumour take the band out (it is tissue the pathologist left outside); scores
that follow something else keep it.

Only a slide whose scores pass gets islands (and, with ``redraw_depth`` None, a re-draw at
all). A loose slide that fails is still re-drawn within ``redraw_depth`` patches of its
line, where it differs from an edit with cuts (BENCHMARKS.md, issue 9, stop 18). The test
also records how much of the outline its re-draw kept and what an edit of the loosened
outline would have done (the engine logs them; on the tuning part the re-draw gave the
outline back better than the edit on every slide case, so that comparison decides nothing:
BENCHMARKS.md, issue 9).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import shapely

from engine.classifier import ClassifierSettings, mil_proba
from engine.patches import PatchGrid, coarse_labels
from engine.regions import (
    MIN_PATCHES,
    RegionSettings,
    SlideScores,
    edit_outline,
    outline_depth,
    patch_labels,
    redraw_outline,
    rim_scores,
)


@dataclass(frozen=True)
class SelfTest:
    """The result: ``recovered`` is the share of the added band's patches the re-draw took
    back out (None: too few patches in the band, or no rim to judge); ``retained`` the share
    of the pathologist's own outline's patches it kept (a re-draw that cuts everything also
    takes the band out: this says whether it did); ``edit_recovered`` and ``edit_retained``
    the same for the edit of the loosened outline."""

    band_patches: int
    recovered: float | None
    retained: float | None = None
    edit_recovered: float | None = None
    edit_retained: float | None = None

    def passed(self, at_least: float) -> bool:
        return self.recovered is not None and self.recovered >= at_least


def redraw_self_test(
    coarse: shapely.Geometry,
    grid: PatchGrid,
    x: npt.NDArray[np.float32],
    mpp: float,
    classifier: ClassifierSettings,
    regions: RegionSettings,
    frame: tuple[int, int] | None,
    seed: int,
) -> SelfTest:
    """Loosen ``coarse`` by ``regions.self_test_dilate`` patches, score the slide's patches
    (``x``, standardised) with a model trained on the loosened outline, re-draw it and edit
    it, and measure for each the share of the added band taken back out and of the outline
    kept."""
    loose = coarse.buffer(regions.self_test_dilate * grid.size, quad_segs=4)
    if frame is not None:
        loose = loose.intersection(shapely.box(0, 0, frame[0], frame[1]))
    c = coarse_labels(grid, coarse, 0.5).astype(bool)
    c_loose = coarse_labels(grid, loose, 0.5)
    band = (c_loose == 1) & ~c
    n_band = int(band.sum())
    if n_band < MIN_PATCHES or int((c_loose == 0).sum()) < classifier.min_per_class:
        return SelfTest(n_band, None)
    p = mil_proba(x, c_loose, classifier, seed=seed)
    rim = rim_scores(p, c_loose, outline_depth(grid, loose))
    if rim is None:
        return SelfTest(n_band, None)
    scores = SlideScores(loose, grid, p, c_loose, mpp, frame)
    # The test asks whether the scores find the edge, so its re-draw may cut anywhere.
    _, labels = redraw_outline(scores, rim, replace(regions, redraw_depth=None))
    edited = patch_labels(grid, edit_outline(scores, regions))
    return SelfTest(
        n_band,
        float(np.mean(labels[band] == 0)),
        float(np.mean(labels[c] == 1)),
        float(np.mean(edited[band] == 0)),
        float(np.mean(edited[c] == 1)),
    )
