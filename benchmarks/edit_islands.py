"""Islands on edited outlines, judged again (stop 21's third study; tuning part only).

    python -m benchmarks.edit_islands --cases benchmarks/results/tune-cuts.json \
        benchmarks/results/tune-cuts-small.json --shipped benchmarks/results/tune-stop21.json \
        --out benchmarks/results/tune-edit-islands.json

Islands (regions scoring above 0.75 more than a patch away from the outline: tumour it
missed) are added only to loose outlines whose slide passes the self-test. Stop 19 tried
them on edited outlines too (rim level 0.6-0.9) on the tuning part's own slides: +0.0009 of
mean gain at 0.75, not adopted by stop 17's rule. This judges them again on the 107 edited
slide cases of ``edit_cuts`` (with the slides that have edited WSSS4LUAD outlines), under
today's edit (cuts below 0.3): islands above each bar, where the slide passes the
self-test (as on loose outlines) or on every edited slide; the highest mean with the worst
slide case above -0.01, and within 0.001 of it the stricter choice (no islands, then the
higher bar).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon

from benchmarks.edit_adds import Edited, edited_study, others_of, study_rows
from benchmarks.edit_cuts import choose, gain_lines
from benchmarks.tune_guard import passes, rule_lines
from engine.regions import RegionSettings, SlideScores, _in_frame, island_additions, refine_outline

#: island bars tried (loose outlines: 0.75)
BARS = (0.75, 0.8, 0.85, 0.9)

#: a study's columns for one edited slide case: (scores, the edited outline, its Dice
#: function) -> the columns and whether any island was found (the self-test is asked then)
Columns = Callable[[SlideScores, MultiPolygon, Callable[[Any], float]], tuple[dict[str, Any], bool]]


def island_study(doc: str, columns: Columns, variants: list[tuple[str, str]]) -> None:
    """A study of islands on edited outlines: every edited slide case's row (its edit's Dice,
    ``columns``, and the self-test where islands were found, as the engine asks it), then the
    rules judged. ``variants``: (name, column) from the loosest to the strictest; each is
    judged where the slide passes the self-test and on every edited slide, against no
    islands, by stop 17's rule (the stricter first: no islands, then the stricter variant,
    the self-test before "always")."""
    a, known = edited_study(doc)
    # the edits of stop 21
    settings = RegionSettings(
        redraw_outside=None, redraw_inside=None, tight_fine_above=None, near_add_above=None
    )

    def row_of(e: Edited) -> dict[str, Any]:
        sc = e.scores
        edit = refine_outline(  # the edit of stops 21-22: no islands (stop 23 adds some)
            sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp,
            replace(settings, missed_min_um2=None), sc.frame,
        ).regions  # fmt: skip
        cols, found = columns(sc, edit, e.dice)
        row = e.head | {"edit": e.dice(edit)} | cols
        row["self_test"] = None
        if found:  # as the engine: asked only where islands were found
            row["self_test"] = e.self_test(settings)
        return row

    rows = study_rows(a, known, row_of)
    others = others_of(known, a.shipped)

    bar = settings.self_test_recovered  # as the engine asks of a loose outline's slide
    rules: dict[str, Any] = {"no islands": lambda r: r["edit"]}
    for name, col in variants:
        rules[f"{name}, self-test"] = lambda r, c=col: r[c] if passes(r, bar) else r["edit"]
        rules[f"{name}, always"] = lambda r, c=col: r[c]
    gains = {n: np.array([rule(r) - r["coarse"] for r in rows]) for n, rule in rules.items()}
    lines, means = gain_lines(gains, gains["no islands"], others)
    lines.insert(0, f"{len(rows)} edited slide cases, {len(others)} others (their shipped gain)")
    order = ["no islands"] + [
        f"{name}, {w}" for w in ("self-test", "always") for name, _ in variants[::-1]
    ]
    best, chosen = choose(means, order)
    lines.append(f"best: {best} {means[best][0]:+.5f}; within 0.001, the stricter: {chosen}")
    for name, rule in rules.items():
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            cells.setdefault((r["bench"], r["grid"], r["level"]), []).append(rule(r) - r["coarse"])
        lines += rule_lines(f"edited outlines only: {name}", cells)
    a.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


def bar_columns(
    sc: SlideScores, edit: MultiPolygon, dice: Callable[[Any], float]
) -> tuple[dict[str, Any], bool]:
    """The edit's Dice with islands above each of ``BARS`` added, and how many each found."""
    row: dict[str, Any] = {}
    for b in BARS:
        isl = island_additions(sc, RegionSettings(island_above=b))
        row[f"isl{b:g}"] = dice(_in_frame(edit.union(isl), sc.frame))
        row[f"n{b:g}"] = len(isl.geoms)
    return row, any(row[f"n{b:g}"] for b in BARS)


def main() -> None:
    island_study(__doc__ or "", bar_columns, [(f"islands >{b:g}", f"isl{b:g}") for b in BARS])


if __name__ == "__main__":
    main()
