"""The methods the benchmark compares: each a small function of a case (cached features,
grids, coarse outlines and labels, :class:`benchmarks.cases.Case`) that returns one region
geometry per slide.

Methods (``METHODS``):

``coarse``        the simulated coarse polygon itself.
``ca``            the paper's CA row: the engine's :class:`PatchClassifier` (DDS, focal loss,
                  re-finetuning) trained on the coarse labels and scoring the same patches
                  (transductive), regions traced from its probabilities at 0.5.
``knn``           DkNN-style label cleaning: each patch takes the majority coarse label of its
                  ``KNN_K`` nearest neighbours in feature space (standardised, PCA 32, cosine),
                  then as ``ca``.
``lcmil``         LCMIL-style attention MIL with pseudo bags, per slide (see :func:`lcmil`).
``paper-ca`` .. ``paper-rf``  the paper's ablation, literally: plain classifier on coarse
                  labels; + local-prototype pseudo-labels; + global prototypes; + DDS with
                  focal loss; + re-finetuning. Outside patches relabelled by tau ("auto"),
                  transductive, regions re-drawn from the probabilities (``mode="replace"``).
``engine``        :func:`engine.pipeline.refine` with its defaults, as shipped.
``oracle``        the true patch labels through the region tracer: the best any patch
                  labelling can do on this grid.
``ceiling``       a classifier trained on the TRUE labels of the cohort's other slides,
                  predicting the held-out slide: what the features separate across slides.
``ceiling-insample``  the same classifier on the TRUE labels of the cohort itself, cross-fitted
                  by spatial blocks as the engine is: what they separate within the slides.

``VARIANTS`` (``v-*``) are candidate method changes measured with the same harness; they run
only when named (``python -m benchmarks.run --methods ...``) and are never defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import shapely
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler, normalize
from torch import nn

from benchmarks.cases import Case, run_engine
from engine.classifier import (
    ClassifierSettings,
    MilSettings,
    PatchClassifier,
    cross_fit_proba,
    mil_proba,
    standardise,
)
from engine.errors import TrainingDataError
from engine.pipeline import RefineSettings, SlideInput, refine, spatial_groups
from engine.prototypes import LocalGlobalPrototypes, PrototypeSettings
from engine.pseudolabels import PseudoLabelSettings, pseudo_labels
from engine.regions import (
    RegionSettings,
    edit_masks,
    refine_outline,
    refined_labels,
    regions_from_probabilities,
    smooth_on_grid,
)

Geometry: TypeAlias = shapely.Geometry
F32 = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- method helpers


def replace_regions(
    case: Case, proba: np.ndarray, threshold: float = 0.5, min_cells: float | None = None
) -> list[Geometry]:
    """Regions re-drawn from per-patch probabilities (the paper's step 8) on every slide."""
    out = []
    for s, g, p in zip(case.cohort.slides, case.grids, case.split(proba), strict=True):
        area = None if min_cells is None else min_cells * (g.size * s.mpp) ** 2
        # sigma 0: the scores as the method gives them (LCMIL smooths its own beforehand)
        rs = RegionSettings(mode="replace", threshold=threshold, min_area_um2=area, sigma=0.0)
        if area is not None:
            rs = replace(rs, min_hole_um2=area)
        out.append(regions_from_probabilities(g, p, s.mpp, rs, frame=s.size))
    return out


def classifier_settings(seed: int, **kw: Any) -> ClassifierSettings:
    return replace(ClassifierSettings(random_state=seed), **kw)


class PlainClassifier(PatchClassifier):
    """The ablation's classifier before DDS: the same MLP and step budget, but batches drawn
    uniformly from all patches and plain binary cross-entropy (no balancing, no focal loss)."""

    def _train_dds(self, xt: torch.Tensor, y: np.ndarray, rng: np.random.Generator) -> None:
        s = self.settings
        yt = torch.from_numpy(y.astype(np.float32))
        opt = torch.optim.AdamW(self.net_.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.net_.train()
        self.loss_history_ = []
        for _ in range(s.iterations):
            idx = torch.from_numpy(rng.choice(len(y), s.batch_size))
            logits = self.net_(xt[idx]).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.loss_history_.append(loss.item())


def fit_predict(
    x: np.ndarray, y: np.ndarray, settings: ClassifierSettings, plain: bool = False
) -> F32:
    """Train on all patches and score the same patches (the paper's transductive setting)."""
    cls = PlainClassifier if plain else PatchClassifier
    return cls(settings).fit(x, y).predict_proba(x)


def _guarded(case: Case, name: str, fn: Callable[[], list[Geometry]]) -> list[Geometry]:
    """A method that cannot train (a class missing from its labels) returns the coarse
    outline, and the case records why."""
    try:
        return fn()
    except TrainingDataError as e:
        case.notes.append(f"{name}: {e} -> coarse outline kept")
        return list(case.coarse)


# --------------------------------------------------------------------------- methods


def coarse(case: Case) -> list[Geometry]:
    return list(case.coarse)


def ca(case: Case) -> list[Geometry]:
    """Classifier on the coarse labels, transductive, regions from its probabilities."""

    def run() -> list[Geometry]:
        proba = fit_predict(case.x, case.y, classifier_settings(case.seed))
        return replace_regions(case, proba)

    return _guarded(case, "ca", run)


KNN_K = 10
KNN_COMPONENTS = 32


def knn_clean(x: np.ndarray, y: np.ndarray, k: int = KNN_K, seed: int = 0) -> np.ndarray:
    """DkNN-style cleaning: each patch takes the majority label of its ``k`` nearest
    neighbours (itself excluded; ties keep its own label), cosine in a standardised PCA
    space as the prototypes use."""
    z = StandardScaler().fit_transform(x)
    if min(z.shape) > KNN_COMPONENTS:
        z = PCA(KNN_COMPONENTS, random_state=seed).fit_transform(z)
    z = normalize(z)
    nn_ = NearestNeighbors(n_neighbors=min(k + 1, len(z))).fit(z)
    _, idx = nn_.kneighbors(z)
    votes = y[idx[:, 1:]].mean(axis=1)
    out = y.copy()
    out[votes > 0.5] = 1
    out[votes < 0.5] = 0
    return out


def knn(case: Case) -> list[Geometry]:
    def run() -> list[Geometry]:
        y = knn_clean(case.x, case.y, seed=case.seed)
        proba = fit_predict(case.x, y, classifier_settings(case.seed))
        return replace_regions(case, proba)

    return _guarded(case, "knn", run)


# ---- LCMIL-style


@dataclass(frozen=True)
class LcmilSettings:
    """METHOD.md's description of LCMIL on our frozen features: the engine's attention MIL
    on pseudo bags (:func:`engine.classifier.mil_proba`, whose settings are LCMIL's: Adam
    5e-5, bags of 10, focal loss), then LCMIL's own step 8: Gaussian smoothing of the scores
    (σ = 1 cell), **re-drawing** every region at ``threshold`` 0.6, objects and holes under
    ``min_cells`` removed (LCMIL's 100 cells is a whole-slide size, larger than most of our
    slides' tumour). What sets the engine apart is what it does with the same scores: edit
    the coarse outline instead of re-drawing it."""

    mil: MilSettings = MilSettings()
    sigma_cells: float = 1.0
    threshold: float = 0.6
    min_cells: float = 2.0


def lcmil(case: Case, s: LcmilSettings = LcmilSettings()) -> list[Geometry]:
    def run() -> list[Geometry]:
        probas = [
            smooth_on_grid(g, p, s.sigma_cells)
            for g, p in zip(case.grids, _mil_scores(case, s.mil), strict=True)
        ]
        return replace_regions(case, np.concatenate(probas), s.threshold, s.min_cells)

    return _guarded(case, "lcmil", run)


# ---- the paper's ablation, literal

PAPER_STEPS = ("paper-ca", "paper-lp", "paper-gp", "paper-dds", "paper-rf")
#: the paper leaves tau open; "auto" is the engine's data-driven value (a quantile of the
#: inside patches' similarity to G+), the literal method's outside relabelling switched on
PAPER_TAU: float | str = "auto"


def paper_pseudo_labels(case: Case, local: bool, tau: float | str | None = PAPER_TAU) -> np.ndarray:
    """Prototype pseudo-labels (eqs. 3-4) from the global prototypes, or per slide from
    that slide's local prototypes (the ablation's LP step)."""
    protos = LocalGlobalPrototypes.from_settings(PrototypeSettings(random_state=case.seed))
    protos.fit(case.features)
    settings = PseudoLabelSettings(tau=tau)
    if not local:
        sim = np.concatenate([protos.similarity(x, j) for j, x in enumerate(case.features)])
        return pseudo_labels(sim, case.y, settings).labels
    out = []
    for j, (x, c) in enumerate(zip(case.features, case.coarse_labels, strict=True)):
        sim = protos.transform(x, j) @ protos.local_prototypes_[j].T
        out.append(pseudo_labels(sim, c, settings).labels)
    return np.concatenate(out)


def paper_step(case: Case, step: str) -> list[Geometry]:
    """One row of the paper's ablation: CA, +LP, +GP, +DDS, +RF (cumulative)."""

    def run() -> list[Geometry]:
        local = step == "paper-lp"
        y = case.y if step == "paper-ca" else paper_pseudo_labels(case, local=local)
        plain = step in ("paper-ca", "paper-lp", "paper-gp")
        rf = 2 if step == "paper-rf" else 0
        settings = classifier_settings(case.seed, refinetune_epochs=rf)
        proba = fit_predict(case.x, y, settings, plain=plain)
        return replace_regions(case, proba)

    return _guarded(case, step, run)


# ---- the engine as shipped


def engine_defaults(case: Case) -> list[Geometry]:
    """The engine as shipped, one slide per call as ``qupath-refine slide`` runs it (each
    slide's MIL model is seeded as the CLI seeds a lone slide)."""
    return [e.regions for e in run_engine(case)]


def engine_prototype(case: Case) -> list[Geometry]:
    """``--method prototype``: the paper's route, the cohort's slides refined together (they
    share the global prototypes and one classifier)."""
    c = case.cohort
    items = [SlideInput(s.path, g, name=s.name) for s, g in zip(c.slides, case.coarse, strict=True)]
    p = RefineSettings.for_method("prototype")
    settings = replace(c.settings, classifier=p.classifier, regions=p.regions).with_seed(case.seed)

    def run() -> list[Geometry]:
        return [r.regions for r in refine(items, settings, progress=False).slides]

    return _guarded(case, "engine", run)


# ---- references


def oracle(case: Case) -> list[Geometry]:
    return replace_regions(case, np.concatenate(case.truth_labels).astype(np.float32))


def ceiling(case: Case) -> list[Geometry]:
    """Leave one slide out: train on the true labels of the others, score the held-out one."""
    if len(case.grids) < 2:
        case.notes.append("ceiling needs two slides or more")
        return [shapely.MultiPolygon() for _ in case.grids]
    probas = []
    for j in range(len(case.grids)):
        xs = np.concatenate([f for i, f in enumerate(case.features) if i != j])
        ys = np.concatenate([t for i, t in enumerate(case.truth_labels) if i != j])
        model = PatchClassifier(classifier_settings(case.seed)).fit(xs, ys)
        probas.append(model.predict_proba(case.features[j]))
    return replace_regions(case, np.concatenate(probas))


def ceiling_insample(case: Case) -> list[Geometry]:
    """The in-sample ceiling: true labels of the cohort itself, cross-fitted by spatial
    blocks as the engine does (each patch scored by a model that did not train on it):
    what the features separate within the slides being refined (the paper's setting)."""
    s = classifier_settings(case.seed)
    groups = np.concatenate(
        [spatial_groups(g, k, s.cross_fit_block) for k, g in enumerate(case.grids)]
    )
    y = np.concatenate(case.truth_labels)
    return replace_regions(case, cross_fit_proba(case.x, y, groups, s))


METHODS: dict[str, Callable[[Case], list[Geometry]]] = {
    "coarse": coarse,
    "ca": ca,
    "knn": knn,
    "lcmil": lcmil,
    **{
        step: cast(Callable[[Case], list[Geometry]], lambda case, _s=step: paper_step(case, _s))
        for step in PAPER_STEPS
    },
    "engine-prototype": engine_prototype,
    "engine": engine_defaults,
    "oracle": oracle,
    "ceiling": ceiling,
    "ceiling-insample": ceiling_insample,
}


# --------------------------------------------------------------------------- variants
# Candidate method changes, measured with the same harness (``--methods``), never defaults.


def _engine_with(case: Case, **changes: Any) -> list[Geometry]:
    """The engine with some settings changed: ``regions=...``, ``classifier=...`` (dicts of
    field changes) or ``pseudo_bags=True`` (MIL bags from the prototype pseudo-labels)."""
    c = case.cohort
    items = [SlideInput(s.path, g, name=s.name) for s, g in zip(c.slides, case.coarse, strict=True)]
    s = c.settings.with_seed(case.seed)
    s = replace(
        s,
        regions=replace(s.regions, **changes.get("regions", {})),
        classifier=replace(s.classifier, **changes.get("classifier", {})),
    )

    def run() -> list[Geometry]:
        return [r.regions for r in refine(items, s, progress=False).slides]

    return _guarded(case, "engine variant", run)


def _pseudo_bags(case: Case) -> list[Geometry]:
    """MIL with bags drawn from the prototype pseudo-labels instead of the coarse labels."""

    def run() -> list[Geometry]:
        labels = paper_pseudo_labels(case, local=False, tau=None)
        probas = [
            mil_proba(standardise(x), y, classifier_settings(case.seed), case.seed * 100 + k)
            for k, (x, y) in enumerate(zip(case.features, case.split(labels), strict=True))
        ]
        out = []
        for s, g, p, c, geom in zip(
            case.cohort.slides, case.grids, probas, case.coarse_labels, case.coarse,
            strict=True,
        ):  # fmt: skip
            out.append(refine_outline(geom, g, p, c, s.mpp, RegionSettings(), s.size).regions)
        return out

    return _guarded(case, "pseudo bags", run)


def _mil_scores(case: Case, mil: MilSettings | None = None) -> list[np.ndarray]:
    """Per-slide MIL scores on the coarse labels, seeded as ``refine`` seeds them."""
    s = classifier_settings(case.seed, mil=mil or MilSettings())
    return [
        mil_proba(standardise(x), y, s, case.seed * 100 + k)
        for k, (x, y) in enumerate(zip(case.features, case.coarse_labels, strict=True))
    ]


def _mil_refinetuned(case: Case) -> list[Geometry]:
    """The paper's re-finetuning step in MIL form: a second MIL model per slide, its bags
    drawn from the first model's edited labels, then the same edit of the coarse outline."""

    def run() -> list[Geometry]:
        rs, s = RegionSettings(), classifier_settings(case.seed)
        out = []
        for k, (sl, g, x, p, c, geom) in enumerate(
            zip(
                case.cohort.slides, case.grids, case.features,
                _mil_scores(case), case.coarse_labels, case.coarse, strict=True,
            )
        ):  # fmt: skip
            y2 = refined_labels(g, c, p, rs)
            p2 = mil_proba(standardise(x), y2, s, case.seed * 100 + k + 50)
            out.append(refine_outline(geom, g, p2, c, sl.mpp, rs, sl.size).regions)
        return out

    return _guarded(case, "mil re-finetuning", run)


def _iso_cut(case: Case) -> list[Geometry]:
    """Inside the outline, follow the smoothed scores' 0.5 iso-line instead of cutting whole
    patches; add outside as the engine does."""

    def run() -> list[Geometry]:
        rs = RegionSettings()
        trace = RegionSettings(mode="replace", threshold=0.5, sigma=0.0)
        out = []
        for sl, g, p, c, geom in zip(
            case.cohort.slides, case.grids, _mil_scores(case), case.coarse_labels,
            case.coarse, strict=True,
        ):  # fmt: skip
            keep = regions_from_probabilities(g, smooth_on_grid(g, p, rs.sigma), sl.mpp, trace)
            _, add = edit_masks(g, p, c, rs)
            res = geom.intersection(keep)
            if add.any():
                res = res.union(
                    regions_from_probabilities(g, add.astype(np.float32), sl.mpp, trace)
                )
            out.append(shapely.make_valid(res.intersection(shapely.box(0, 0, *sl.size))))
        return out

    return _guarded(case, "iso cut", run)


#: the alternatives the engine's defaults were chosen against (BENCHMARKS.md)
VARIANTS: dict[str, Callable[[Case], list[Geometry]]] = {
    # re-draw everything from the smoothed scores (the paper's step 8) instead of editing
    "v-replace": lambda c: _engine_with(c, regions={"mode": "replace"}),
    # the guard off: edit every outline (the default before the guard) / re-draw every one
    "v-no-guard": lambda c: _engine_with(c, regions={"outline": "edit"}),
    "v-always-redraw": lambda c: _engine_with(c, regions={"redraw_below": float("inf")}),
    # no smoothing of the scores over the lattice (to draw lines, nor to find tumour away)
    "v-no-smoothing": lambda c: _engine_with(c, regions={"sigma": 0.0, "find_sigma": None}),
    # edit thresholds: add above 0.6 instead of 0.8; cut below 0.6 or 0.3 instead of 0.4
    # (the cuts of loose outlines; an edited outline is cut below the lower of this and
    # edit_cut_below, 0.3 since stop 21)
    "v-add-0.6": lambda c: _engine_with(c, regions={"add_above": 0.6}),
    "v-cut-0.6": lambda c: _engine_with(c, regions={"remove_below": 0.6}),
    "v-cut-0.3": lambda c: _engine_with(c, regions={"remove_below": 0.3}),
    # MIL bags from the prototype pseudo-labels (tau off) instead of the coarse labels
    "v-pseudo-bags": _pseudo_bags,
    # a second MIL round on the first one's edited labels (re-finetuning, MIL form)
    "v-mil-refinetune": _mil_refinetuned,
    # cut along the smoothed scores' iso-line inside the outline, not whole patches
    "v-iso-cut": _iso_cut,
}
METHODS.update(VARIANTS)
#: the methods of the full table (variants run only when named)
MAIN_METHODS = tuple(m for m in METHODS if m not in VARIANTS)

#: methods whose result does not depend on the coarse annotation
COARSE_FREE = ("oracle", "ceiling", "ceiling-insample")
#: methods run for every encoder, not only the default one
PER_ENCODER = ("coarse", "paper-rf", "engine", "ceiling", "ceiling-insample")
