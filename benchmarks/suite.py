"""The suite: every benchmark x encoder x grid x noise level x seed x method
(:func:`run_suite`), and the results file (:func:`write_json`).

Time is wall time of the method on cached features; memory is the peak resident set size
above the value at the method's start (:class:`benchmarks.memory.PeakRSS`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cases import DEFAULT_GRID_METHODS, Case, make_case, run_engine
from benchmarks.cohorts import (
    DEFAULT_ENCODER,
    ENCODERS,
    PARTS,
    BenchmarkSpec,
    Cohort,
    build_cohort,
    load_cohort,
    part_summary,
    slide_truth,
)
from benchmarks.evaluation import (
    NEVER_WORSE,
    PART_NEVER_WORSE,
    MethodRun,
    aggregate,
    evaluate,
    targets,
)
from benchmarks.memory import PeakRSS
from benchmarks.methods import (
    COARSE_FREE,
    KNN_K,
    MAIN_METHODS,
    METHODS,
    PAPER_TAU,
    PER_ENCODER,
    LcmilSettings,
)
from benchmarks.slides import NOISE_LEVELS, BenchSlide
from benchmarks.throughput import best_throughput
from engine.files import replaced_atomically
from engine.patches import GridSettings


def run_method(case: Case, name: str) -> MethodRun:
    fn = METHODS[name]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        geoms = fn(case)
        dt = time.perf_counter() - t0
    seconds, mib = dt, mem.mib
    outline = None
    if name == "engine":
        # the engine may have run before the method (the default grid needs its grids first)
        seconds, mib = case.engine_seconds, case.engine_mib
        outline = [e.outline for e in run_engine(case)]
    ev = evaluate(case, geoms)
    return MethodRun(
        name,
        ev["cohort"],
        ev["slides"],
        seconds,
        mib,
        slides=[s.name for s in case.cohort.slides],
        seed=case.seed,
        patch_um=[
            float(g.size * s.mpp) for g, s in zip(case.grids, case.cohort.slides, strict=True)
        ],
        outline=outline,
    )


# --------------------------------------------------------------------------- the suite


@dataclass
class SuiteConfig:
    data_root: Path
    work: Path
    benchmarks: dict[str, BenchmarkSpec]
    levels: tuple[str, ...] = tuple(NOISE_LEVELS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    encoders: tuple[str, ...] = tuple(ENCODERS)
    methods: tuple[str, ...] = MAIN_METHODS
    per_encoder: tuple[str, ...] = PER_ENCODER
    encoder_seeds: tuple[int, ...] | None = None  # seeds for non-default encoders
    log: Callable[[str], None] = print
    cache: Path | None = None  # feature cache (None: ``work/cache``)
    throughput: bool = True  # measure each encoder's patches/s
    throughput_rounds: int = 3
    #: the grids to measure (:data:`GRIDS`); the CLI default grid runs
    #: :data:`DEFAULT_GRID_METHODS` only
    grids: tuple[str, ...] = ("benchmark",)
    part: str | None = None  # the part of the data the benchmarks' slides come from

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.work / "cache"


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_level(
    cohort: Cohort, level: str, seeds: Sequence[int], methods: Sequence[str], grid: str,
    free: dict[tuple[str, int], MethodRun],
) -> tuple[dict[str, list[MethodRun]], list[str]]:  # fmt: skip
    """Every method on every seed of one noise level and grid; each run knows its slides'
    coarse Dice. ``free`` keeps the coarse-free methods' runs (one per seed and grid)."""
    runs: dict[str, list[MethodRun]] = {m: [] for m in methods}
    notes: list[str] = []
    for seed in seeds:
        case = make_case(cohort, level, seed, grid)
        done: dict[str, MethodRun] = {}
        for m in methods:
            if m in COARSE_FREE and grid == "benchmark":
                if (m, seed) not in free:
                    free[m, seed] = run_method(case, m)
                done[m] = free[m, seed]
            else:
                done[m] = run_method(case, m)
        coarse_run = done.get("coarse") or run_method(case, "coarse")
        for m, r in done.items():
            r = replace(r, coarse_dice=[s["dice"] for s in coarse_run.per_slide])
            runs[m].append(r)
        notes.extend(f"seed {seed}: {n}" for n in case.notes)
    return runs, notes


def run_suite(cfg: SuiteConfig) -> dict[str, Any]:
    """Every benchmark × encoder × grid × noise level × seed × method; returns the results
    dict that ``benchmarks.run`` writes as JSON. The benchmark grid's cells are under
    ``encoders.<enc>.levels``, the CLI default grid's under ``encoders.<enc>.default_grid``."""
    t_start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "config": _config(cfg), "benchmarks": {}}
    for bname, spec in cfg.benchmarks.items():
        cfg.log(f"== {bname}: building {spec.n_slides} slides")
        slides = build_cohort(cfg.data_root, cfg.work, spec)
        truths = [slide_truth(s) for s in slides]
        bres: dict[str, Any] = {
            "spec": vars(spec),
            "slides": [slide_record(s, spec) for s in slides],
            "encoders": {},
        }
        for ename in cfg.encoders:
            cohort = load_cohort(slides, spec, ENCODERS[ename], cfg.cache_dir, truths)
            grid0 = cohort.grids[0]
            cfg.log(
                f"-- {bname} / {ename}: {cohort.n_patches} patches "
                f"({cohort.embed_seconds:.0f} s embedding)"
            )
            bres["encoders"][ename] = _encoder_results(cfg, cohort, ename)
        if cfg.throughput:
            best = best_throughput(slides[0], grid0, spec, cfg.encoders, cfg)
            for ename, tp in best.items():
                bres["encoders"][ename]["throughput"] = tp
            cfg.log(
                "   patches/s: "
                + ", ".join(f"{e} {tp['patches_per_s']:.0f}" for e, tp in best.items())
            )
        results["benchmarks"][bname] = bres
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    return results


