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

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tune_guard import part_cases, scored, study_parser
from engine.encoders import build_encoder
from engine.regions import Bands, outline_depth, rim_bands


def levels(p: np.ndarray, bands: Bands) -> dict[str, float]:
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
    ap = study_parser(__doc__)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    cache = a.work / "cache"
    enc = build_encoder(a.encoder, cache)
    rows = []
    for s, coarse, (b, grid_name, pum, level, seed) in part_cases(a.data, a.work, [0]):
        # the model tune_guard's rows are scored with, so its "rim" column is this "mean"
        d, c, _, p, _ = scored(s, coarse, pum, seed, enc, cache)
        bands = rim_bands(c, outline_depth(d.grid, coarse))
        if bands is None:
            continue
        row = {"bench": b, "grid": grid_name, "level": level, "slide": s.name}
        rows.append(row | levels(np.asarray(p, dtype=np.float64), bands))
        print(json.dumps(rows[-1]), flush=True)
    a.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
