"""Scoring: a case's regions against the truth with the paper's eight metrics (pixel level,
inside tissue), the CLI cross-check (:func:`cli_cell`), aggregation over seeds and slide cases,
and the targets of issues 4 and 9.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import shapely

from benchmarks.cases import Case, run_engine
from engine.features import FeatureSettings
from engine.metrics import METRICS, confusion, rasterize, scores, summarise

Geometry: TypeAlias = shapely.Geometry


# --------------------------------------------------------------------------- evaluation


def evaluate(case: Case, geoms: Sequence[Geometry]) -> dict[str, Any]:
    """The eight metrics over the cohort (Dice and IoU: mean of per-slide values; the rest
    pooled over tissue pixels, as :func:`engine.metrics.summarise`) and per slide."""
    per_slide, confs = [], []
    for t, g in zip(case.cohort.eval, geoms, strict=True):
        pred = rasterize(g, t.tissue.shape, t.downsample)
        cm = confusion(pred, t.truth, t.tissue)
        confs.append(cm)
        per_slide.append(scores(*cm))
    return {"cohort": summarise(per_slide, confs), "slides": per_slide}


# --------------------------------------------------------------------------- the CLI cell

REPO = Path(__file__).resolve().parents[1]


def cli_cell(case: Case, j: int, out: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Slide ``j`` of ``case`` through ``python -m qupath_bridge.cli slide`` in a subprocess, as
    a user runs it: the case's coarse outline as QuPath GeoJSON, ``--seed`` the case's seed,
    the CLI's defaults otherwise (``--patch-um`` only on the benchmark grid; ``--cache-dir``
    the harness's cache, which changes where features are kept, not what they are). Returns
    the Dice of the refined GeoJSON the CLI wrote and of the harness's engine result for the
    same slide, grid and seed, with both verdicts: equal Dice shows the harness measures what
    the CLI does."""
    from qupath_bridge.geojson_io import annotation_features, read_objects, write_features

    slide, settings = case.cohort.slides[j], case.engine_settings
    out = Path(out)
    coarse_path = write_features(
        out / f"{slide.name}.coarse.geojson", annotation_features(case.coarse[j], "Tumor")
    )
    cmd = [sys.executable, "-m", "qupath_bridge.cli", "slide", str(slide.path)]
    cmd += ["--coarse", str(coarse_path), "--out", str(out / "cli"), "--seed", str(case.seed)]
    cmd += ["--cache-dir", str(settings.cache_dir), "--quiet", "--no-tiles"]
    if case.grid == "benchmark":
        cmd += ["--patch-um", f"{case.cohort.spec.patch_um:g}"]
    enc = case.cohort.encoder
    if enc.features != FeatureSettings():
        cmd += ["--encoder", enc.encoder, "--context", f"{enc.context:g}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    stem = slide.path.name.split(".")[0]
    refined = [o.geometry for o in read_objects(out / "cli" / f"{stem}.refined.geojson")]
    summary = json.loads((out / "cli" / "summary.json").read_text())
    cli_geom = shapely.union_all(refined) if refined else shapely.MultiPolygon()
    ours = run_engine(case)[j]
    scored = evaluate(case, [cli_geom if k == j else ours.regions for k in range(len(case.coarse))])
    harness = evaluate(case, [e.regions for e in run_engine(case)])
    return {
        "slide": slide.name,
        "grid": case.grid,
        "seed": case.seed,
        "command": cmd,
        "cli_dice": scored["slides"][j]["dice"],
        "harness_dice": harness["slides"][j]["dice"],
        "cli_outline": summary["slides"][0]["outline"],
        "harness_outline": ours.outline,
        "cli_patches": summary["slides"][0]["patches"],
        "harness_patches": len(case.grids[j]),
    }


# --------------------------------------------------------------------------- aggregation


@dataclass
class MethodRun:
    method: str
    metrics: dict[str, float]
    per_slide: list[dict[str, float]]
    seconds: float
    peak_mib: float
    #: the slide cases: slide names, the run's seed, each slide's patch side (µm), the
    #: engine's verdict per slide, and the coarse outline's Dice per slide (for refined - coarse)
    slides: list[str] = field(default_factory=list)
    seed: int = 0
    patch_um: list[float] = field(default_factory=list)
    outline: list[str] | None = None
    coarse_dice: list[float] = field(default_factory=list)


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


#: a slide case "worse than coarse" in the per-slide counts: refined - coarse Dice below this
WORSE_BY = 0.02


def slide_cases(runs: Sequence[MethodRun]) -> list[dict[str, Any]]:
    """Every (slide, seed) of a cell: Dice, refined - coarse Dice, patch side, verdict."""
    out = []
    for r in runs:
        for j, name in enumerate(r.slides):
            d = r.per_slide[j]["dice"]
            c = r.coarse_dice[j] if r.coarse_dice else float("nan")
            row = {"slide": name, "seed": r.seed, "dice": d, "delta": d - c}
            row["patch_um"] = r.patch_um[j] if r.patch_um else None
            if r.outline is not None:
                row["outline"] = r.outline[j]
            out.append(row)
    return out


def aggregate(runs: Sequence[MethodRun]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric, time and memory; per-seed Dice kept; per slide
    case (slide x seed) the Dice and refined - coarse Dice, the worst slide case and how many
    are worse than coarse by more than :data:`WORSE_BY`."""
    out: dict[str, Any] = {m: mean_std([r.metrics[m] for r in runs]) for m in METRICS}
    out["seconds"] = mean_std([r.seconds for r in runs])
    out["peak_mib"] = mean_std([r.peak_mib for r in runs])
    out["dice_per_seed"] = [round(r.metrics["dice"], 4) for r in runs]
    cases = slide_cases(runs)
    if cases and all(r.coarse_dice for r in runs):
        worst = min(cases, key=lambda c: c["delta"])
        out["worst"] = {k: worst[k] for k in ("slide", "seed", "delta", "dice")}
        out["n_worse"] = sum(c["delta"] < -WORSE_BY for c in cases)
        out["n_cases"] = len(cases)
    if any(r.outline is not None for r in runs):
        verdicts: dict[str, int] = {}
        for c in cases:
            verdicts[c.get("outline", "?")] = verdicts.get(c.get("outline", "?"), 0) + 1
        out["verdicts"] = verdicts
    out["slide_cases"] = cases
    return out


# --------------------------------------------------------------------------- targets

#: issue 4's targets: margin over coarse Dice per noise level, and baselines to beat
TARGET_GAIN = {"mild": -0.01, "moderate": 0.03, "severe": 0.06}
NEVER_WORSE = -0.01
BASELINES = ("ca", "knn", "lcmil")
#: issue 9's, on the parts of the data: the mean at most 0.005 below coarse, and no slide case
#: worse than coarse by more than 0.03
PART_NEVER_WORSE = -0.005
WORST_SLIDE = -0.03


def targets(
    cell: dict[str, Any], level: str, method: str = "engine", never_worse: float = NEVER_WORSE
) -> dict[str, Any]:
    """PASS/MISS of ``method`` in one benchmark × noise cell of aggregated results; with
    per-slide results also issue 9's worst-slide rule."""
    dice = {m: cell[m]["dice"]["mean"] for m in cell if cell[m]["dice"]["mean"] is not None}
    ours, base = dice[method], dice["coarse"]
    out: dict[str, Any] = {
        "never_worse": {
            "need": base + never_worse,
            "got": ours,
            "pass": ours >= base + never_worse,
        }
    }
    worst = cell[method].get("worst")
    if worst is not None:
        d = worst["delta"]
        out["worst_slide"] = {"need": WORST_SLIDE, "got": d, "pass": d >= WORST_SLIDE}
    if level in ("moderate", "severe"):
        need = base + TARGET_GAIN[level]
        out["better"] = {"need": need, "got": ours, "pass": ours >= need}
    for b in BASELINES:
        if b in dice:
            out[f"above_{b}"] = {"need": dice[b], "got": ours, "pass": ours > dice[b]}
    return out
