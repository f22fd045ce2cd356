"""Rim levels of one encoder's scores on the tuning part, four ways (stop 19's diagnostic).

    python -m benchmarks.rim_levels --encoder efficientnet-lite0 \
        --out benchmarks/results/rims-lite0.json
    python -m benchmarks.rim_levels --encoder efficientnet-lite0-blocks \
        --out benchmarks/results/rims-lite0-blocks.json

The guard reads an outline's rim level (:class:`engine.regions.RimScores`: where the band just
inside the outline sits between the outside, 0, and the deep inside, 1) with bars chosen on
Lite0's scores. This asks whether another encoder's rim levels differ only in calibration: per
slide case (seed 0, both grids, every noise level, one MIL model as the engine trains it) the
level from the mean scores (the engine's), from the mean of the scores' ranks within the slide,
and from the medians of both. If ranks put two encoders' levels together, bars on ranks would
transfer between encoders; if not, the encoders see the rim differently.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as H
from benchmarks.slides import simulate_coarse
from engine.classifier import mil_proba, standardise
from engine.encoders import build_encoder
from engine.patches import GridSettings
from engine.pipeline import RefineSettings, SlideInput, embed_slide, label_patches, slide_grid
from engine.regions import DEEP, MIN_PATCHES, OUTSIDE, RIM, outline_depth

REPO = Path(__file__).resolve().parents[1]


def levels(p: np.ndarray, bands: tuple[np.ndarray, ...]) -> dict[str, float]:
    """The rim level of scores ``p`` over (outside, rim, deep) ``bands``, four ways."""
    rank = (np.argsort(np.argsort(p)) + 0.5) / len(p)

    def level(v: np.ndarray, f: Callable[[np.ndarray], Any]) -> float:
        outside, rim, deep = (float(f(v[b])) for b in bands)
        return (rim - outside) / (deep - outside)

    return {
        "mean": level(p, np.mean),
        "rank": level(rank, np.mean),
        "median": level(p, np.median),
        "rank_median": level(rank, np.median),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    cache = a.work / "cache"
    enc = build_encoder(a.encoder, cache)
    part, seed, rows = H.PARTS["tune"], 0, []
    for b in H.BENCHMARKS:
        spec = H.part_spec(H.BENCHMARKS[b], "tune")
        for s in H.build_part_cohort(a.data, a.work, spec):
            for grid_name, pum in (("benchmark", spec.patch_um), ("auto", "auto")):
                for level in ("mild", "moderate", "severe"):
                    coarse = simulate_coarse(
                        s.truth, s.tissue, level, part.coarse_seed + seed, s.mpp, frame=s.size
                    )
                    settings = RefineSettings(
                        grid=GridSettings(patch_um=pum), cache_dir=cache
                    ).with_seed(seed)
                    item = SlideInput(s.path, coarse, name=s.name)
                    d = slide_grid(item, settings, enc, {"read": 0.0, "embed": 0.0})
                    if d.features is None:
                        embed_slide(d, settings, enc, {"read": 0.0, "embed": 0.0}, False)
                    c, _ = label_patches(item, d.grid, 0.5)
                    x = standardise(d.embedded())
                    # seeded as tune_guard's rows, so its "rim" column is this "mean"
                    p = mil_proba(x, c, settings.classifier, seed=seed * 100).astype(np.float64)
                    depth, inside = outline_depth(d.grid, coarse), c.astype(bool)
                    bands = (
                        ~inside & (depth >= OUTSIDE),
                        inside & (depth < RIM),
                        inside & (depth >= DEEP),
                    )
                    if min(int(band.sum()) for band in bands) < MIN_PATCHES:
                        continue
                    row = {"bench": b, "grid": grid_name, "level": level, "slide": s.name}
                    rows.append(row | levels(p, bands))
                    print(json.dumps(rows[-1]), flush=True)
    a.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
