"""The score cache: an unchanged re-run skips training and writes what the cold run wrote; a
changed outline or seed retrains; a damaged or unwritable entry costs time, never the result.

Runs the `slide` command on a real-tissue slide (GlaS texture, built like the benchmark's)
with real torch training. The stain-texture encoder keeps embedding to a second: what is
cached here is the classifier, whatever the features.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from benchmarks.slides import RegionSlideSettings, region_slide, write_coarse
from engine.classifier import ClassifierSettings, MilSettings
from engine.scores import load_scores, score_key
from qupath_bridge.cli import main
from qupath_bridge.geojson_io import annotation_features, write_features

GLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glas-train"


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 1.6 x 1.1 mm region slide of real H&E texture (about 400 patches of 64 µm) and a
    moderately coarse outline of its tumour."""
    if not (GLAS / "Grade.csv").is_file():
        pytest.skip(f"GlaS crops not found at {GLAS} (the shared real-tissue data)")
    d = tmp_path_factory.mktemp("score-cache")
    s = region_slide(GLAS, d, 0, RegionSlideSettings(size_um=(1600.0, 1100.0), n_blobs=4))
    geom, coarse = write_coarse(s, "moderate", 0)
    return s, coarse, geom


def refine(slide, coarse: Path, out: Path, cache: Path, *extra: str, quiet: bool = True):
    args = [slide.path, "--coarse", coarse, "--out", out, "--cache-dir", cache]
    args += ["--patch-um", "64", "--encoder", "stain-texture", "--device", "cpu", *extra]
    args += ["-q"] if quiet else []
    r = CliRunner().invoke(main, [str(a) for a in ["slide", *args]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r, json.loads((out / "summary.json").read_text())


def without_ids(path: Path) -> dict:
    """A GeoJSON's content without its feature ids (random UUIDs, new on every run)."""
    d = json.loads(path.read_bytes())
    for f in d["features"]:
        f.pop("id", None)
    return d


def assert_same_outputs(a: Path, b: Path, stem: str) -> None:
    assert (a / f"{stem}.overlay.png").read_bytes() == (b / f"{stem}.overlay.png").read_bytes()
    name = f"{stem}.refined.geojson"
    assert without_ids(a / name) == without_ids(b / name)


@pytest.fixture(scope="module")
def cold(slide, tmp_path_factory):
    """The first run: features embedded, the model trained; its output folder and cache."""
    s, coarse, _ = slide
    d = tmp_path_factory.mktemp("cold")
    _, summary = refine(s, coarse, d / "out", d / "cache")
    row = summary["slides"][0]
    assert row["cached"] is False and row["classifier"] == "trained"
    assert summary["timings"]["train"] > 0
    assert len(list((d / "cache" / "scores").glob("*.npz"))) == 1
    return d / "out", d / "cache", summary


def test_unchanged_rerun_skips_training_and_writes_the_cold_runs_outputs(slide, cold, tmp_path):
    s, coarse, _ = slide
    cold_out, cache, first = cold
    _, summary = refine(s, coarse, tmp_path / "out", cache)
    row = summary["slides"][0]
    assert row["cached"] is True and row["classifier"] == "cached"
    assert_same_outputs(cold_out, tmp_path / "out", s.name)
    for key in ("refined_mm2", "relabelled", "outline", "regions", "patches"):
        assert row[key] == first["slides"][0][key], key


def test_changed_outline_or_seed_retrains(slide, cold, tmp_path):
    s, coarse, geom = slide
    _, cache, _ = cold
    cache = shutil.copytree(cache, tmp_path / "cache")
    # An edit that moves patches in or out of the outline: a new model.
    edited = write_features(
        tmp_path / "edited.geojson", annotation_features(geom.buffer(60), "Tumor")
    )
    _, summary = refine(s, edited, tmp_path / "edited", cache)
    assert summary["slides"][0]["classifier"] == "trained"
    assert summary["slides"][0]["cached"] is True  # the features were not embedded again
    _, summary = refine(s, coarse, tmp_path / "seed1", cache, "--seed", "1")
    assert summary["slides"][0]["classifier"] == "trained"
    # Both now cached too; and the retrained result is the one a cold run gives.
    _, summary = refine(s, edited, tmp_path / "edited-again", cache)
    assert summary["slides"][0]["classifier"] == "cached"
    _, summary = refine(s, edited, tmp_path / "edited-cold", tmp_path / "cold-cache")
    assert summary["slides"][0]["classifier"] == "trained"
    assert_same_outputs(tmp_path / "edited", tmp_path / "edited-cold", s.name)
    assert_same_outputs(tmp_path / "edited", tmp_path / "edited-again", s.name)


def test_an_edit_that_moves_no_patch_label_reuses_the_scores(slide, cold, tmp_path):
    s, coarse, geom = slide
    _, cache, _ = cold
    nudged = write_features(
        tmp_path / "nudged.geojson",
        annotation_features(shapely.affinity.translate(geom, 0.5, 0.0), "Tumor"),
    )
    _, summary = refine(s, nudged, tmp_path / "out", shutil.copytree(cache, tmp_path / "cache"))
    assert summary["slides"][0]["classifier"] == "cached"


DAMAGE = {
    "empty": lambda b: b"",
    "truncated": lambda b: b[: len(b) // 2],
    "bit flip": lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1 :],
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_entry_is_deleted_with_one_warning_and_retrained(kind, slide, cold, tmp_path):
    s, coarse, _ = slide
    cold_out, cache, _ = cold
    cache = shutil.copytree(cache, tmp_path / "cache")
    (entry,) = (cache / "scores").glob("*.npz")
    n = cold[2]["slides"][0]["patches"]
    assert load_scores(cache, entry.stem, n) is not None
    good = entry.read_bytes()
    entry.write_bytes(DAMAGE[kind](good))
    r, summary = refine(s, coarse, tmp_path / "out", cache)
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "score cache entry" in warnings[0], r.output
    assert "is damaged" in warnings[0]
    assert summary["slides"][0]["classifier"] == "trained"
    assert_same_outputs(cold_out, tmp_path / "out", s.name)
    assert entry.read_bytes() == good  # rewritten, whole
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_an_unwritable_score_cache_is_a_warning(slide, cold, tmp_path):
    s, coarse, _ = slide
    cold_out, cache, _ = cold
    cache = shutil.copytree(cache, tmp_path / "cache", ignore=shutil.ignore_patterns("scores"))
    (cache / "scores").write_text("a file where the folder should be")
    r, summary = refine(s, coarse, tmp_path / "out", cache)
    assert "warning: could not write the score cache" in r.output
    assert summary["slides"][0]["classifier"] == "trained"
    assert_same_outputs(cold_out, tmp_path / "out", s.name)


def test_the_key_follows_everything_the_scores_depend_on():
    y = np.r_[np.ones(50), np.zeros(50)].astype(np.int8)
    s = ClassifierSettings()
    base = score_key("f" * 64, y, s, 0)
    changed = [
        score_key("e" * 64, y, s, 0),  # other features
        score_key("f" * 64, y[::-1], s, 0),  # other labels
        score_key("f" * 64, y, s, 1),  # other seed
        score_key("f" * 64, y, replace(s, device="cuda:0"), 0),
        score_key("f" * 64, y, replace(s, focal_gamma=1.0), 0),
        score_key("f" * 64, y, replace(s, mil=MilSettings(epochs=4)), 0),
    ]
    assert len({base, *changed}) == 1 + len(changed)
    # The same kind of device, another index: the same scores.
    a = score_key("f" * 64, y, replace(s, device="cuda:0"), 0)
    assert a == score_key("f" * 64, y, replace(s, device="cuda:1"), 0)


def test_the_guards_self_test_is_cached_too(tmp_path):
    """A loose outline (one of three tumour blobs, dilated by 40 µm) makes the guard run its
    self-test, which decides whether the blobs it missed are added and trains the slide's
    model again: a re-run reuses its result as well; a damaged entry is one warning and the
    same result."""
    if not (GLAS / "Grade.csv").is_file():
        pytest.skip(f"GlaS crops not found at {GLAS} (the shared real-tissue data)")
    s = region_slide(GLAS, tmp_path, 3, RegionSlideSettings(size_um=(1600.0, 1100.0), n_blobs=4))
    first_blob = shapely.get_parts(s.truth)[0]
    loose = first_blob.buffer(40 / s.mpp).intersection(shapely.box(0, 0, *s.size))
    coarse = write_features(tmp_path / "loose.geojson", annotation_features(loose, "Tumor"))
    cache = tmp_path / "cache"
    r, first = refine(s, coarse, tmp_path / "a", cache, quiet=False)
    assert "self-test passed (needs 50%): took back " in r.output, r.output
    assert first["slides"][0]["outline"] == "re-drawn (loose), 1 region added away from the outline"
    (entry,) = (cache / "self-tests").glob("*.npz")
    written = entry.stat().st_mtime_ns
    r, again = refine(s, coarse, tmp_path / "b", cache, quiet=False)
    assert again["slides"][0]["classifier"] == "cached"
    # the guard still decides, from the cached test
    assert "self-test passed (needs 50%): took back " in r.output
    assert entry.stat().st_mtime_ns == written  # read, not run and written again
    assert again["slides"][0]["outline"] == first["slides"][0]["outline"]
    assert_same_outputs(tmp_path / "a", tmp_path / "b", s.name)
    entry.write_bytes(entry.read_bytes()[:100])
    r, _ = refine(s, coarse, tmp_path / "c", cache)
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "self-test cache entry" in warnings[0], r.output
    assert_same_outputs(tmp_path / "a", tmp_path / "c", s.name)
