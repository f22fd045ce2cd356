"""benchmarks.compare_encoders on a real part run (the committed tuning-part results of Lite0):
the encoder table lines up slide cases and seeds, and a candidate is judged by the rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.compare_encoders import compare

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "benchmarks" / "results" / "tune-guard3.json"


def _as_candidate(results: dict, name: str, seeds: list[int], shift: float) -> dict:
    """The same run as if a candidate encoder ``name`` had run on ``seeds`` only, its engine
    Dice (per seed and per slide case) moved by ``shift``."""
    out = copy.deepcopy(results)
    out["config"]["encoder_seeds"] = seeds
    keep = [results["config"]["seeds"].index(s) for s in seeds]
    for b in out["benchmarks"].values():
        e = b["encoders"].pop("lite0")
        for levels in (e["levels"], e["default_grid"]["levels"]):
            for lv in levels.values():
                for mname, m in lv["methods"].items():
                    d = shift if mname == "engine" else 0.0
                    m["dice_per_seed"] = [m["dice_per_seed"][i] + d for i in keep]
                    m["slide_cases"] = [
                        {**c, "delta": c["delta"] + d}
                        for c in m["slide_cases"]
                        if c["seed"] in seeds
                    ]
        b["encoders"][name] = e
    return out


@pytest.fixture(scope="module")
def tune() -> dict:
    if not TUNE.is_file():
        pytest.skip(f"{TUNE} not found")
    return json.loads(TUNE.read_text())


def test_candidate_on_one_seed_is_compared_on_that_seed(tune: dict, tmp_path: Path) -> None:
    """A one-seed candidate restricts the reference to the same seed: the reference's column
    is then its seed-0 Dice and seed-0 worst slide case, read straight from the run."""
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(_as_candidate(tune, "lite9", [0], 0.01)))
    md = compare([TUNE, cand])
    assert "seeds [0]" in md
    cell = tune["benchmarks"]["region"]["encoders"]["lite0"]["levels"]["severe"]["methods"]
    dice0 = cell["engine"]["dice_per_seed"][0]
    worst0 = min(c["delta"] for c in cell["engine"]["slide_cases"] if c["seed"] == 0)
    row = next(r for r in md.splitlines() if r.startswith("| region | 80 µm | severe |"))
    ref, lite9 = row.split(" | ")[4:6]
    assert ref == f"{dice0:.3f} / {worst0:+.3f} / 0/3"
    assert lite9.startswith(f"{dice0 + 0.01:.3f} / {worst0 + 0.01:+.3f}")
    verdict = next(r for r in md.splitlines() if r.startswith("| lite9 |"))
    assert verdict.endswith("| **yes** |")  # higher gain, worst slide not worse


def test_candidate_with_a_worse_slide_does_not_beat_the_reference(tune: dict, tmp_path: Path):
    worse = _as_candidate(tune, "lite9", [0, 1, 2], 0.01)
    case = worse["benchmarks"]["glas-gland"]["encoders"]["lite9"]["levels"]["mild"]["methods"]
    case["engine"]["slide_cases"][0]["delta"] = -0.05  # one slide lost: gain still higher
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(worse))
    md = compare([TUNE, cand])
    verdict = next(r for r in md.splitlines() if r.startswith("| lite9 |"))
    assert "| -0.050 | 1 |" in verdict and verdict.endswith("| no |")
    gains = [
        float(r.split(" | ")[2])
        for r in md.splitlines()
        if r.startswith(("| lite0 |", "| lite9 |"))
    ]
    assert np.isclose(gains[1] - gains[0], 0.01, atol=1e-4)
