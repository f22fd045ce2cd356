"""The pipeline's two routes on a real (synthetic) pyramidal slide: per-slide MIL (default)
and the paper's prototype route."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.patches import GridSettings
from engine.pipeline import RefineSettings, SlideInput, refine, refine_one


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> RefineSettings:
    # A cache of its own: the session's cache must not hold the demo slide's features before
    # the CLI test checks that its first run embeds them.
    cache = tmp_path_factory.mktemp("pipeline-cache")
    return RefineSettings(grid=GridSettings(patch_um=64.0), cache_dir=cache)


def test_mil_model_per_slide_and_a_pooled_one_for_a_slide_without_annotation(demo_slide, settings):
    alone = refine([SlideInput(demo_slide.path, demo_slide.coarse)], settings, progress=False)
    both = refine(
        [
            SlideInput(demo_slide.path, demo_slide.coarse, name="annotated"),
            SlideInput(demo_slide.path, None, name="bare"),
        ],
        settings,
        progress=False,
    )
    # Each slide has its own model: adding a slide leaves the first one's scores as they were.
    np.testing.assert_array_equal(both.slides[0].proba, alone.slides[0].proba)
    # The slide with no annotation (nothing inside to draw bags from) is scored by the
    # pooled model, which finds the tumour the other slide's outline taught; but its own
    # evidence is too weak to draw from, so its (empty) outline is kept, and the verdict
    # says why and what would help.
    bare = both.slides[1]
    assert bare.coarse.sum() == 0 and bare.regions.is_empty
    assert bare.outline.startswith("kept (weak evidence: only 0 patches of 64 µm inside")
    assert both.slides[0].outline.startswith(("edited", "re-drawn (loose)"))
    tumour = alone.slides[0].refined == 1
    assert bare.proba[tumour].mean() > bare.proba[~tumour].mean() + 0.3
    # The default route skips prototypes.
    assert both.prototypes is None and both.pseudo is None
    assert both.timings["prototypes"] == 0.0


def test_prototype_route_and_hard_negatives(demo_slide, settings):
    s = RefineSettings.for_method("prototype", grid=settings.grid, cache_dir=settings.cache_dir)
    assert s.classifier.model == "mlp" and s.regions.add_above == 0.8
    assert s.regions.edit_cut_below == 0.05  # its edit was tuned with cuts below 0.05
    # The engine routes by the user's word, read from the classifier's model.
    assert s.method == "prototype" and settings.method == "mil"
    with pytest.raises(ValueError, match="method 'mil'"):
        refine_one(SlideInput(demo_slide.path, demo_slide.coarse), s)
    # A user's negative region over part of the coarse outline: never tumour in the result.
    neg = demo_slide.coarse.intersection(demo_slide.coarse.centroid.buffer(150))
    for route in (s, settings):
        r = refine([SlideInput(demo_slide.path, demo_slide.coarse, neg)], route, progress=False)
        res = r.slides[0]
        assert res.hard_negative.any() and (res.proba[res.hard_negative] == 0).all()
        assert res.regions.intersection(neg).area < 1e-6 * neg.area
    assert r.prototypes is None  # the last route was the default (MIL)
    proto = refine([SlideInput(demo_slide.path, demo_slide.coarse)], s, progress=False)
    assert proto.pseudo is not None and proto.pseudo.major.any()
    with pytest.raises(ValueError, match="'mil' or 'prototype'"):
        RefineSettings.for_method("svm")
    svm = replace(settings, classifier=replace(settings.classifier, model="svm"))
    with pytest.raises(ValueError, match="'mil' or 'mlp'"):
        _ = svm.method  # an unknown model is no route at all, not silently MIL
    with pytest.raises(ValueError, match="'mil' or 'mlp'"):
        refine([SlideInput(demo_slide.path, demo_slide.coarse)], svm, progress=False)


def test_a_slide_too_small_to_learn_from_is_kept_on_a_worker_too(demo_slide, settings):
    # One process pools a model for such a slide; a cluster worker has only this slide.
    # Either way the outline comes back as drawn and says why; the worker invents no scores.
    tiny = demo_slide.coarse.centroid.buffer(40)
    res, timings = refine_one(SlideInput(demo_slide.path, tiny), settings)
    assert res.outline.startswith("kept (weak evidence: only 0 patches of 64 µm inside")
    assert res.regions.equals(tiny) and np.isnan(res.proba).all()
    assert timings["embed"] == 0.0 and timings["train"] == 0.0
    alone = refine([SlideInput(demo_slide.path, tiny)], settings, progress=False).slides[0]
    assert alone.outline == res.outline and alone.regions.equals(res.regions)
