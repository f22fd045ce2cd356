"""The whole method over a cohort of slides, stage by stage.

slide -> patches -> features -> [prototypes -> pseudo-labels] -> classifier -> regions.

Default (``method="mil"``): each slide gets its own attention-MIL model trained on bags drawn
inside and outside its coarse outline, then the outline is edited where the scores are clear.
With ``method="prototype"`` (``--method prototype``, the paper's route) slides refined together
share the global prototypes and one patch classifier, trained on the slides it refines (each
patch scored by a model trained on the other cross-fitting folds, see :mod:`engine.classifier`).
On a cluster the same global prototypes are shared, but each slide gets a classifier of its
own (:mod:`engine.prototype_slides`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import shapely

from engine.classifier import ClassifierSettings, cross_fit_proba, standardise
from engine.devices import resolve_device
from engine.encoders import Encoder, build_encoder
from engine.errors import SettingsError, TissueError
from engine.features import (
    FeatureSettings,
    ProgressFactory,
    cache_key,
    default_cache_dir,
    embed_grid,
    load_cached,
    store_cached,
)
from engine.guard import redraw_self_test
from engine.patches import (
    GridSettings,
    PatchGrid,
    check_patch_budget,
    coarse_labels,
    make_grid,
    tissue_mask,
)
from engine.prototypes import LocalGlobalPrototypes, PrototypeSettings
from engine.pseudolabels import PseudoLabels, PseudoLabelSettings, pseudo_labels
from engine.regions import (
    Outline,
    RegionSettings,
    refine_outline,
    refined_labels,
    regions_from_probabilities,
    valid_polygons,
)
from engine.scores import (
    TRAINED,
    UNSCORED,
    Derived,
    cached_mil_proba,
    cached_self_test,
    combined_digest,
    features_digest,
)
from engine.slide import Slide, SlideInfo

log = logging.getLogger("qupath_refine")

STAGES = ("read", "embed", "prototypes", "train", "regions")
#: the route, in the user's word (``--method``); see :attr:`RefineSettings.method`
Method = Literal["mil", "prototype"]


@dataclass
class SlideInput:
    """One slide and its annotations, geometries in level-0 px of QuPath's frame."""

    path: Path
    coarse: shapely.Geometry | None
    negative: shapely.Geometry | None = None
    mpp: float | None = None
    name: str | None = None
    #: (width, height) of the image in QuPath, when known: decides whether OpenSlide's bounds
    #: offset applies (see :class:`engine.slide.Slide`)
    qupath_size: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