def _config(cfg: SuiteConfig) -> dict[str, Any]:
    """The run's configuration as the results JSON records it."""
    config: dict[str, Any] = {
        "part": cfg.part,
        "grids": list(cfg.grids),
        "cli_default_patch_um": GridSettings().patch_um,
        "levels": list(cfg.levels),
        "seeds": list(cfg.seeds),
        "encoder_seeds": list(cfg.encoder_seeds or cfg.seeds),
        "encoders": {e: vars(ENCODERS[e]) for e in cfg.encoders},
        "methods": list(cfg.methods),
        "per_encoder": list(cfg.per_encoder),
        "noise": {lv: NOISE_LEVELS[lv].as_dict() for lv in cfg.levels},
        "lcmil": asdict(LcmilSettings()),
        "knn_k": KNN_K,
        "paper_tau": PAPER_TAU,
        "memory": "peak RSS above the method's start, sampled every 10 ms",
    }
    if cfg.part:
        config["part_definition"] = asdict(PARTS[cfg.part])
        config["part_data"] = part_summary(cfg.data_root, PARTS[cfg.part])
    return config


def _encoder_results(cfg: SuiteConfig, cohort: Cohort, ename: str) -> dict[str, Any]:
    """One encoder's cells on a benchmark: every grid × noise level × seed × method (all
    methods and seeds with the default encoder, ``cfg.per_encoder`` ones with the others)."""
    default = ename == DEFAULT_ENCODER
    methods = [m for m in cfg.methods if default or m in cfg.per_encoder]
    seeds = cfg.seeds if default else (cfg.encoder_seeds or cfg.seeds)
    eres: dict[str, Any] = {
        "patches": [len(g) for g in cohort.grids],
        "embed_seconds_this_run": 0.0,
        "levels": {},
    }
    for gname in cfg.grids:
        ms = methods if gname == "benchmark" else [
            m for m in methods if m in DEFAULT_GRID_METHODS
        ]  # fmt: skip
        # the oracle and the ceilings ignore the coarse outline: run once per seed
        free: dict[tuple[str, int], MethodRun] = {}
        levels: dict[str, Any] = {}
        for level in cfg.levels:
            runs, notes = run_level(cohort, level, seeds, ms, gname, free)
            cell = {m: aggregate(r) for m, r in runs.items()}
            line = "  ".join(f"{m} {cell[m]['dice']['mean']:.3f}" for m in ms)
            cfg.log(f"   {gname} grid, {level}: {line}")
            nw = PART_NEVER_WORSE if cfg.part else NEVER_WORSE
            levels[level] = {
                "methods": cell,
                "targets": targets(cell, level, never_worse=nw)
                if "engine" in cell and "coarse" in cell
                else None,
                "notes": notes,
            }
        if gname == "benchmark":
            eres["levels"] = levels
        else:
            eres["default_grid"] = {"patch_um": GridSettings().patch_um, "levels": levels}
    eres["embed_seconds_this_run"] = round(cohort.embed_seconds, 1)
    return eres


def slide_record(s: BenchSlide, spec: BenchmarkSpec) -> dict[str, Any]:
    """What a results file says of a slide: size, tumour share, and what it was built from."""
    rec: dict[str, Any] = {
        "name": s.name,
        "size_px": list(s.size),
        "mpp": s.mpp,
        "tumour_share_of_tissue": round(s.truth.area / max(s.tissue.area, 1), 4),
    }
    if spec.part is not None:
        rec["builder_seed"] = s.meta.get("seed")
        crops = s.meta.get("crops")
        if crops:
            rec["crops"] = sorted({c["crop"] for c in crops})
        tiles = s.meta.get("tiles")
        if tiles:
            rec["texture_crops"] = sorted(set(tiles["benign"]) | set(tiles["malignant"]))
    return rec


def _rounded(obj: Any, digits: int = 5) -> Any:
    """Floats to ``digits`` decimals, or ``digits`` significant digits below 0.001 (a learning
    rate), NaN to None, recursively: keeps the JSON small."""
    if isinstance(obj, float | np.floating):
        x = float(obj)
        if math.isnan(x):
            return None
        return round(x, digits) if abs(x) >= 1e-3 or x == 0 else float(f"{x:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v, digits) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one line per leaf object (e.g. ``{"mean": .., "std": ..}``): readable and
    diffable, a third of the size of ``indent=1``."""
    nested = isinstance(obj, dict) and any(isinstance(v, dict | list) for v in obj.values())
    nested = nested or (isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj))
    if not nested:
        return json.dumps(obj, ensure_ascii=False)
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + _dumps(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(_dumps(_rounded(results)) + "\n")
    return path
