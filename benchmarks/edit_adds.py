"""The addition bar of edited outlines, judged again (stop 21's second study; tuning part).

    python -m benchmarks.edit_adds --cases benchmarks/results/tune-cuts.json \
        benchmarks/results/tune-cuts-small.json --shipped benchmarks/results/tune-stop21.json \
        --out benchmarks/results/tune-adds.json

An edited outline (rim level 0.6-0.9) gets tissue outside it whose smoothed and own scores
are both above ``add_above`` (0.8). Stop 13 chose that bar together with the cut bar, by the
highest mean under stop 13's engine; this judges it alone under today's engine (edited
outlines cut below 0.3), on the slide cases that ``edit_cuts`` found edited (the tuning
part's own slides, 6 more WSSS4LUAD slides from its images and CI's small slides), by the
same rule: the highest mean with the worst slide case above -0.01, and within 0.001 of it
the stricter (higher) bar. Loose outlines' additions (``redraw_add_above``) are not
changed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks import harness as H
from benchmarks.edit_bars import key
from benchmarks.edit_cuts import choose, extra_cases, gain_lines, shipped_deltas
from benchmarks.tune_guard import Case, Scored, part_cases, rule_lines, scored, study_parser
from engine.encoders import build_encoder
from engine.guard import redraw_self_test
from engine.metrics import pixel_metrics
from engine.regions import RegionSettings, SlideScores, apply_edit, edit_pieces

#: addition bars tried on edited outlines (the engine's: 0.8)
ADDS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def add_columns(sc: SlideScores, dice: Any) -> dict[str, float]:
    """Dice of the edited outline (cut below the engine's ``edit_cut_below``) with additions
    above each bar."""
    cut = RegionSettings().edit_cut_below
    assert cut is not None
    row = {}
    for a in ADDS:
        cuts, adds = edit_pieces(sc, RegionSettings(remove_below=cut, add_above=a))
        row[f"add>{a:g}"] = dice(apply_edit(sc, cuts, adds))
    return row


class Edited(NamedTuple):
    """One edited tuning slide case, scored: what a study of edited outlines reads."""

    head: dict[str, Any]  # bench, slide, grid, level, seed, coarse (its Dice)
    scores: SlideScores
    dice: Callable[[Any], float]
    scored: Scored

    def self_test(self, settings: RegionSettings) -> float | None:
        """The guard's self-test on this case (the share of the test band its re-draw took
        back), seeded as the studies of edited outlines seed it."""
        sc, sd = self.scores, self.scored
        return redraw_self_test(
            sc.coarse, sc.grid, sd.x, sc.mpp, sd.classifier, settings, sc.frame,
            self.head["seed"] * 100 + 50,
        ).recovered  # fmt: skip


def scored_case(s: Any, coarse: Any, case: Case, enc: Any, cache: Path) -> Edited:
    """Slide ``s`` with outline ``coarse`` (slide case ``case``), scored by one MIL model as
    the engine trains it; its head names the case (bench, slide, grid, level, seed)."""
    bench, grid_name, pum, level, seed = case
    truth = H.slide_truth(s)

    def dice(g: Any) -> float:
        return float(pixel_metrics(g, s.truth, truth.tissue, truth.downsample)["dice"])

    sd = scored(s, coarse, pum, seed, enc, cache)
    d = sd.d
    sc = SlideScores(coarse, d.grid, sd.p, sd.labels, d.info.mpp, (d.info.width, d.info.height))
    head = {"bench": bench, "slide": s.name, "grid": grid_name, "level": level, "seed": seed}
    return Edited(head, sc, dice, sd)


def edited_cases(
    data: Path, work: Path, known: dict[tuple[str, str, str, int], dict[str, Any]]
) -> Iterator[Edited]:
    """The slide cases ``known`` (``edit_cuts`` rows) calls edited, each with one MIL model's
    scores (the tuning part's slides, 6 more WSSS4LUAD slides and CI's small slides)."""
    cache = work / "cache"
    enc = build_encoder("efficientnet-lite0", cache)
    seeds = sorted({k[3] for k in known})
    cases = [*part_cases(data, work, seeds), *extra_cases(data, work, seeds, 6, True)]
    for s, coarse, case in cases:
        k = (s.name, case[1], case[3], case[4])
        if known[k]["verdict"] == "edited":
            e = scored_case(s, coarse, case, enc, cache)
            yield e._replace(head=e.head | {"coarse": known[k]["coarse"]})


def edited_study(doc: str) -> tuple[Any, dict[tuple[str, str, str, int], dict[str, Any]]]:
    """The command line of a study of edited outlines, parsed, and the ``edit_cuts`` rows it
    names (``--cases``) by slide case."""
    ap = study_parser(doc)
    ap.add_argument("--cases", type=Path, nargs="+", required=True, help="edit_cuts rows")
    ap.add_argument("--shipped", type=Path, required=True, help="benchmarks.run JSON (tuning)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--judge", action="store_true", help="only judge --out's rows")
    a = ap.parse_args()
    return a, {key(r): r for f in a.cases for r in json.loads(f.read_text())}


def study_rows(
    a: Any,
    known: dict[tuple[str, str, str, int], dict[str, Any]],
    row_of: Callable[[Edited], dict[str, Any]],
) -> list[dict[str, Any]]:
    """A study's rows: ``row_of`` each edited slide case (:func:`edited_cases`), printed as
    they come and written to ``a.out``; with ``a.judge``, the rows ``a.out`` already holds."""
    if not a.judge:
        rows = []
        for e in edited_cases(a.data, a.work, known):
            rows.append(row_of(e))
            print(json.dumps(rows[-1]), flush=True)
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    return json.loads(a.out.read_text())


def others_of(known: dict[tuple[str, str, str, int], dict[str, Any]], shipped: Path) -> list:
    """The shipped gains of the slide cases that are not edited (their outline is the same
    under every rule of these studies)."""
    gains = shipped_deltas(shipped)
    return [gains[k] for k, r in known.items() if r["verdict"] != "edited" and k in gains]


def main() -> None:
    a, known = edited_study(__doc__)
    rows = study_rows(a, known, lambda e: e.head | add_columns(e.scores, e.dice))
    others = others_of(known, a.shipped)
    gains = {f"add>{b:g}": np.array([r[f"add>{b:g}"] - r["coarse"] for r in rows]) for b in ADDS}
    lines, m = gain_lines(gains, gains["add>0.8"], others)
    lines.insert(0, f"{len(rows)} edited slide cases, {len(others)} others (their shipped gain)")
    best, chosen = choose(m, [f"add>{b:g}" for b in ADDS[::-1]])
    lines.append(f"best {best} {m[best][0]:+.5f}; within 0.001, highest: {chosen}")
    for add in ADDS:
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            cells.setdefault((r["bench"], r["grid"], r["level"]), []).append(
                r[f"add>{add:g}"] - r["coarse"]
            )
        lines += rule_lines(f"edited outlines only: add>{add:g}", cells)
    a.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
