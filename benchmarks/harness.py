"""The real-tissue benchmark harness (issue 4): every method on the same patches and features.

This module is the harness's front door: it re-exports the names of the modules that do the
work, so ``from benchmarks import harness as H`` (``benchmarks.run``, ``benchmarks.tune_guard``,
the tests) keeps working. Each job has its own module:

:mod:`benchmarks.cohorts`     the benchmarks (``BENCHMARKS``), the two parts of the shared data
                              (``PARTS``), building a benchmark's slides, and a *cohort*: those
                              slides with grids and features for one encoder (``ENCODERS``),
                              embedded once through the engine's feature cache.
:mod:`benchmarks.cases`       a *case*: one seeded draw of coarse annotations over a cohort at one
                              noise level, on one grid (``GRIDS``), and the engine's run on it.
:mod:`benchmarks.methods`     every method (``METHODS``, candidate changes in ``VARIANTS``): a
                              small function of a case that returns one region geometry per slide.
:mod:`benchmarks.evaluation`  :func:`evaluate` (the paper's eight metrics, pixel level inside
                              tissue), the CLI cross-check :func:`cli_cell`, aggregation over
                              seeds and slide cases, and the targets of issues 4 and 9.
:mod:`benchmarks.memory`      :class:`PeakRSS`, a method's peak memory.
:mod:`benchmarks.throughput`  encoder patches/s.
:mod:`benchmarks.suite`       :func:`run_suite` (every benchmark x encoder x grid x noise level x
                              seed x method) and the results file (:func:`write_json`).

Imports run one way: cohorts <- cases <- methods, evaluation <- suite (memory and throughput
beside them).
"""

from __future__ import annotations

from benchmarks.cases import (
    DEFAULT_GRID_METHODS,
    GRIDS,
    Case,
    EngineSlide,
    coarse_seed,
    engine_one_slide,
    make_case,
    run_engine,
)
from benchmarks.cohorts import (
    BENCHMARKS,
    DEFAULT_ENCODER,
    ENCODERS,
    PART_SLIDES,
    PARTS,
    QUICK_BENCHMARKS,
    BenchmarkSpec,
    Cohort,
    EncoderSpec,
    Part,
    SlideTruth,
    build_cohort,
    build_part_cohort,
    cli_default_settings,
    glas_folds,
    glas_patients,
    load_cohort,
    part_crops,
    part_spec,
    part_summary,
    refine_settings,
    slide_features,
    slide_truth,
    truth_labels_of,
)
from benchmarks.evaluation import (
    BASELINES,
    NEVER_WORSE,
    PART_NEVER_WORSE,
    REPO,
    TARGET_GAIN,
    WORSE_BY,
    WORST_SLIDE,
    MethodRun,
    aggregate,
    cli_cell,
    evaluate,
    mean_std,
    slide_cases,
    targets,
)
from benchmarks.memory import (
    PeakRSS,
)
from benchmarks.methods import (
    COARSE_FREE,
    KNN_COMPONENTS,
    KNN_K,
    MAIN_METHODS,
    METHODS,
    PAPER_STEPS,
    PAPER_TAU,
    PER_ENCODER,
    VARIANTS,
    LcmilSettings,
    PlainClassifier,
    ca,
    ceiling,
    ceiling_insample,
    classifier_settings,
    coarse,
    engine_defaults,
    engine_prototype,
    fit_predict,
    knn,
    knn_clean,
    lcmil,
    oracle,
    paper_pseudo_labels,
    paper_step,
    replace_regions,
)
from benchmarks.slides import NOISE_LEVELS
from benchmarks.suite import (
    SuiteConfig,
    machine,
    run_level,
    run_method,
    run_suite,
    slide_record,
    write_json,
)
from benchmarks.throughput import (
    best_throughput,
    encoder_throughput,
    remeasure_throughput,
)

__all__ = [
    "BenchmarkSpec",
    "BENCHMARKS",
    "QUICK_BENCHMARKS",
    "glas_patients",
    "glas_folds",
    "Part",
    "PARTS",
    "PART_SLIDES",
    "part_crops",
    "part_summary",
    "part_spec",
    "build_part_cohort",
    "build_cohort",
    "EncoderSpec",
    "ENCODERS",
    "DEFAULT_ENCODER",
    "SlideTruth",
    "Cohort",
    "refine_settings",
    "cli_default_settings",
    "slide_truth",
    "slide_features",
    "truth_labels_of",
    "load_cohort",
    "GRIDS",
    "DEFAULT_GRID_METHODS",
    "EngineSlide",
    "Case",
    "coarse_seed",
    "make_case",
    "engine_one_slide",
    "run_engine",
    "replace_regions",
    "classifier_settings",
    "PlainClassifier",
    "fit_predict",
    "coarse",
    "ca",
    "KNN_K",
    "KNN_COMPONENTS",
    "knn_clean",
    "knn",
    "LcmilSettings",
    "lcmil",
    "PAPER_STEPS",
    "PAPER_TAU",
    "paper_pseudo_labels",
    "paper_step",
    "engine_defaults",
    "engine_prototype",
    "oracle",
    "ceiling",
    "ceiling_insample",
    "METHODS",
    "VARIANTS",
    "MAIN_METHODS",
    "COARSE_FREE",
    "PER_ENCODER",
    "evaluate",
    "REPO",
    "cli_cell",
    "MethodRun",
    "mean_std",
    "WORSE_BY",
    "slide_cases",
    "aggregate",
    "TARGET_GAIN",
    "NEVER_WORSE",
    "BASELINES",
    "PART_NEVER_WORSE",
    "WORST_SLIDE",
    "targets",
    "PeakRSS",
    "encoder_throughput",
    "best_throughput",
    "remeasure_throughput",
    "run_method",
    "SuiteConfig",
    "machine",
    "run_level",
    "run_suite",
    "slide_record",
    "write_json",
    "NOISE_LEVELS",
]
