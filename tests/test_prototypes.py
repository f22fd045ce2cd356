"""Local-to-global prototypes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.prototypes import LocalGlobalPrototypes


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
    assert p.global_prototypes_.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(p.global_prototypes_, axis=1), 1, atol=1e-5)
    x, t = np.concatenate(slides), np.concatenate(truth)
    a = p.assign(x)
    # Each true pattern maps (almost) entirely to one global prototype.
    for k in range(5):
        counts = np.bincount(a[t == k], minlength=5)
        assert counts.max() / counts.sum() > 0.95


def test_similarity_is_cosine_in_projected_space():
    slides, _ = _slides()
    p = LocalGlobalPrototypes(n_local=6, n_global=4, n_components=8).fit(slides)
    x = slides[1][:20]
    sim = p.similarity(x)
    assert sim.shape == (20, 4)
    assert (sim <= 1 + 1e-5).all() and (sim >= -1 - 1e-5).all()
    z = p.transform(x)
    np.testing.assert_allclose(sim, z @ p.global_prototypes_.T, rtol=1e-5)
    np.testing.assert_array_equal(p.assign(x), sim.argmax(1))


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
