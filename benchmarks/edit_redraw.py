"""Re-draw an edited outline whose slide shows tumour it left out (stop 23's study; tuning part).

    python -m benchmarks.edit_redraw --cases benchmarks/results/tune-cuts.json \
        benchmarks/results/tune-cuts-small.json --shipped benchmarks/results/tune-stop22.json \
        --out benchmarks/results/tune-edit-redraw.json

An outline is re-drawn only where its rim scores like normal tissue (level below 0.6). On
region-level slides at 80 µm, moderate and severe noise, the coarse outline is dilated by
less than a patch, so its rim does not look loose, yet it left out whole tumour pieces and
closed over normal tissue between them: the edit keeps most of it (cuts below 0.3 only) and
the LCMIL-style re-draw of every outline gains 0.13-0.17 Dice on such tuning slides. Since
stop 22 the verdict of an edited outline counts the regions away from it that score as
tumour (islands of at least ``missed_min_um2`` beyond the edit): evidence on the slide
itself that the outline was drawn coarsely. This study asks whether that evidence should
decide the re-draw too. Rules, on the 107 edited slide cases of ``edit_cuts``:

* ``edit``: the shipped engine (the count only);
* ``edit + counted & self-test``: the counted regions added to the edit (stop 22's
  islands of at least 0.02 mm²) where the slide passes the self-test, as a loose outline's
  islands are (added after the first judging: see below);
* ``edit + counted``: the counted regions added to the edit in any case;
* ``re-draw where counted``: such an outline re-drawn as a loose one is (capped at one
  patch inwards, islands only where the slide passes the self-test);
* ``re-draw where counted & self-test``: as above, but an outline whose slide fails the
  self-test is only edited;
* ``re-draw every edited``: every edited outline re-drawn as a loose one (for scale).

Judged by stop 17's rule: the highest mean with the worst slide case above -0.01, and within
0.001 of it the stricter choice (in the order above, the edit first). The rules and their
order were set before the rows were computed, but for ``edit + counted & self-test``.

Result (``tune-edit-redraw.txt``): 6 of the 107 edited cases count regions (region level,
moderate and severe noise). The edit +0.02944 (worst -0.0068); edit + counted +0.03022;
re-draw where counted +0.03060 (best; -0.0068), with the self-test +0.03043; every edited
outline re-drawn +0.03259 but worst -0.0363 (11 cases below -0.02: region 80 µm and gland
40 µm at mild noise). The edit is 0.00116 below the best, outside the 0.001 band. The
first judging, without the self-test variant of adding, chose ``edit + counted``; the
variant was then added, as stop 22's island studies had it and the engine asks it of a
loose outline's islands: it can only do less, and at +0.03012 it is within the band, so
it is the stricter choice and the engine's rule (one slide case, self-test 0.48, keeps
+0.027 instead of +0.050).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import shapely

from benchmarks.edit_adds import Edited, edited_study, others_of, study_rows
from benchmarks.edit_cuts import choose, gain_lines
from benchmarks.tune_guard import passes, rule_lines
from engine.regions import (
    RegionSettings,
    SlideScores,
    _in_frame,
    island_additions,
    missed_islands,
    refine_outline,
)


def redraw_columns(sc: SlideScores, settings: RegionSettings, dice: Any, passed: bool) -> dict:
    """Dice of the outline re-drawn as a loose one (capped), with and without islands (the
    edit where it has no rim to draw along)."""
    loose = replace(settings, redraw_below=settings.tight_above or 1.0)
    args = (sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp)
    with_isl = refine_outline(*args, loose, sc.frame, confirm=lambda: passed)
    without = refine_outline(*args, replace(loose, island_above=None), sc.frame)
    # an outline with no rim (too few patches deep inside) cannot be re-drawn: it is edited
    return {
        "redraw": dice(with_isl.regions),
        "redraw_noisl": dice(without.regions),
        "has_rim": with_isl.rim is not None,
    }


def cell_lines(
    rows: list[dict[str, Any]],
    values: dict[str, Callable[[dict], float]],
    label: str = "edited outlines only",
) -> list:
    """Each rule's judgement (:func:`benchmarks.tune_guard.rule_lines`) over the slide cases
    ``rows`` (the edited ones, unless ``label`` says otherwise), by cell; ``values``: each
    rule's Dice of a slide case."""
    lines = []
    for name, value in values.items():
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            cells.setdefault((r["bench"], r["grid"], r["level"]), []).append(value(r) - r["coarse"])
        lines += rule_lines(f"{label}: {name}", cells)
    return lines


