"""Encoder throughput: patches/s of reading + embedding and of the encoder alone, measured
afresh whatever the cache holds, encoders interleaved.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.cohorts import (
    ENCODERS,
    BenchmarkSpec,
    EncoderSpec,
    build_cohort,
    load_cohort,
    refine_settings,
)
from benchmarks.slides import BenchSlide
from engine.encoders import build_encoder
from engine.features import embed_grid
from engine.patches import PatchGrid
from engine.slide import Slide

if TYPE_CHECKING:
    from benchmarks.suite import SuiteConfig


def encoder_throughput(
    slide: BenchSlide,
    grid: PatchGrid,
    spec: BenchmarkSpec,
    enc: EncoderSpec,
    cache_dir: Path,
    n: int = 128,
    repeats: int = 3,
) -> dict[str, float]:
    """Patches/s of reading + embedding ``n`` patches of ``grid`` (context window included:
    two encoder passes per patch), and of the encoder alone; measured afresh whatever the
    cache holds, best of ``repeats`` (the machine is shared: the best is the least disturbed).
    """
    encoder = build_encoder(enc.encoder, cache_dir)
    k = min(n, len(grid))
    sub = PatchGrid(grid.xy[:k], grid.ij[:k], grid.size, grid.stride, grid.tissue[:k], grid.shape)
    patch_px = refine_settings(spec, enc, cache_dir).grid.patch_px
    walls, embeds = [], []
    with Slide(slide.path) as sl:
        encoder.embed(sl.read_patches(sub.xy[:4], sub.size, encoder.input_px or patch_px))
        for _ in range(repeats):
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            embed_grid(sl, sub, encoder, patch_px, enc.context, False, timings=timings)
            walls.append(time.perf_counter() - t0)
            embeds.append(timings["embed"])
    return {
        "patches": k,
        "patches_per_s": k / min(walls),
        "encoder_only_per_s": k / max(min(embeds), 1e-9),
    }


def best_throughput(
    slide: BenchSlide,
    grid: PatchGrid,
    spec: BenchmarkSpec,
    encoders: Sequence[str],
    cfg: SuiteConfig,
) -> dict[str, dict[str, float]]:
    """Each encoder's best patches/s over ``cfg.throughput_rounds`` rounds, encoders in turn:
    load from other work on the machine then slows every encoder alike instead of whichever
    ran during it."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(cfg.throughput_rounds):
        for ename in encoders:
            tp = encoder_throughput(slide, grid, spec, ENCODERS[ename], cfg.cache_dir, repeats=1)
            if ename not in best or tp["patches_per_s"] > best[ename]["patches_per_s"]:
                best[ename] = tp
    return best


def remeasure_throughput(results: dict[str, Any], cfg: SuiteConfig) -> dict[str, Any]:
    """Measure every encoder's patches/s again (interleaved, best of ``throughput_rounds``)
    and put the figures into ``results``; nothing else is re-run."""
    for bname, bres in results["benchmarks"].items():
        spec = BenchmarkSpec(**bres["spec"])
        slides = build_cohort(cfg.data_root, cfg.work, spec)
        names = list(bres["encoders"])
        grid0 = load_cohort(slides[:1], spec, ENCODERS[names[0]], cfg.cache_dir).grids[0]
        best = best_throughput(slides[0], grid0, spec, names, cfg)
        for ename, tp in best.items():
            bres["encoders"][ename]["throughput"] = tp
        cfg.log(f"{bname}: " + ", ".join(f"{e} {t['patches_per_s']:.0f}" for e, t in best.items()))
    return results
