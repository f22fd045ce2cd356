"""The real-tissue benchmark's quick mode (issue 9's protocol, small) as a test.

Two small slides per benchmark from the TUNING part of the shared data (``--part tune``):
CI runs on every change, and whatever CI checks is what the defaults end up tuned against, so
it must never look at the report part, which is kept for the headline numbers. Coarse
annotations at severe and mild noise (seed 0), three methods on the same cached features: the
coarse outline, the CA classifier and the engine's defaults, one slide per call as
``qupath-refine slide`` runs it, on each benchmark's own grid.

The rule checked on every slide case (issue 9): no slide worse than its coarse outline by more
than 0.03 Dice (the worst of the 12 slide cases at stop 21: 0.000). Margins sit below what
was measured (in brackets: Dice at stop 21, default settings) so that a regression fails:

* severe noise, engine >= coarse + margin and >= CA + margin: gland level (coarse 0.625, CA
  0.634, engine 0.664), region (0.748, 0.757, 0.781), WSSS4LUAD (0.573, 0.573, 0.584: both
  outlines edited and cut only where surely normal; stop 20, which did not cut them, 0.573;
  stop 18, which cut them below 0.4, 0.609);
* mild noise, engine >= coarse - 0.01 (issue 4's "never worse"): gland level (0.844 -> 0.844),
  region (0.961 -> 0.961), WSSS4LUAD (0.679 -> 0.686).

Slides and features are kept between runs in ``benchmarks/results/tmp`` (git-ignored; the
folder ``python -m benchmarks.run --quick`` uses) or ``$QUPATH_REFINE_BENCH_WORK``: with them
warm the module took 79 s on 2 cores at 12db4e6 (load about 1: the suite 56 s, the CLI
cell's subprocess 23 s); cold, slides are built and embedded first (about two minutes more).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GLAS, REPO, SHARED_DATA, need

WORK = Path(os.environ.get("QUPATH_REFINE_BENCH_WORK", REPO / "benchmarks" / "results" / "tmp"))
BENCHES = ("glas-gland", "region", "wsss4luad")
# benchmark, Dice margin of the engine over coarse, over the CA classifier (severe noise).
# Re-draws add tissue outside the outline only on the edit's evidence (issue 9), so at gland
# and region level on these small tuning slides the gains are those of careful edits.
# WSSS4LUAD: both small slides' severe outlines have rims that do not look loose, so they are
# cut only where the scores are sure (below 0.3; BENCHMARKS.md, issue 9, "edited outlines").
SEVERE = [("glas-gland", 0.01, 0.0), ("region", 0.01, 0.0), ("wsss4luad", 0.005, 0.005)]


def quick_specs():
    from benchmarks import harness as H

    return {b: H.part_spec(replace(H.BENCHMARKS[b], small=True), "tune", 2) for b in BENCHES}


@pytest.fixture(scope="module")
def quick():
    need(GLAS / "Grade.csv")
    need(SHARED_DATA / "wsss4luad-val" / "img")
    from benchmarks import harness as H

    cfg = H.SuiteConfig(
        data_root=SHARED_DATA,
        work=WORK,
        benchmarks=quick_specs(),
        levels=("severe", "mild"),
        seeds=(0,),
        encoders=(H.DEFAULT_ENCODER,),
        methods=("coarse", "ca", "engine"),
        log=lambda msg: None,
        throughput=False,
        grids=("benchmark",),
        part="tune",
    )
    return H.run_suite(cfg)


def cell(results, bench: str, level: str, method: str) -> dict:
    return results["benchmarks"][bench]["encoders"]["lite0"]["levels"][level]["methods"][method]


def dice(results, bench: str, level: str, method: str) -> float:
    return cell(results, bench, level, method)["dice"]["mean"]


@pytest.mark.parametrize("level", ["mild", "severe"])
@pytest.mark.parametrize("bench", BENCHES)
def test_no_slide_worse_than_its_coarse_outline_by_more_than_003(quick, bench, level):
    eng = cell(quick, bench, level, "engine")
    cases = eng["slide_cases"]
    assert len(cases) == 2 and all(c["slide"].startswith(f"{bench}-tune-") for c in cases)
    # the per-slide Δ is the slide's own refined - coarse Dice
    coarse = {c["slide"]: c["dice"] for c in cell(quick, bench, level, "coarse")["slide_cases"]}
    for c in cases:
        assert c["delta"] == pytest.approx(c["dice"] - coarse[c["slide"]], abs=1e-12)
    assert eng["worst"]["delta"] == min(c["delta"] for c in cases)
    assert eng["worst"]["delta"] >= -0.03, f"{bench} {level}: {cases}"
    assert eng["n_worse"] == sum(c["delta"] < -0.02 for c in cases)
    assert sum(eng["verdicts"].values()) == 2


@pytest.mark.parametrize("bench, over_coarse, over_ca", SEVERE)
def test_engine_beats_coarse_and_ca_at_severe_noise(quick, bench, over_coarse, over_ca):
    c, ca, ours = (dice(quick, bench, "severe", m) for m in ("coarse", "ca", "engine"))
    assert ours >= c + over_coarse, f"{bench}: coarse {c:.3f}, engine {ours:.3f}"
    assert ours >= ca + over_ca, f"{bench}: CA {ca:.3f}, engine {ours:.3f}"


def test_edited_outlines_are_cut_only_where_surely_normal(quick):
    """Outlines whose rims do not look loose are edited, and cut only where the scores are
    sure, unless their slide scores tumour away from them. WSSS4LUAD, severe noise: both
    outlines take in normal tissue that scores below 0.3; both are cut there and gain.
    Region level, severe noise: one outline's rim does not look loose, but its slide scores
    tumour well away from it (it left tumour out): it is re-drawn, says why, and gains
    (until stop 24 it was edited, its normal-scoring regions left in and counted)."""
    wsss = cell(quick, "wsss4luad", "severe", "engine")
    assert sum(wsss["verdicts"].values()) == 2
    assert all(v.startswith("edited") for v in wsss["verdicts"]), wsss["verdicts"]
    assert all(c["delta"] > 0 for c in wsss["slide_cases"]), wsss["slide_cases"]
    region = cell(quick, "region", "severe", "engine")
    outside = [c for c in region["slide_cases"] if c["outline"] == "re-drawn (tumour outside)"]
    assert len(outside) == 1, region["verdicts"]
    assert outside[0]["delta"] > 0.01, outside


@pytest.mark.parametrize("bench", BENCHES)
def test_engine_not_worse_at_mild_noise(quick, bench):
    c, ours = dice(quick, bench, "mild", "coarse"), dice(quick, bench, "mild", "engine")
    assert ours >= c - 0.01, f"{bench}: coarse {c:.3f}, engine {ours:.3f}"


def test_quick_results_render_with_worst_slide_and_count(quick):
    from benchmarks.run import render

    level = quick["benchmarks"]["region"]["encoders"]["lite0"]["levels"]["severe"]
    assert set(level["targets"]) >= {"never_worse", "worst_slide", "better", "above_ca"}
    text = render(quick, "python -m benchmarks.run --quick")
    assert "| region | 80 µm | severe |" in text and "/2 |" in text
    assert "Part **tune**" in text and ("PASS" in text or "MISS" in text)


def test_cli_slide_gives_the_harness_engine_dice(tmp_path):
    """The CLI cell: `qupath-refine slide` at its defaults in a subprocess, on a small tuning
    slide, gives the Dice the harness records for the engine at the CLI default grid."""
    need(GLAS / "Grade.csv")
    from benchmarks import harness as H

    spec = quick_specs()["region"]
    slides = H.build_cohort(SHARED_DATA, WORK, spec)
    enc = H.ENCODERS[H.DEFAULT_ENCODER]
    cohort = H.load_cohort(slides, spec, enc, WORK / "cache")
    case = H.make_case(cohort, "severe", 0, "default")
    got = H.cli_cell(case, 0, tmp_path)
    assert "--patch-um" not in got["command"]
    assert got["cli_patches"] == got["harness_patches"] > 0
    assert got["cli_dice"] == pytest.approx(got["harness_dice"], abs=1e-6)
    assert got["cli_outline"] == got["harness_outline"]
    # a different outline would score differently: the check can fail
    other = H.evaluate(case, case.coarse)["slides"][0]["dice"]
    assert abs(other - got["cli_dice"]) > 1e-6 or got["harness_outline"].startswith("kept")


# --------------------------------------------------------------------------- harness pieces


def test_parts_share_no_patient_image_or_seed():
    need(GLAS / "Grade.csv")
    from benchmarks import harness as H
    from benchmarks.slides import read_glas_grades

    tune, report = H.PARTS["tune"], H.PARTS["report"]
    patients = H.glas_patients(GLAS)
    grades = read_glas_grades(GLAS)
    g_tune, g_report = (H.part_crops(SHARED_DATA, "glas-gland", p) for p in (tune, report))
    assert sorted(g_tune + g_report) == sorted(grades)
    assert not {patients[c] for c in g_tune} & {patients[c] for c in g_report}
    for crops in (g_tune, g_report):  # grades balanced: 24 malignant of 42 or 43
        assert abs(sum(grades[c] for c in crops) - len(crops) * 48 / 85) <= 1
    w_tune, w_report = (H.part_crops(SHARED_DATA, "wsss4luad", p) for p in (tune, report))
    assert w_tune and w_report and not set(w_tune) & set(w_report)
    # builder and coarse-annotation seeds: 3 slides x 5 run seeds never meet
    assert tune.slide_seed + 100 <= report.slide_seed
    tune_spec = H.part_spec(H.BENCHMARKS["region"], "tune")
    report_spec = H.part_spec(H.BENCHMARKS["region"], "report")
    seeds_t = {H.coarse_seed(tune_spec, s) for s in range(100)}
    assert not seeds_t & {H.coarse_seed(report_spec, s) for s in range(100)}


def test_glas_folds_are_disjoint_whole_patients_with_both_grades():
    data = need(GLAS / "Grade.csv").parent
    from benchmarks.harness import glas_folds, glas_patients
    from benchmarks.slides import read_glas_grades

    folds = glas_folds(data, 3)
    grades, patients = read_glas_grades(data), glas_patients(data)
    assert sorted(c for f in folds for c in f) == sorted(grades)
    owners = [{patients[c] for c in f} for f in folds]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    for f in folds:
        assert sum(grades[c] for c in f) >= 6 and sum(not grades[c] for c in f) >= 6


def test_knn_cleaning_relabels_isolated_noise():
    from benchmarks.harness import knn_clean

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.3, (60, 40)), rng.normal(3, 0.3, (60, 40))])
    y = np.r_[np.zeros(60), np.ones(60)].astype(np.int8)
    noisy = y.copy()
    noisy[[3, 70]] = 1 - noisy[[3, 70]]
    assert np.array_equal(knn_clean(x, noisy, k=5), y)
