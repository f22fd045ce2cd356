"""Real-tissue regression: refinement must beat the coarse annotation where the features
support it and must not make a good one worse.

Slides are built from real H&E (GlaS, ../shared/data/glas-train) by benchmarks.slides and
coarse annotations simulated at the benchmark's noise levels. Margins are below what was
measured (in brackets, 2-core CPU, default settings) so that a real regression fails:

* region-level slide (malignant GlaS texture in random blobs), severe noise, seed 0: the
  guard judges the outline loose, its self-test agrees, and it is re-drawn with islands
  (tumour blobs the outline missed), large ones drawn out to the scores' 0.6 line, where
  they merge into 1 region, refined >= coarse + 0.13 (0.727 -> 0.887; 0.888 with the lines
  drawn on one cell's smoothing, stop 26; 0.825 with 3
  islands drawn on their 0.75 line, stop 17-25; 0.787 without the islands; with re-draws
  adding tissue above 0.6 instead of the edit's 0.8 next to the outline it was +0.10, at a
  cost of up to 0.067 on single tuning slides);
  moderate noise: the outline left out tumour blobs (moderate noise omits 15% of them) and
  the slide scores tumour well away from it, so although its rim does not look loose it is
  re-drawn (stop 24), >= coarse + 0.03 (0.787 -> 0.838, +0.051; 0.843 before stop 32, drawn
  on 0.75 cells' smoothing since stop 27; +0.018 on one cell's); the 3 regions away from it
  that score as tumour are not added, as this slide fails the guard's self-test, and since
  stop 32 the re-draw takes in 0.021 mm² of tissue continuing its tumour across the line
  above 0.7, as such a slide's does (here it costs 0.005). Here the
  re-draw gains about 0.03 on stop 23's edit (0.813, +0.026; with the issue-4 edit thresholds,
  add above 0.7, +0.100, at a cost of up to 0.04 on single tuning slides at mild noise); on
  one cell's smoothing it cost 0.008, one of the few cases where re-drawing such an outline
  did (BENCHMARKS.md, issue 9, stop 24);
* gland-level GlaS mosaic, severe noise, seed 1: edited, refined >= coarse + 0.01 (0.654 ->
  0.667; 0.666 on one cell's smoothing, stop 26; 0.669 when edits also cut below 0.4): its
  rim is not loose, so it is cut only below 0.3, which none of the 3 regions inside that
  score as normal reaches (2 on one cell's smoothing): they are left in and the verdict
  counts them;
* gland-level GlaS mosaic, mild noise, seed 0: no edit is confident enough, and the summary
  says so ("unchanged (no confident edit)"), refined >= coarse - 0.01: a good annotation is
  not made worse.

And one WSSS4LUAD-like slide (CI's second small slide, from the tuning part's images; 16 µm),
moderate noise, seed 0: the outline's rim does not look loose and it left no tumour out, but
it closed over normal tissue (3.3 patches deep along it, the bar 1.5), so it is re-drawn and
says why (stop 28), refined >= coarse + 0.015 (0.679 -> 0.703; without the rule the outline is
left unchanged, one region inside counted, +0.000).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest

from engine.metrics import pixel_metrics
from engine.patches import GridSettings
from engine.pipeline import RefineSettings, SlideInput, refine
from tests.conftest import GLAS, need

CASES = [
    # kind, patch µm, noise, seed, required gain over coarse Dice, the guard's verdict (A: an
    # area, which the test does not pin), the self-test's verdict in the log (None: not asked)
    (
        "region", 80.0, "severe", 0, 0.13,
        "re-drawn (loose), 1 region added away from the outline", "passed",
    ),
    (
        "region", 80.0, "moderate", 0, 0.03,
        "re-drawn (tumour outside; no islands: self-test not passed), extended across its line "
        "by A mm²", "failed",
    ),
    ("glas", 40.0, "severe", 1, 0.01, "edited; 3 regions inside scored normal, not cut", None),
    ("glas", 40.0, "mild", 0, -0.01, "unchanged (no confident edit)", None),
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_slides(tmp_path_factory):
    from benchmarks.slides import glas_mosaic, region_slide

    data = need(GLAS)
    out = tmp_path_factory.mktemp("bench")
    return {"glas": glas_mosaic(data, out, 0), "region": region_slide(data, out, 0)}


@pytest.mark.parametrize("kind, patch_um, level, seed, gain, outline, tested", CASES)
def test_refined_beats_coarse_on_real_tissue(
    bench_slides, cache_dir, caplog, kind, patch_um, level, seed, gain, outline, tested
):
    from benchmarks.slides import simulate_coarse, thumbnail_tissue

    slide = bench_slides[kind]
    coarse = simulate_coarse(slide.truth, slide.tissue, level, seed, slide.mpp, frame=slide.size)
    settings = RefineSettings(cache_dir=cache_dir)
    settings = replace(settings, grid=GridSettings(patch_um=patch_um))
    with caplog.at_level(logging.INFO, logger="qupath_refine"):
        result = refine([SlideInput(slide.path, coarse)], settings, progress=False)
    tissue, ds = thumbnail_tissue(slide.path)
    before = pixel_metrics(coarse, slide.truth, tissue, ds)["dice"]
    after = pixel_metrics(result.slides[0].regions, slide.truth, tissue, ds)["dice"]
    assert after >= before + gain, (
        f"{kind} {level} s{seed}: coarse {before:.3f}, refined {after:.3f}"
    )
    pattern = re.escape(outline).replace("A", r"[\d.]+")
    assert re.fullmatch(pattern, result.slides[0].outline), result.slides[0].outline
    # The log says what the self-test found, whatever rule asked for it.
    said = [m for m in caplog.messages if ": self-test " in m]
    if tested is None:
        assert said == []
    else:
        assert len(said) == 1 and f": self-test {tested} (needs 50%): took back " in said[0], said


def test_an_outline_closed_over_normal_tissue_is_redrawn_on_real_tissue(tmp_path, cache_dir):
    from benchmarks import harness as H
    from benchmarks.slides import simulate_coarse, thumbnail_tissue
    from tests.conftest import SHARED_DATA

    need(SHARED_DATA / "wsss4luad-val" / "img")
    spec = H.part_spec(replace(H.BENCHMARKS["wsss4luad"], small=True), "tune", 2)
    slide = H.build_part_cohort(SHARED_DATA, tmp_path, spec)[1]
    seed = H.PARTS["tune"].coarse_seed
    coarse = simulate_coarse(slide.truth, slide.tissue, "moderate", seed, slide.mpp, slide.size)
    settings = replace(RefineSettings(cache_dir=cache_dir), grid=GridSettings(patch_um=16.0))
    result = refine([SlideInput(slide.path, coarse)], settings, progress=False)
    tissue, ds = thumbnail_tissue(slide.path)
    before = pixel_metrics(coarse, slide.truth, tissue, ds)["dice"]
    after = pixel_metrics(result.slides[0].regions, slide.truth, tissue, ds)["dice"]
    assert result.slides[0].outline == "re-drawn (normal inside)"
    assert after >= before + 0.015, f"coarse {before:.3f}, refined {after:.3f}"
