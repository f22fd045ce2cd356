"""Prototype-guided pseudo-labels: the major-class rule, tau, and their edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from engine.pseudolabels import PseudoLabelSettings, major_prototypes, pseudo_labels


def _onehot_sim(assign, k, other=0.0):
    """Similarities where each patch matches its own prototype with 1.0, others ``other``."""
    sim = np.full((len(assign), k), other, dtype=np.float32)
    sim[np.arange(len(assign)), assign] = 1.0
    return sim


def test_major_rule_share_and_enrichment():
    # Prototype 0: 40 inside, 5 outside (tumour). 1: 8 inside, 60 outside (stroma the outline
    # brushes). 2: 2 inside of 2 (rare, below min_share). Base rate 50/115 inside.
    assign = np.array([0] * 45 + [1] * 68 + [2] * 2)
    coarse = np.array([1] * 40 + [0] * 5 + [1] * 8 + [0] * 60 + [1] * 2)
    major, warn = major_prototypes(assign, coarse, 3, min_share=0.05, min_enrichment=1.0)
    assert major.tolist() == [True, False, False]
    assert warn == []


def test_enrichment_is_relative_to_the_base_rate():
    """Tumour is 10% of the slide: a pattern 30% inside is enriched 3x though under half."""
    assign = np.array([0] * 100 + [1] * 900)
    coarse = np.zeros(1000, int)
    coarse[:30] = 1  # 30 of prototype 0's 100 patches inside
    coarse[100:170] = 1  # 70 of prototype 1's 900 (7.8%: below the 10% base rate)
    major, _ = major_prototypes(assign, coarse, 2, min_share=0.05, min_enrichment=1.0)
    assert major.tolist() == [True, False]
    major, _ = major_prototypes(assign, coarse, 2, min_share=0.05, min_enrichment=0.5)
    assert major.tolist() == [True, True]


def test_every_inside_patch_on_one_prototype():
    assign = np.array([0] * 30 + [1] * 50)
    coarse = np.array([1] * 30 + [0] * 50)
    pl = pseudo_labels(_onehot_sim(assign, 2), coarse, PseudoLabelSettings(tau=None))
    assert pl.major.tolist() == [True, False]
    np.testing.assert_array_equal(pl.labels, coarse)  # nothing to change
    assert pl.n_flipped_in == pl.n_flipped_out == 0


def test_prototype_shared_by_inside_and_outside():
    # Half of prototype 0's patches are inside, base rate 0.25: enrichment 2 passes (>=) ...
    assign = np.array([0] * 40 + [1] * 40)
    coarse = np.array([1] * 20 + [0] * 20 + [0] * 40)
    s = PseudoLabelSettings(min_enrichment=2.0, tau=0.9)
    pl = pseudo_labels(_onehot_sim(assign, 2, 0.2), coarse, s)
    assert pl.major.tolist() == [True, False]
    # ... and its outside members are similar enough (1.0 > tau) to become tumour.
    assert pl.labels[:40].tolist() == [1] * 40
    assert pl.n_flipped_in == 20
    # ... at enrichment 2.5 it does not pass, and the fallback takes it alone with a warning.
    s = PseudoLabelSettings(min_enrichment=2.5, tau=None)
    pl = pseudo_labels(_onehot_sim(assign, 2, 0.2), coarse, s)
    assert pl.major.tolist() == [True, False]
    assert pl.warnings and "most enriched" in pl.warnings[0]


def test_no_outside_patch_above_tau():
    assign = np.array([0] * 30 + [1] * 50)
    coarse = np.array([1] * 30 + [0] * 50)
    sim = _onehot_sim(assign, 2, other=0.5)  # outside patches: 0.5 to the major prototype
    pl = pseudo_labels(sim, coarse, PseudoLabelSettings(tau=0.8))
    assert pl.n_flipped_in == 0
    pl = pseudo_labels(sim, coarse, PseudoLabelSettings(tau=0.4))
    assert pl.n_flipped_in == 50


def test_inside_non_major_become_negative_and_hard_negatives_win():
    assign = np.array([0] * 30 + [1] * 10 + [1] * 50)
    coarse = np.array([1] * 30 + [1] * 10 + [0] * 50)  # 10 stroma patches over-included
    hard = np.zeros(90, dtype=bool)
    hard[:5] = True  # the user marked 5 tumour-looking patches as not tumour
    pl = pseudo_labels(_onehot_sim(assign, 2), coarse, PseudoLabelSettings(tau=None), hard)
    assert pl.n_flipped_out == 10
    assert pl.labels[30:40].sum() == 0
    assert pl.labels[:5].sum() == 0 and pl.labels[5:30].sum() == 25
    keep = pseudo_labels(
        _onehot_sim(assign, 2), coarse, PseudoLabelSettings(tau=None, relabel_inside=False)
    )
    assert keep.labels[30:40].sum() == 10


def test_nothing_inside():
    pl = pseudo_labels(_onehot_sim(np.array([0, 1, 1]), 2), np.zeros(3, int))
    assert not pl.major.any() and pl.labels.sum() == 0 and pl.warnings


def test_auto_tau_from_inside_patches():
    rng = np.random.default_rng(0)
    # 100 inside patches on prototype 0 with similarity 0.5..1.0 to it; 50 outside patches
    # on prototype 1 with similarity to prototype 0 spread over 0..1.
    inside = rng.uniform(0.5, 1.0, 100)
    outside = np.linspace(0, 1, 50)
    sim = np.zeros((150, 2), np.float32)
    sim[:100, 0], sim[:100, 1] = inside, 0.0
    sim[100:, 0], sim[100:, 1] = outside * 0.99, 1.0
    coarse = np.array([1] * 100 + [0] * 50)
    pl = pseudo_labels(sim, coarse, PseudoLabelSettings(tau="auto", tau_quantile=0.25))
    assert pl.tau == pytest.approx(np.quantile(inside, 0.25), rel=1e-5)
    assert pl.n_flipped_in == int((outside * 0.99 > pl.tau).sum()) > 0
    # The floor keeps a loose cohort from relabelling everything.
    floor = pseudo_labels(
        sim, coarse, PseudoLabelSettings(tau="auto", tau_quantile=0.0, tau_floor=0.9)
    )
    assert floor.tau == 0.9
    with pytest.raises(ValueError):
        pseudo_labels(sim, coarse, PseudoLabelSettings(tau="sometimes"))