@dataclass(frozen=True)
class RefineSettings:
    """Every knob of the method, one dataclass per stage."""

    grid: GridSettings = field(default_factory=GridSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    prototypes: PrototypeSettings = field(default_factory=PrototypeSettings)
    pseudolabels: PseudoLabelSettings = field(default_factory=PseudoLabelSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    regions: RegionSettings = field(default_factory=RegionSettings)
    #: share of a patch the coarse polygons must cover for the patch to count as inside
    min_coarse_overlap: float = 0.5
    cache_dir: Path | None = None
    #: where torch and onnxruntime run: auto, cpu, cuda, cuda:N or mps (see engine.devices)
    device: str = "auto"

    @classmethod
    def for_method(cls, method: str = "mil", **kw: Any) -> RefineSettings:
        """Defaults for ``method``: ``"mil"`` (the default) or ``"prototype"`` (the paper's
        prototype pseudo-labels and patch MLP). The prototype route's out-of-fold scores are
        lower and flatter than MIL's; it keeps the guard that was tuned for them on the
        benchmark (no smoothing, add above 0.8, cut below 0.05, never re-draw)."""
        if method not in ("mil", "prototype"):
            raise SettingsError(f"method is 'mil' or 'prototype', not {method!r}")
        s = cls(**kw)
        if method == "mil":
            return replace(s, classifier=replace(s.classifier, model="mil"))
        return replace(
            s,
            classifier=replace(s.classifier, model="mlp"),
            regions=replace(
                s.regions,
                sigma=0.0,
                find_sigma=None,  # none anywhere: islands too, as it was tuned
                add_above=0.8,
                remove_below=0.05,
                outline="edit",
                edit_cut_below=0.05,
                # islands on edited outlines were studied on MIL scores only
                missed_min_um2=None,
            ),
        )

    def with_seed(self, seed: int) -> RefineSettings:
        return replace(
            self,
            prototypes=replace(self.prototypes, random_state=seed),
            classifier=replace(self.classifier, random_state=seed),
        )

    def validate(self) -> None:
        """Every stage's settings, checked in the order of the stages; a
        :class:`SettingsError` names the first one that is wrong."""
        for stage in (
            self.grid,
            self.features,
            self.prototypes,
            self.pseudolabels,
            self.classifier,
            self.regions,
        ):
            stage.validate()

    @property
    def method(self) -> Method:
        """The route, in the user's word (``--method``): ``"mil"`` or ``"prototype"``. Read
        from ``classifier.model`` (``"mil"`` or ``"mlp"``), its one source, so the two never
        disagree; an unknown model is a :class:`SettingsError`, not a guess."""
        self.classifier.validate()
        return "prototype" if self.classifier.model == "mlp" else "mil"


@dataclass
class SlideResult:
    name: str
    info: SlideInfo
    grid: PatchGrid
    coarse: npt.NDArray[np.int8]
    hard_negative: npt.NDArray[np.bool_]
    pseudo: npt.NDArray[np.int8]  # the labels the classifier learnt from
    proba: npt.NDArray[np.float32]
    refined: npt.NDArray[np.int8]  # the final label of each patch
    regions: shapely.Geometry
    cached: bool
    seconds: float  # reading and embedding this slide (shared stages not included)
    #: how the result was drawn: "edited" (the coarse outline, edited), "re-drawn (loose)"
    #: (the guard judged the outline loose), "re-drawn (tumour outside)" (it left tumour
    #: out), "re-drawn (normal inside)" (it closed over normal tissue), "re-drawn" (as
    #: asked), each followed by ", N regions added away from the outline" where it added
    #: some, "re-drawn (loose; no islands: self-test not passed)" (or "tumour outside; …",
    #: "normal inside; …"; a re-draw whose slide failed the self-test may end ", extended
    #: across its line by A mm²"), "unchanged (...)", "kept (weak evidence: why)"
    #: (the coarse outline unchanged) or "from scores" (region mode "replace"); an edited
    #: or unchanged outline may end "; N regions inside scored normal, not cut", "; tumour
    #: scored outside, not re-drawn (self-test not passed)" (``outside_tested``) and/or "; N
    #: regions outside scored tumour, not added (self-test not passed)"
    outline: str = "edited"
    #: the grid this slide was cut into (``patch_um`` resolved)
    grid_settings: GridSettings = field(default_factory=GridSettings)
    #: the scores: "trained" in this run, or "cached" (see engine.scores)
    classifier: str = TRAINED

    @property
    def relabelled_share(self) -> float:
        """Share of tissue patches whose label differs from the coarse annotation's."""
        return float(np.mean(self.refined != self.coarse)) if len(self.coarse) else 0.0


@dataclass
class RefineResult:
    slides: list[SlideResult]
    #: the prototypes and pseudo-labels of the paper's route (``method="prototype"``), else None
    prototypes: LocalGlobalPrototypes | None
    pseudo: PseudoLabels | None
    timings: dict[str, float]


@dataclass
class SlideFeatures:
    """The cached part of a slide: its grid and (once embedded) its features."""

    item: SlideInput
    info: SlideInfo
    key: str
    grid: PatchGrid
    features: npt.NDArray[np.float32] | None
    cached: bool
    seconds: float = 0.0
    #: the slide's grid settings, ``patch_um`` resolved (see :meth:`GridSettings.resolved`)
    grid_settings: GridSettings = field(default_factory=GridSettings)

    def embedded(self) -> npt.NDArray[np.float32]:
        """The features, which exist once the cache had them or :func:`embed_slide` ran."""
        if self.features is None:
            raise RuntimeError(f"{self.item.label}: features used before the slide was embedded")
        return self.features

    def result(
        self,
        coarse: npt.NDArray[np.int8],
        hard_negative: npt.NDArray[np.bool_],
        pseudo: npt.NDArray[np.int8],
        proba: npt.NDArray[np.float32],
        refined: npt.NDArray[np.int8],
        regions: shapely.Geometry,
        outline: str,
        classifier: str,
    ) -> SlideResult:
        """This slide's result: the labels, scores, regions and verdict given (in
        :class:`SlideResult`'s field order), the rest from what was read and cached."""
        return SlideResult(
            self.item.label,
            self.info,
            self.grid,
            coarse,
            hard_negative,
            pseudo,
            proba,
            refined,
            regions,
            self.cached,
            self.seconds,
            outline,
            self.grid_settings,
            classifier,
        )


def slide_grid(
    item: SlideInput, settings: RefineSettings, encoder: Encoder, timings: dict[str, float]
) -> SlideFeatures:
    """A slide's grid, with its features when the cache has them (no embedding here)."""
    cache_dir = settings.cache_dir or default_cache_dir()
    t0 = time.perf_counter()
    with open_slide(item) as slide:
        info = slide.info
        tissue = None
        g = settings.grid
        if g.is_auto:
            tissue = slide_tissue(slide, g)
            g = resolve_grid(g, item, tissue, slide.mpp)
        key = cache_key(info, encoder.key, g, settings.features)
        hit = load_cached(cache_dir, key)
        if hit is not None:
            return SlideFeatures(item, info, key, hit[0], hit[1], cached=True, grid_settings=g)
        grid = tissue_grid(slide, g, item.label, tissue)
    dt = time.perf_counter() - t0
    timings["read"] += dt
    return SlideFeatures(item, info, key, grid, None, cached=False, seconds=dt, grid_settings=g)


def open_slide(item: SlideInput) -> Slide:
    return Slide(item.path, mpp=item.mpp, qupath_size=item.qupath_size)


Tissue = tuple[npt.NDArray[np.bool_], float]  # a thumbnail's tissue mask, level-0 px per pixel


def slide_tissue(slide: Slide, g: GridSettings) -> Tissue:
    thumb, ds = slide.thumbnail(g.tissue_mpp)
    return tissue_mask(thumb), ds


def resolve_grid(g: GridSettings, item: SlideInput, tissue: Tissue, mpp: float) -> GridSettings:
    """``g`` with ``patch_um`` resolved for this slide (``"auto"``: from the coarse outline's
    area and the tissue's, see :func:`engine.patches.auto_patch_um`)."""
    mask, ds = tissue
    um2 = mpp * mpp
    coarse_um2 = 0.0 if item.coarse is None else float(shapely.area(item.coarse)) * um2
    tissue_um2 = float(mask.sum()) * ds * ds * um2
    return g.resolved(coarse_um2, tissue_um2)


def with_shared_grid(settings: RefineSettings, sides: Sequence[float]) -> RefineSettings:
    """``settings`` with the one patch side of a prototype run (the median of the slides'
    own ``sides``, µm): the slides share prototypes, so they share a grid."""
    ordered = sorted(sides)
    return replace(settings, grid=replace(settings.grid, patch_um=ordered[len(ordered) // 2]))


def slide_grid_settings(item: SlideInput, settings: RefineSettings) -> GridSettings:
    """The grid settings a run would use for ``item`` (``patch_um`` resolved)."""
    if not settings.grid.is_auto:
        return settings.grid
    with open_slide(item) as slide:
        return resolve_grid(settings.grid, item, slide_tissue(slide, settings.grid), slide.mpp)


def tissue_grid(
    slide: Slide, g: GridSettings, label: str, tissue: Tissue | None = None
) -> PatchGrid:
    """Tissue mask from a thumbnail (unless given), then the patches with enough tissue."""
    check_patch_budget(slide.width, slide.height, slide.mpp, g, label)
    mask, ds = tissue if tissue is not None else slide_tissue(slide, g)
    size = g.side_um / slide.mpp
    stride = g.step_um / slide.mpp
    grid = make_grid(slide.width, slide.height, mask, ds, size, stride, g.min_tissue)
    if len(grid) == 0:
        raise TissueError(
            f"No tissue found on {label}: no {g.side_um:g} µm patch holds "
            f"{g.min_tissue:.0%} tissue. Check the slide, or lower the minimum tissue share "
            "(GridSettings.min_tissue)."
        )
    return grid


def label_patches(
    item: SlideInput, grid: PatchGrid, min_overlap: float
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """Coarse labels and hard negatives of a slide's patches: a hard negative is never inside."""
    neg = coarse_labels(grid, item.negative).astype(bool)
    coarse = coarse_labels(grid, item.coarse, min_overlap)
    coarse[neg] = 0
    return coarse, neg


@dataclass
class SlidePlan:
    """What a run would do with a slide, without embedding anything."""

    name: str
    patches: int
    inside: int
    negative: int
    mpp: float
    patch_um: float = 0.0


def plan(
    items: Sequence[SlideInput], settings: RefineSettings = RefineSettings()
) -> list[SlidePlan]:
    """Grids and coarse label counts of every slide (for --dry-run); reads thumbnails only."""
    settings.grid.validate()
    out = []
    for item in items:
        with open_slide(item) as slide:
            tissue = slide_tissue(slide, settings.grid)
            g = resolve_grid(settings.grid, item, tissue, slide.mpp)
            grid = tissue_grid(slide, g, item.label, tissue)
            mpp = slide.mpp
        coarse, neg = label_patches(item, grid, settings.min_coarse_overlap)
        n_in, n_neg = int(coarse.sum()), int(neg.sum())
        out.append(SlidePlan(item.label, len(grid), n_in, n_neg, mpp, g.side_um))
    return out


def embed_slide(
    d: SlideFeatures,
    settings: RefineSettings,
    encoder: Encoder,
    timings: dict[str, float],
    progress: bool | ProgressFactory = True,
) -> None:
    """Embed a slide's grid and store grid and features in the cache."""
    t0 = time.perf_counter()
    with open_slide(d.item) as slide:
        d.features = embed_grid(
            slide,
            d.grid,
            encoder,
            d.grid_settings.patch_px,
            context=settings.features.context,
            progress=progress,
            desc=f"embed {d.item.label}",
            timings=timings,
        )
    store_cached(settings.cache_dir or default_cache_dir(), d.key, d.grid, d.features)
    # The cache keeps float16: use exactly what a later run reads back, so a first run and a
    # re-run from the cache give the same result.
    d.features = d.features.astype(np.float16).astype(np.float32)
    d.seconds += time.perf_counter() - t0


def untrainable(labels: npt.NDArray[np.int8], side_um: float, need: int) -> str | None:
    """Why ``labels`` cannot train a model (fewer than ``need`` patches inside or outside the
    outline), in the user's words, or None."""
    n_in, n_out = int((labels == 1).sum()), int((labels == 0).sum())
    if min(n_in, n_out) >= need:
        return None
    side = f"{side_um:g} µm"
    if n_in < need:
        return (
            f"only {n_in} patches of {side} inside the outline; outline more of the tumour "
            "or choose smaller patches"
        )
    return f"only {n_out} patches of {side} outside the outline; leave more tissue outside it"


def refine(
    items: Sequence[SlideInput],
    settings: RefineSettings = RefineSettings(),
    progress: bool | ProgressFactory = True,
) -> RefineResult:
    """Refine the coarse annotations of ``items`` together.

    Grids (cheap) come first for every slide so that bad input (no tissue, too few patches
    inside or outside) fails in seconds, before any slide is embedded.
    """
    settings = on_device(settings)
    timings = dict.fromkeys(STAGES, 0.0)
    encoder = run_encoder(settings)
    if settings.grid.is_auto and settings.method == "prototype":
        sides = [slide_grid_settings(item, settings).side_um for item in items]
        settings = with_shared_grid(settings, sides)
    data = [slide_grid(item, settings, encoder, timings) for item in items]

    coarse, hard_neg = [], []
    for item, d in zip(items, data, strict=True):
        c, neg = label_patches(item, d.grid, settings.min_coarse_overlap)
        coarse.append(c)
        hard_neg.append(neg)
    all_coarse = np.concatenate(coarse)
    need = settings.classifier.min_per_class
    if min(int((all_coarse == 1).sum()), int((all_coarse == 0).sum())) < need:
        # Nothing on these slides can train a model: every outline comes back as drawn, with
        # the reason, before any slide is embedded ("keep" is an answer, not an error).
        results = [
            kept_result(d, c, hn, untrainable(c, d.grid_settings.side_um, need))
            for d, c, hn in zip(data, coarse, hard_neg, strict=True)
        ]
        return RefineResult(results, None, None, timings)

    embed_all(data, settings, encoder, timings, progress)
    negatives = np.concatenate(hard_neg)
    protos: LocalGlobalPrototypes | None = None
    pl: PseudoLabels | None = None
    if settings.method == "prototype":
        protos, pl = prototype_labels(data, all_coarse, negatives, settings, timings)
    labels = pl.labels if pl is not None else np.where(negatives, 0, all_coarse).astype(np.int8)

    log.info("classifier")
    t0 = time.perf_counter()
    proba, how = run_scores(data, labels, negatives, settings)
    timings["train"] = time.perf_counter() - t0

    log.info("regions")
    t0 = time.perf_counter()
    results = []
    start = 0
    for k, (d, c, hn) in enumerate(zip(data, coarse, hard_neg, strict=True)):
        n = len(d.grid)
        sl = slice(start, start + n)
        results.append(slide_result(d, c, hn, labels[sl], proba[sl], settings, k, how[k]))
        start += n
    timings["regions"] = time.perf_counter() - t0
    return RefineResult(results, protos, pl, timings)


def on_device(settings: RefineSettings) -> RefineSettings:
    """``settings`` validated, with ``device`` resolved (``auto`` -> what this machine has)
    for the run and its classifier."""
    settings.validate()
    device = resolve_device(settings.device)
    if device != "cpu":
        log.info(f"running on {device}")
    return replace(settings, device=device, classifier=replace(settings.classifier, device=device))


def run_encoder(settings: RefineSettings) -> Encoder:
    """The run's encoder on its (resolved) device."""
    return build_encoder(
        settings.features.encoder, settings.cache_dir or default_cache_dir(), settings.device
    )


def embed_all(
    data: Sequence[SlideFeatures],
    settings: RefineSettings,
    encoder: Encoder,
    timings: dict[str, float],
    progress: bool | ProgressFactory,
) -> None:
    """Embed every slide the cache did not hold, saying which came from it."""
    for k, d in enumerate(data, 1):
        if d.features is None:
            log.info(f"[{k}/{len(data)}] embedding {d.item.label} ({len(d.grid)} patches)")
            embed_slide(d, settings, encoder, timings, progress)
        else:
            log.info(f"[{k}/{len(data)}] {d.item.label}: {len(d.grid)} patches from the cache")


def prototype_labels(
    data: Sequence[SlideFeatures],
    coarse: npt.NDArray[np.int8],
    negatives: npt.NDArray[np.bool_],
    settings: RefineSettings,
    timings: dict[str, float],
) -> tuple[LocalGlobalPrototypes, PseudoLabels]:
    """The paper's route: prototype pseudo-labels for the patch classifier. MIL learns from
    the coarse labels themselves: bags drawn from the prototype pseudo-labels lost 0.005-0.04
    Dice against bags from the coarse labels on every benchmark cell."""
    log.info("prototypes")
    t0 = time.perf_counter()
    # the same local and global steps as a cluster's two phases (engine.cluster)
    protos = LocalGlobalPrototypes.from_settings(settings.prototypes).fit(
        [d.embedded() for d in data]
    )
    sim = np.concatenate([protos.similarity(d.embedded(), k) for k, d in enumerate(data)])
    pl = pseudo_labels(sim, coarse, settings.pseudolabels, negatives)
    for w in pl.warnings:
        log.warning(w)
    timings["prototypes"] = time.perf_counter() - t0
    return protos, pl


def run_scores(
    data: Sequence[SlideFeatures],
    labels: npt.NDArray[np.int8],
    negatives: npt.NDArray[np.bool_],
    settings: RefineSettings,
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Every patch's tumour score (0 on the user's negatives) and, per slide, whether its
    model was trained or read from the cache: MIL per slide, or the prototype route's
    classifier cross-fitted over all slides."""
    if settings.method == "mil":
        proba, how = slide_mil_proba([d.embedded() for d in data], labels, negatives, settings)
    else:
        how = [TRAINED] * len(data)
        c = settings.classifier
        groups = np.concatenate(
            [spatial_groups(d.grid, k, c.cross_fit_block) for k, d in enumerate(data)]
        )
        all_feats = np.concatenate([d.embedded() for d in data])
        proba = cross_fit_proba(all_feats, labels, groups, c, negatives)
    proba[negatives] = 0.0
    return proba, how


def slide_result(
    d: SlideFeatures,
    coarse: npt.NDArray[np.int8],
    hard_negative: npt.NDArray[np.bool_],
    labels: npt.NDArray[np.int8],
    proba: npt.NDArray[np.float32],
    settings: RefineSettings,
    k: int,
    classifier: str = TRAINED,
) -> SlideResult:
    """Slide ``k``'s outline from its patch scores (the last stage, one slide);
    ``classifier``: whether the scores were "trained" or "cached"."""
    item = d.item
    few = too_few_to_learn(labels, d, settings)
    confirm = self_test_for(d, settings, k)
    outline = slide_outline(item, d, coarse, proba, settings.regions, kept=few, confirm=confirm)
    regions = without_negative(outline.regions, item)
    verdict = outline_verdict(outline, settings.regions)
    return d.result(
        coarse, hard_negative, labels, proba, outline.labels, regions, verdict, classifier
    )


def refine_one(
    item: SlideInput,
    settings: RefineSettings,
    index: int = 0,
    progress: bool | ProgressFactory = False,
) -> tuple[SlideResult, dict[str, float]]:
    """Refine one slide with its own MIL model, exactly as :func:`refine` refines slide
    ``index`` of a run (same seeds, same result), with the stage timings: the unit of work a
    cluster worker runs (:mod:`engine.cluster`).

    A slide with too few patches inside or outside its outline to train its own model is a
    :class:`TrainingDataError` here: :func:`refine` scores it with a model pooled over all
    slides of the run, which needs them all in one place.
    """
    if settings.method != "mil":
        raise ValueError("one slide at a time is the MIL route (method 'mil') only")
    # Resolved here, on the worker: "auto" means the worker's GPU, not the driver's.
    settings = on_device(settings)
    timings = dict.fromkeys(STAGES, 0.0)
    encoder = run_encoder(settings)
    d = slide_grid(item, settings, encoder, timings)
    coarse, negatives = label_patches(item, d.grid, settings.min_coarse_overlap)
    labels = np.where(negatives, 0, coarse).astype(np.int8)
    few = too_few_to_learn(labels, d, settings)
    if few is not None:
        # In a run of several slides in one process such a slide is scored by a model pooled
        # over all of them; its outline is kept either way, so a worker keeps it unscored.
        return kept_result(d, coarse, negatives, few, timings), timings
    if d.features is None:
        embed_slide(d, settings, encoder, timings, progress)
    t0 = time.perf_counter()
    proba, how = slide_mil_proba([d.embedded()], labels, negatives, settings, first=index)
    proba[negatives] = 0.0
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = slide_result(d, coarse, negatives, labels, proba, settings, index, how[0])
    timings["regions"] = time.perf_counter() - t0
    return result, timings


def outline_verdict(outline: Outline, settings: RegionSettings) -> str:
    """How the result was drawn, for the summary tables."""
    return "from scores" if settings.mode != "edit" else outline.verdict(settings)


def slide_mil_proba(
    features: Sequence[npt.NDArray[np.float32]],
    labels: npt.NDArray[np.int8],
    negatives: npt.NDArray[np.bool_],
    settings: RefineSettings,
    first: int = 0,
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Attention-MIL scores, one model per slide (LCMIL's setting: a slide's own tissue is
    the best reference for what is normal on it), features standardised per slide. A slide
    with too few patches of either label to draw bags from is scored by a model trained on
    the pooled patches of all slides. The user's hard negatives always go in normal bags.
    ``first`` is the run index of ``features[0]``: slide ``k``'s model is seeded by its index
    in the run, so a slide refined on its own matches the same slide refined in a run.
    Scores come from the score cache when nothing they depend on changed
    (:mod:`engine.scores`); also, per slide, whether they were "cached" or "trained"."""
    s = settings.classifier
    cache = settings.cache_dir or default_cache_dir()
    bounds = np.cumsum([len(x) for x in features])[:-1]
    ys = np.split(np.where(negatives, 0, labels), bounds)
    own = [min(int((y == 1).sum()), int((y == 0).sum())) >= s.min_per_class for y in ys]
    digests = [features_digest(x) for x in features]
    pooled: list[npt.NDArray[np.float32]] = []
    pooled_how = TRAINED
    if not all(own):
        p, pooled_how = cached_mil_proba(
            cache,
            combined_digest(digests),
            lambda: np.concatenate([standardise(x) for x in features]),
            np.concatenate(ys),
            s,
            seed=s.random_state * 100 + 99,
        )
        pooled = np.split(p, bounds)
    scores, how = [], []
    for k, (x, y, ok) in enumerate(zip(features, ys, own, strict=True)):
        if ok:
            seed = s.random_state * 100 + first + k
            p, h = cached_mil_proba(cache, digests[k], partial(standardise, x), y, s, seed)
        else:
            p, h = pooled[k], pooled_how
        scores.append(p)
        how.append(h)
    return np.concatenate(scores), how


def spatial_groups(grid: PatchGrid, slide: int, block: int) -> npt.NDArray[np.int64]:
    """A group id per patch: its slide and its ``block`` x ``block`` patch block."""
    bi = grid.ij // max(1, block)
    return (slide * 1_000_000 + bi[:, 1] * 1000 + bi[:, 0]).astype(np.int64)


def too_few_to_learn(
    labels: npt.NDArray[np.int8], d: SlideFeatures, settings: RefineSettings
) -> str | None:
    """Why a slide's own patches cannot train its model (MIL learns per slide), or None.
    Such a slide is scored by the model pooled over all slides, but its outline is kept."""
    if settings.method != "mil":
        return None
    return untrainable(labels, d.grid_settings.side_um, settings.classifier.min_per_class)


def without_negative(regions: shapely.Geometry, item: SlideInput) -> shapely.Geometry:
    """``regions`` less the user's negative regions on the slide (never tumour)."""
    if item.negative is None or item.negative.is_empty:
        return regions
    return valid_polygons(regions.difference(item.negative))


def kept_result(
    d: SlideFeatures,
    coarse: npt.NDArray[np.int8],
    hard_negative: npt.NDArray[np.bool_],
    reason: str | None,
    timings: dict[str, float] | None = None,
) -> SlideResult:
    """Slide ``d`` with no model to score it: its outline as drawn, the verdict saying why,
    and no scores (NaN: the overlay and tiles show none rather than invented ones). The
    seconds it takes count as ``timings["regions"]`` when given."""
    t0 = time.perf_counter()
    item = d.item
    frame = (d.info.width, d.info.height)
    regions = without_negative(valid_polygons(item.coarse, frame), item)
    outline = Outline(regions, coarse, False, None, kept=reason or "no model could be trained")
    nan = np.full(len(d.grid), np.nan, np.float32)
    verdict = outline.verdict(RegionSettings())
    result = d.result(coarse, hard_negative, coarse, nan, coarse, regions, verdict, UNSCORED)
    if timings is not None:
        timings["regions"] += time.perf_counter() - t0
    return result


def self_test_for(
    d: SlideFeatures, settings: RefineSettings, k: int
) -> Callable[[], float | None] | None:
    """The guard's self-test for slide ``k`` (MIL only: it retrains the slide's model), run
    only where its answer changes the outline (:func:`engine.regions.refine_outline`): the
    re-draw of an edited outline that left tumour out (``outside_tested``), the islands or
    uncapped re-draw of an outline re-drawn in ``auto`` mode (loose, left tumour out or
    closed over normal tissue), an edited outline's large islands in ``auto`` or ``edit``
    mode, and with ``near_add_above`` a re-drawn outline's additions across its line. It
    decides them; it answers with its share (None where it cannot run)."""
    r, c = settings.regions, settings.classifier
    if settings.method != "mil" or not r.self_test or d.features is None:
        return None

    def confirm() -> float | None:
        test = cached_self_test(
            settings.cache_dir or default_cache_dir(),
            redraw_self_test,
            d.item.coarse,
            d.grid,
            Derived(standardise, d.embedded()),
            d.info.mpp,
            c,
            r,
            (d.info.width, d.info.height),
            seed=c.random_state * 100 + 50 + k,
        )
        # Asked for several rules (islands, uncapped re-draws, additions across the line), so
        # the line says what the test found and its verdict, not what it is asked for.
        verdict = (
            "could not run"
            if test.recovered is None
            else "passed"
            if test.passed(r.self_test_recovered)
            else "failed"
        )
        log.info(
            "%s: self-test %s (needs %s): took back %s of a %d-patch band added to the outline "
            "and kept %s of the outline (an edit: %s and %s)",
            d.item.label,
            verdict,
            _share(r.self_test_recovered),
            _share(test.recovered),
            test.band_patches,
            _share(test.retained),
            _share(test.edit_recovered),
            _share(test.edit_retained),
        )
        return test.recovered

    return confirm


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def slide_outline(
    item: SlideInput,
    d: SlideFeatures,
    coarse: npt.NDArray[np.int8],
    proba: npt.NDArray[np.float32],
    settings: RegionSettings,
    kept: str | None = None,
    confirm: Callable[[], float | None] | None = None,
) -> Outline:
    frame = (d.info.width, d.info.height)
    if settings.mode == "edit":
        return refine_outline(
            item.coarse, d.grid, proba, coarse, d.info.mpp, settings, frame, confirm, kept
        )
    regions = regions_from_probabilities(d.grid, proba, d.info.mpp, settings, frame=frame)
    return Outline(regions, refined_labels(d.grid, coarse, proba, settings), False, None)
