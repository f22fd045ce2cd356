"""The classifiers: real torch training (patch MLP with DDS, focal loss and re-finetuning;
attention MIL on pseudo bags)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.classifier import (
    ClassifierSettings,
    MilSettings,
    PatchClassifier,
    balanced_batch,
    cross_fit_proba,
    focal_loss,
    mil_proba,
    spatial_folds,
    standardise,
)
from engine.errors import TrainingDataError


def _noisy_data(seed=0, n=2000, pos_share=0.1, noise=0.1):
    """Two Gaussian classes, tumour rare, with ``noise`` of each class's labels flipped."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_share).astype(int)
    x = rng.normal(0, 1, (n, 32)) + y[:, None] * 1.5
    flip = rng.random(n) < noise
    return x.astype(np.float32), y, np.where(flip, 1 - y, y)


def test_learns_through_label_noise_and_imbalance():
    x, truth, noisy = _noisy_data()
    clf = PatchClassifier(ClassifierSettings(iterations=200)).fit(x, noisy)
    pred = clf.predict_proba(x) >= 0.5
    acc = (pred == truth).mean()
    noisy_acc = (noisy == truth).mean()
    assert acc > noisy_acc + 0.05  # better than the labels it was trained on
    assert clf.loss_history_[-1] < clf.loss_history_[0]


def test_deterministic_under_seed():
    x, _, y = _noisy_data(seed=1, n=500)
    s = ClassifierSettings(iterations=50, random_state=3)
    a = PatchClassifier(s).fit(x, y).predict_proba(x)
    b = PatchClassifier(s).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    c = PatchClassifier(ClassifierSettings(iterations=50, random_state=4)).fit(x, y)
    assert not np.array_equal(a, c.predict_proba(x))


def test_refinetuning_uses_its_own_predictions_and_fixed_negatives():
    x, _, y = _noisy_data(seed=2, n=600)
    fixed = np.zeros(600, dtype=bool)
    fixed[np.flatnonzero(y == 1)[:5]] = True
    clf = PatchClassifier(ClassifierSettings(iterations=80, refinetune_epochs=1)).fit(
        x, y, fixed_negative=fixed
    )
    np.testing.assert_array_equal(clf.refined_labels_[~fixed], clf.dds_proba_[~fixed] >= 0.5)
    assert clf.refined_labels_[fixed].sum() == 0
    off = PatchClassifier(ClassifierSettings(iterations=80, refinetune_epochs=0)).fit(x, y)
    np.testing.assert_allclose(off.predict_proba(x), off.dds_proba_, atol=1e-6)


def test_balanced_batches():
    rng = np.random.default_rng(0)
    pos, neg = np.arange(3), np.arange(3, 1000)
    b = balanced_batch(pos, neg, 64, rng)
    assert len(b) == 64 and (b < 3).sum() == 32


def test_focal_loss_downweights_easy_examples():
    t = torch.tensor([1.0, 1.0])
    easy, hard = focal_loss(torch.tensor([5.0, 5.0]), t), focal_loss(torch.tensor([-1.0, -1.0]), t)
    assert easy < hard * 1e-3
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.3]), t[:1])
    assert focal_loss(torch.tensor([0.3]), t[:1], gamma=0.0, alpha=0.5) == pytest.approx(
        0.5 * float(bce)
    )


def test_too_few_patches():
    x = np.zeros((30, 4), np.float32)
    y = np.array([1] * 3 + [0] * 27)
    with pytest.raises(TrainingDataError, match="3 labelled tumour and 27 not"):
        PatchClassifier().fit(x, y)


def test_cross_fitting_scores_patches_with_models_that_did_not_see_them():
    """A transductive model repeats the noisy labels it trained on; out-of-fold scores do not,
    which is what lets the pipeline find tumour outside the coarse outline."""
    x, truth, noisy = _noisy_data(seed=5, n=1500, noise=0.15)
    groups = np.arange(1500) // 10  # blocks of 10 neighbouring patches
    s = ClassifierSettings(iterations=150, cross_fit_folds=5)
    oof = cross_fit_proba(x, noisy, groups, s)
    trans = cross_fit_proba(x, noisy, groups, ClassifierSettings(iterations=150, cross_fit_folds=0))
    flipped = noisy != truth
    # On the mislabelled patches, out-of-fold scores side with the truth more often.
    agree_oof = ((oof[flipped] >= 0.5) == truth[flipped]).mean()
    agree_trans = ((trans[flipped] >= 0.5) == truth[flipped]).mean()
    assert agree_oof > agree_trans
    np.testing.assert_array_equal(oof, cross_fit_proba(x, noisy, groups, s))  # seeded


def test_spatial_folds_keep_blocks_together():
    groups = np.repeat(np.arange(20), 7)
    f = spatial_folds(groups, 5, seed=0)
    for g in range(20):
        assert len(set(f[groups == g])) == 1
    assert sorted(set(f)) == [0, 1, 2, 3, 4]
    # Too few blocks for the folds: one transductive model instead of failing.
    x, _, y = _noisy_data(n=200)
    p = cross_fit_proba(x, y, np.zeros(200, np.int64), ClassifierSettings(iterations=20))
    assert p.shape == (200,)


def _over_included(seed=0, n=3000, shift=0.35):
    """A coarse outline around all tumour that also takes in as much normal tissue: inside
    = tumour + over-included normal, outside = normal (the typical coarse annotation)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.2).astype(int)
    x = rng.normal(0, 1, (n, 32)) + truth[:, None] * shift
    inside = truth.copy()
    normal = np.flatnonzero(truth == 0)
    inside[rng.choice(normal, truth.sum(), replace=False)] = 1  # 50% of inside is normal
    return standardise(x), truth, inside


def test_mil_learns_through_an_over_inclusive_outline():
    """Bags of inside patches only need some tumour: trained on labels of which a fifth are
    wrong, MIL's scores put most of the over-included normal tissue below 0.5 and keep the
    tumour above it (the engine's edit rule then cuts the one and keeps the other)."""
    from sklearn.metrics import roc_auc_score

    x, truth, inside = _over_included()
    s = ClassifierSettings(model="mil")
    p = mil_proba(x, inside, s, seed=0)
    ins = inside == 1
    assert roc_auc_score(truth[ins], p[ins]) > 0.85
    edited = np.where(ins, p >= 0.5, p > 0.7)
    assert (edited == truth).mean() > (inside == truth).mean() + 0.08  # 0.91 vs 0.79
    assert edited[truth == 1].mean() > 0.85  # tumour kept
    np.testing.assert_array_equal(p, mil_proba(x, inside, s, seed=0))  # seeded
    assert not np.array_equal(p, mil_proba(x, inside, s, seed=1))


def test_mil_leaves_unlabelled_patches_out_and_needs_both_labels():
    x, _, inside = _over_included(n=400)
    y = inside.copy()
    y[:50] = -1  # e.g. patches no bag may use
    assert mil_proba(x, y, ClassifierSettings(mil=MilSettings(epochs=1))).shape == (400,)
    with pytest.raises(TrainingDataError, match="labelled tumour"):
        mil_proba(x, np.r_[np.ones(5), np.zeros(395)], ClassifierSettings())
    with pytest.raises(ValueError, match="'mil' or 'mlp'"):
        ClassifierSettings(model="svm").validate()