RULES = (
    "edit",
    "edit + counted & self-test",
    "edit + counted",
    "re-draw where counted & self-test",
    "re-draw where counted",
    "re-draw every edited",
)


def rule_value(r: dict[str, Any], rule: str, bar: float) -> float:
    """Slide case ``r``'s Dice under ``rule`` (``bar``: the self-test's pass mark)."""
    passed = passes(r, bar)
    redraw = r["redraw"] if passed else r["redraw_noisl"]
    if rule == "edit":
        return r["edit"]
    if rule == "edit + counted & self-test":
        return r["edit_counted"] if passed else r["edit"]
    if rule == "edit + counted":
        return r["edit_counted"]
    if rule == "re-draw where counted & self-test":
        return redraw if r["missed"] and passed else r["edit"]
    if rule == "re-draw where counted":
        return redraw if r["missed"] else r["edit"]
    return redraw


def main() -> None:
    a, known = edited_study(__doc__ or "")
    # stop 23: no re-draw for tumour outside (nor, stop 28, for normal tissue inside)
    settings = RegionSettings(
        redraw_outside=None, redraw_inside=None, tight_fine_above=None, near_add_above=None
    )

    def row_of(e: Edited) -> dict[str, Any]:
        sc = e.scores
        # stop 22's edit (the regions counted, not added), then what they add
        shipped = replace(settings, missed_min_um2=None)
        args = (sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp)
        out = refine_outline(*args, shipped, sc.frame)
        assert not out.redrawn, "an edited case of edit_cuts is not edited now"
        counted = missed_islands(sc, settings, out.regions)
        row = e.head | {"edit": e.dice(out.regions), "missed": len(counted)}
        added = _in_frame(shapely.union_all([out.regions, *counted]), sc.frame)
        row["edit_counted"] = e.dice(added)
        row["self_test"] = None
        if not island_additions(sc, settings).is_empty:  # as the engine asks it
            row["self_test"] = e.self_test(settings)
        passed = passes(row, settings.self_test_recovered)
        # the engine since stop 23 adds them where the slide passes (the rule chosen)
        now = refine_outline(*args, settings, sc.frame, confirm=partial(bool, passed))
        assert now.regions.equals(added if passed else out.regions)
        return row | redraw_columns(sc, settings, e.dice, passed)

    rows = study_rows(a, known, row_of)
    others = others_of(known, a.shipped)
    bar = settings.self_test_recovered
    gains = {n: np.array([rule_value(r, n, bar) - r["coarse"] for r in rows]) for n in RULES}
    lines, means = gain_lines(gains, gains["edit"], others)
    n_missed = sum(bool(r["missed"]) for r in rows)
    lines.insert(
        0,
        f"{len(rows)} edited slide cases ({n_missed} with regions counted outside), "
        f"{len(others)} others (their shipped gain)",
    )
    best, chosen = choose(means, list(RULES))
    lines.append(f"best: {best} {means[best][0]:+.5f}; within 0.001, the stricter: {chosen}")
    lines.append("slide cases with regions counted outside (Dice - coarse):")
    for r in rows:
        if r["missed"]:
            vals = " ".join(f"{rule_value(r, n, bar) - r['coarse']:+.4f}" for n in RULES)
            st = "-" if r["self_test"] is None else f"{r['self_test']:.2f}"
            lines.append(
                f"  {r['slide']:28s} {r['grid']:9s} {r['level']:8s} s{r['seed']} "
                f"counted {r['missed']} self-test {st}: {vals}"
            )
    lines += cell_lines(rows, {n: partial(rule_value, rule=n, bar=bar) for n in RULES})
    a.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
