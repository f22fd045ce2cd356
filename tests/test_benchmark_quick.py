"""The real-tissue benchmark's quick mode (``python -m benchmarks.run --quick``) as a test.

Two small slides per benchmark built from GlaS (gland-level mosaics, 40 µm patches; region
slides, 80 µm), coarse annotations at severe and mild noise (seed 0), and three methods on the
same cached features: the coarse outline, the CA classifier (the paper's baseline: a classifier
trained on the coarse labels, regions from its probabilities) and the engine's defaults.
Margins sit below what was measured (in brackets: Dice, 2-core AMD EPYC, default settings) so
that a regression fails:

* severe noise, engine >= coarse + margin and >= CA + margin:
  region (coarse 0.745, CA 0.753, engine 0.790) and gland level (0.636, 0.635, 0.699); without
  the guard that re-draws loose outlines the engine reached 0.770 and 0.665, below these margins;
* mild noise, engine >= coarse - 0.01 (issue 4's "never worse"): region (0.961 -> 0.961) and
  gland level (0.849 -> 0.840).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import GLAS, SHARED_DATA, need

# benchmark, Dice margin of the engine over coarse, over the CA classifier (severe noise)
SEVERE = [("region", 0.03, 0.025), ("glas-gland", 0.04, 0.04)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, cache_dir):
    need(GLAS / "Grade.csv")
    from benchmarks import harness as H

    cfg = H.SuiteConfig(
        data_root=SHARED_DATA,
        work=tmp_path_factory.mktemp("bench-quick"),
        benchmarks=H.QUICK_BENCHMARKS,
        levels=("severe", "mild"),
        seeds=(0,),
        encoders=(H.DEFAULT_ENCODER,),
        methods=("coarse", "ca", "engine"),
        log=lambda msg: None,
        cache=cache_dir,
        throughput=False,
    )
    return H.run_suite(cfg)


def dice(results, bench: str, level: str, method: str) -> float:
    cell = results["benchmarks"][bench]["encoders"]["lite0"]["levels"][level]["methods"]
    return cell[method]["dice"]["mean"]


@pytest.mark.parametrize("bench, over_coarse, over_ca", SEVERE)
def test_engine_beats_coarse_and_ca_at_severe_noise(quick, bench, over_coarse, over_ca):
    c, ca, ours = (dice(quick, bench, "severe", m) for m in ("coarse", "ca", "engine"))
    assert ours >= c + over_coarse, f"{bench}: coarse {c:.3f}, engine {ours:.3f}"
    assert ours >= ca + over_ca, f"{bench}: CA {ca:.3f}, engine {ours:.3f}"


@pytest.mark.parametrize("bench", ["region", "glas-gland"])
def test_engine_not_worse_at_mild_noise(quick, bench):
    c, ours = dice(quick, bench, "mild", "coarse"), dice(quick, bench, "mild", "engine")
    assert ours >= c - 0.01, f"{bench}: coarse {c:.3f}, engine {ours:.3f}"


def test_quick_results_render_and_judge_targets(quick):
    from benchmarks.run import markdown

    level = quick["benchmarks"]["region"]["encoders"]["lite0"]["levels"]["severe"]
    assert set(level["targets"]) >= {"never_worse", "better", "above_ca"}
    text = markdown(quick, "python -m benchmarks.run --quick")
    assert "| region | severe |" in text and ("PASS" in text or "MISS" in text)


# --------------------------------------------------------------------------- harness pieces


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
