"""The cut bars of stop 18's engine, judged again (stop 20's study; tuning part only).

    python -m benchmarks.edit_bars --rows benchmarks/results/tune-guard6.json \
        --out benchmarks/results/tune-bars.json

Stop 13 chose the edit's thresholds (cut below 0.4, add above 0.8) by the highest mean gain
under stop 13's engine; stop 17 then set the rule later bars were chosen by: the highest mean
with the worst slide above -0.01 and none below -0.02, and within 0.001 of it the stricter
choice. This judges the cut bar again under stop 18's engine and that rule, per tuning slide
case, from the same MIL models as ``tune-guard6``'s rows:

* one bar for every cut (CUTS): where an outline is edited, and deep inside a capped re-draw
  (where the edit's confident cuts apply);
* a bar for edited outlines alone (EDIT_CUTS, 0: no cuts), re-draws keeping 0.4;
* on edited outlines, additions (cuts) kept only where a traced piece reaches more than ``k``
  patches beyond (inside) the drawn line (REACH): on close outlines an edit could be patches
  that straddle the line.

An outline's verdict (loose, tight, edited) and its self-test (read from the rows: the test's
re-draw is uncapped, so no cut bar enters it) do not depend on the cut bars.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon

from benchmarks import harness as H
from benchmarks.tune_guard import part_cases, passes, rule_lines, scored, study_parser
from engine.encoders import build_encoder
from engine.metrics import pixel_metrics
from engine.regions import (
    RegionSettings,
    SlideScores,
    _in_frame,
    apply_edit,
    edit_outline,
    edit_pieces,
    island_additions,
    outline_depth,
    redraw_outline,
    rim_scores,
)

#: one bar for every cut (RegionSettings.remove_below; stop 18's engine: 0.4)
CUTS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
#: bars for the cuts of edited outlines alone (0: the edit only adds)
EDIT_CUTS = (0.0, 0.05, 0.1, 0.15, *CUTS)
#: on edited outlines: name -> (additions must reach beyond k patches, cuts deeper than k)
REACH: dict[str, tuple[float | None, float | None]] = {
    **{f"add>{k:g}": (k, None) for k in (0.75, 1.0, 1.25, 1.5, 2.0)},
    **{f"cut>{k:g}": (None, k) for k in (0.75, 1.0, 1.5)},
    **{f"add>{k:g},cut>{k:g}": (k, k) for k in (1.0, 1.5)},
}
#: stop 18's engine: edits cut below 0.4, and so does a capped re-draw deep inside
CUTS_18 = 0.4


def reaching(pieces: shapely.Geometry, zone: shapely.Geometry, tol: float) -> MultiPolygon:
    """The polygons of ``pieces`` with more than ``tol`` area inside ``zone``."""
    parts = getattr(pieces, "geoms", [pieces])
    return MultiPolygon([g for g in parts if g.intersection(zone).area > tol])


def edit_reach(s: SlideScores, add_k: float | None, cut_k: float | None) -> MultiPolygon:
    """Stop 18's edit with additions (cuts) kept only where they reach more than ``add_k``
    (``cut_k``) patches beyond (inside) the coarse outline."""
    cuts, adds = edit_pieces(s, RegionSettings(remove_below=CUTS_18))
    size = s.grid.size
    tol = 0.1 * size * size
    if cut_k is not None:
        cuts = reaching(cuts, s.coarse.buffer(-cut_k * size), tol)
    if add_k is not None:
        far = shapely.box(*s.coarse.buffer(add_k * size + 1e9).bounds)
        adds = reaching(adds, far.difference(s.coarse.buffer(add_k * size)), tol)
    return apply_edit(s, cuts, adds)


def verdict(r: dict[str, Any]) -> str:
    """Stop 18's engine's verdict on tune-guard6's row ``r``: loose (re-drawn; "islands" where
    the self-test passed), tight (left as drawn) or edited."""
    rim = r["rim"]
    if rim is not None and rim < 0.6:
        return "islands" if passes(r, 0.5) else "loose"
    if rim is not None and rim >= 0.9:
        return "tight"
    return "edited"


def case_columns(s: Any, coarse: Any, d: Any, p: np.ndarray, c: np.ndarray, how: str) -> dict:
    """Dice of the engine's outline at each cut bar (edited: EDIT_CUTS and REACH; re-drawn:
    CUTS)."""
    truth = H.slide_truth(s)

    def dice(g: Any) -> float:
        return pixel_metrics(g, s.truth, truth.tissue, truth.downsample)["dice"]

    sc = SlideScores(coarse, d.grid, p, c, d.info.mpp, (d.info.width, d.info.height))
    row: dict[str, float] = {}
    if how == "edited":
        for cut in EDIT_CUTS:
            rs = RegionSettings(remove_below=cut)
            row[f"cut{cut:g}"] = dice(edit_outline(sc, rs, cut=cut > 0))
        for name, (ak, ck) in REACH.items():
            row[name] = dice(edit_reach(sc, ak, ck))
        return row
    rim = rim_scores(p, c, outline_depth(d.grid, coarse))
    assert rim is not None  # how is 'loose'/'islands' only where the guard row had a rim
    for cut in CUTS:
        rs = RegionSettings(remove_below=cut)
        geom = redraw_outline(sc, rim, rs)[0]
        if how == "islands":
            geom = _in_frame(geom.union(island_additions(sc, rs)), sc.frame)
        row[f"cut{cut:g}"] = dice(geom)
    return row


def key(r: dict[str, Any]) -> tuple[str, str, str, int]:
    return (r["slide"], r["grid"], r["level"], r["seed"])


def judge(guard: dict[tuple[str, str, str, int], dict[str, Any]], out: Path) -> list[str]:
    """Stop 18's engine with each bar (and REACH edit), per cell and overall."""
    rows = {key(r): r for r in json.loads(out.read_text())}
    rules = {f"every cut below {b:g}": (f"cut{b:g}", f"cut{b:g}") for b in CUTS}
    rules |= {
        f"edited outlines cut below {b:g}" if b else "edited outlines not cut": (
            f"cut{b:g}",
            f"cut{CUTS_18:g}",
        )
        for b in EDIT_CUTS
    }
    rules |= {f"edits {name}": (name, f"cut{CUTS_18:g}") for name in REACH}
    lines = []
    for head, (edited, redrawn) in rules.items():
        cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for k, g in guard.items():
            r = rows[k]
            how = r["verdict"]
            v = g["coarse"] if how == "tight" else r[edited if how == "edited" else redrawn]
            cells[(g["bench"], g["grid"], g["level"])].append(v - g["coarse"])
        lines += rule_lines(f"stop 18's engine, {head:32s}", cells)
    return lines


def main() -> None:
    ap = study_parser(__doc__)
    ap.add_argument("--rows", type=Path, required=True, help="tune_guard rows (seeds 0-2)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--judge", action="store_true", help="only judge --out's rows")
    a = ap.parse_args()
    guard = {key(r): r for r in json.loads(a.rows.read_text())}
    if not a.judge:
        cache = a.work / "cache"
        enc = build_encoder("efficientnet-lite0", cache)
        rows = []
        seeds = sorted({k[3] for k in guard})
        for s, coarse, (_, grid_name, pum, level, seed) in part_cases(a.data, a.work, seeds):
            how = verdict(guard[(s.name, grid_name, level, seed)])
            row: dict[str, Any] = {"slide": s.name, "grid": grid_name, "level": level}
            row |= {"seed": seed, "verdict": how}
            if how != "tight":
                d, c, _, p, _ = scored(s, coarse, pum, seed, enc, cache)
                row |= case_columns(s, coarse, d, p, c, how)
            print(json.dumps(row), flush=True)
            rows.append(row)
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    a.out.with_suffix(".txt").write_text("\n".join(judge(guard, a.out)) + "\n")


if __name__ == "__main__":
    main()
