"""Local-to-global prototypes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.prototypes import (
    LocalGlobalPrototypes,
    PrototypeSettings,
    SlideSpace,
    global_prototypes,
    local_prototypes,
)


def _slides(seed: int = 0, d: int = 64):
    """Three slides drawing from four shared patterns plus one pattern unique to slide 0."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (5, d)) * 4
    slides, truth = [], []
    for s in range(3):
        k = [0, 1, 2, 3, 4] if s == 0 else [0, 1, 2, 3]
        lab = rng.choice(k, 300)
        slides.append(np.abs(centres[lab] + rng.normal(0, 0.5, (300, d))))  # ReLU-like, >= 0
        truth.append(lab)
    return slides, truth


def test_global_prototypes_capture_shared_patterns():
    slides, truth = _slides()
    p = LocalGlobalPrototypes(n_local=8, n_global=5, n_components=16, random_state=0).fit(slides)
    assert len(p.local_prototypes_) == 3
    # Lifted back to the features' 64 dimensions, the space every slide shares.
    assert p.global_prototypes_.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(p.global_prototypes_, axis=1), 1, atol=1e-5)
    a = np.concatenate([p.assign(x, j) for j, x in enumerate(slides)])
    t = np.concatenate(truth)
    # Each true pattern maps (almost) entirely to one global prototype, on every slide.
    for k in range(5):
        counts = np.bincount(a[t == k], minlength=5)
        assert counts.max() / counts.sum() > 0.95


def test_similarity_is_cosine_on_the_slides_own_axes():
    slides, _ = _slides()
    p = LocalGlobalPrototypes(n_local=6, n_global=4, n_components=8).fit(slides)
    x = slides[1][:20]
    sim = p.similarity(x, 1)
    assert sim.shape == (20, 4)
    assert (sim <= 1 + 1e-5).all() and (sim >= -1 - 1e-5).all()
    z = p.transform(x, 1)  # unit vectors of the features' dimensions, on slide 1's 8 axes
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(sim, z @ p.global_prototypes_.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(p.assign(x, 1), sim.argmax(1))
    # Slide 1's local prototypes lie in its projected space: its own patches reach them.
    assert (z @ p.local_prototypes_[1].T).max(1).min() > 0.5


def test_the_local_step_needs_one_slide_and_the_global_step_the_local_ones_only():
    slides, _ = _slides(seed=5)
    s = PrototypeSettings(n_local=8, n_global=5, n_components=16, random_state=3)
    together = LocalGlobalPrototypes.from_settings(s).fit(slides)
    # Slide 0's local prototypes do not depend on the other slides ...
    alone = [local_prototypes(x, s) for x in slides]
    for a, b in zip(alone, together.local_prototypes_, strict=True):
        np.testing.assert_array_equal(a, b)
    with_more = LocalGlobalPrototypes.from_settings(s).fit([*slides, slides[1] * 1.5])
    np.testing.assert_array_equal(with_more.local_prototypes_[0], alone[0])
    # ... and the global ones are those of the local ones alone, bit for bit.
    np.testing.assert_array_equal(global_prototypes(alone, s), together.global_prototypes_)
    # A slide's similarity to the global prototypes needs that slide and the prototypes only.
    g = together.global_prototypes_
    np.testing.assert_array_equal(
        SlideSpace.fit(slides[2], s).similarity(slides[2], g), together.similarity(slides[2], 2)
    )


def test_seeded_and_small_inputs():
    slides, _ = _slides(seed=3)
    a = LocalGlobalPrototypes(random_state=7).fit(slides).global_prototypes_
    b = LocalGlobalPrototypes(random_state=7).fit(slides).global_prototypes_
    np.testing.assert_array_equal(a, b)
    # Fewer patches than requested prototypes: k shrinks instead of failing.
    tiny = [np.abs(np.random.default_rng(0).normal(size=(5, 10)))]
    p = LocalGlobalPrototypes(n_local=16, n_global=8, n_components=None).fit(tiny)
    assert len(p.global_prototypes_) == 5
    with pytest.raises(ValueError):
        LocalGlobalPrototypes().fit([])
    with pytest.raises(ValueError):
        global_prototypes([], PrototypeSettings())
    with pytest.raises(ValueError, match="at least 1"):
        local_prototypes(slides[0], PrototypeSettings(n_local=0))
