"""``--method prototype`` one slide at a time: the two phases a cluster runs per slide.

:func:`refine` shares the global prototypes and one patch classifier between all slides; a
cluster (:mod:`engine.cluster`) cannot pool every slide's patches on one worker, so it splits
the route in two phases around one step on the driver:

1. :func:`local_step`, one task per slide: read, grid, embed (features into the shared cache),
   the slide's local prototypes (:func:`engine.prototypes.local_prototypes`). Only the small
   local prototypes go back to the driver.
2. The driver: the global prototypes from every slide's local ones
   (:func:`engine.prototypes.global_prototypes`), the same function, inputs and seed as
   :func:`refine`: the same slides give identical global prototypes.
3. :func:`slide_step`, one task per slide: similarity to the global prototypes, the slide's
   pseudo-labels, a classifier trained on **this slide's patches only** (cross-fitted within
   the slide, same settings), its regions. This is the ``per slide`` classifier: its scores
   and outlines differ from one process's pooled classifier by design.

:func:`refine_per_slide` runs the same three steps in this process, one slide after another:
what a cluster computes, without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from engine.classifier import cross_fit_proba
from engine.features import ProgressFactory
from engine.pipeline import (
    STAGES,
    RefineResult,
    RefineSettings,
    SlideInput,
    SlideResult,
    embed_slide,
    kept_result,
    label_patches,
    on_device,
    run_encoder,
    slide_grid,
    slide_grid_settings,
    slide_result,
    spatial_groups,
    untrainable,
    with_shared_grid,
)
from engine.prototypes import SlideSpace, global_prototypes, local_prototypes
from engine.pseudolabels import pseudo_labels

log = logging.getLogger("qupath_refine")

#: what the summary calls the classifier of this route (one process pools all slides)
PER_SLIDE = "per slide"


@dataclass
class SlideLocal:
    """What phase 1 sends the driver for one slide: its local prototypes (not its features)
    and how its features were had (from the cache or embedded, in how many seconds)."""

    prototypes: npt.NDArray[np.float32]
    cached: bool
    seconds: float
    #: the slide's patches (for the driver's patches/s)
    patches: int = 0


def check_prototype_settings(settings: RefineSettings) -> None:
    if settings.method != "prototype":
        raise ValueError("the prototype route's steps need method 'prototype'")
    settings.validate()
    if settings.grid.is_auto:
        raise ValueError("resolve patch_um 'auto' for all slides first (with_shared_grid)")


def grid_side(item: SlideInput, settings: RefineSettings, index: int = 0) -> tuple[float, dict]:
    """The patch side (µm) ``patch_um="auto"`` would choose for this slide alone (a cheap
    task: a thumbnail); the run uses the median (:func:`engine.pipeline.with_shared_grid`)."""
    return slide_grid_settings(item, settings).side_um, {}


def local_step(
    item: SlideInput,
    settings: RefineSettings,
    index: int = 0,
    progress: bool | ProgressFactory = False,
) -> tuple[SlideLocal, dict[str, float]]:
    """Phase 1 for one slide: its features (embedded into the cache unless there already) and
    local prototypes, with the stage timings. ``index`` is unused: a slide's local
    prototypes depend on its own features and the seed alone."""
    check_prototype_settings(settings)
    settings = on_device(settings)  # on the worker: "auto" is the worker's GPU
    timings = dict.fromkeys(STAGES, 0.0)
    encoder = run_encoder(settings)
    d = slide_grid(item, settings, encoder, timings)
    if d.features is None:
        embed_slide(d, settings, encoder, timings, progress)
    t0 = time.perf_counter()
    local = local_prototypes(d.embedded(), settings.prototypes)
    timings["prototypes"] = time.perf_counter() - t0
    return SlideLocal(local, d.cached, d.seconds, len(d.grid)), timings


def slide_step(
    item: SlideInput,
    settings: RefineSettings,
    index: int,
    prototypes: npt.NDArray[np.float32],
    progress: bool | ProgressFactory = False,
) -> tuple[SlideResult, dict[str, float]]:
    """Phase 3 for slide ``index``: pseudo-labels from the global ``prototypes``, a
    classifier trained on this slide's patches alone, its regions. Features come from the
    cache phase 1 filled (embedded again if they are gone). A slide with too few patches of
    either label to train its own classifier keeps its outline, the verdict says why."""
    check_prototype_settings(settings)
    settings = on_device(settings)  # on the worker: "auto" is the worker's GPU
    timings = dict.fromkeys(STAGES, 0.0)
    encoder = run_encoder(settings)
    d = slide_grid(item, settings, encoder, timings)
    coarse, negatives = label_patches(item, d.grid, settings.min_coarse_overlap)
    side, need = d.grid_settings.side_um, settings.classifier.min_per_class
    few = untrainable(np.where(negatives, 0, coarse).astype(np.int8), side, need)
    if few is not None:  # before embedding: the outline is kept whatever the features say
        return kept_result(d, coarse, negatives, few, timings), timings
    if d.features is None:
        embed_slide(d, settings, encoder, timings, progress)
    t0 = time.perf_counter()
    x = d.embedded()
    sim = SlideSpace.fit(x, settings.prototypes).similarity(x, prototypes)
    pl = pseudo_labels(sim, coarse, settings.pseudolabels, negatives)
    for w in pl.warnings:
        log.warning(f"{item.label}: {w}")
    timings["prototypes"] = time.perf_counter() - t0
    why = untrainable(pl.labels, side, need)
    if why is not None:
        why = f"after the prototype pseudo-labels, {why}"
        return kept_result(d, coarse, negatives, why, timings), timings
    t0 = time.perf_counter()
    c = settings.classifier
    groups = spatial_groups(d.grid, index, c.cross_fit_block)
    proba = cross_fit_proba(x, pl.labels, groups, c, negatives)
    proba[negatives] = 0.0
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = slide_result(d, coarse, negatives, pl.labels, proba, settings, index)
    timings["regions"] = time.perf_counter() - t0
    return result, timings


def with_local(result: SlideResult, local: SlideLocal) -> SlideResult:
    """``result`` saying how phase 1 had the slide's features (phase 3 reads the cache)."""
    return replace(result, cached=local.cached, seconds=local.seconds)


def refine_per_slide(
    items: Sequence[SlideInput],
    settings: RefineSettings,
    progress: bool | ProgressFactory = False,
) -> tuple[RefineResult, npt.NDArray[np.float32]]:
    """What a cluster computes for ``--method prototype``, in this process: the result and
    the global prototypes. ``settings``' ``patch_um`` "auto" is resolved as :func:`refine`
    resolves it."""
    if settings.grid.is_auto:
        settings = with_shared_grid(settings, [grid_side(i, settings)[0] for i in items])
    timings = dict.fromkeys(STAGES, 0.0)
    local = []
    for k, item in enumerate(items):
        one, t = local_step(item, settings, k, progress)
        local.append(one)
        for stage, s in t.items():
            timings[stage] += s
    g = global_prototypes([p.prototypes for p in local], settings.prototypes)
    slides = []
    for k, (item, one) in enumerate(zip(items, local, strict=True)):
        result, t = slide_step(item, settings, k, g, progress)
        slides.append(with_local(result, one))
        for stage, s in t.items():
            timings[stage] += s
    return RefineResult(slides, None, None, timings), g
