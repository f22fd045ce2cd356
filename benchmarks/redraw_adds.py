"""What a re-draw adds outside the outline (stop 25; tuning part).

    python -m benchmarks.redraw_adds --shipped benchmarks/results/tune-stop24.json \
        --out benchmarks/results/tune-redraw-adds.json

A re-drawn outline (loose, or edited but leaving tumour out) adds tissue outside it only
where the smoothed score exceeds 0.8 (``redraw_add_above``; stop 15: at 0.6, with regions far
from the outline added too, it lost up to 0.067 on fine grids), and regions away from it
above 0.75 where the self-test passes (islands, stop 17). Both parts' region-level slides at
80 µm, severe noise, gain less than the LCMIL-style re-draw on every slide case (0.822 vs
0.859 tuning): their coarse outlines leave out tumour that continues the outline's own and
scores 0.6-0.8. This study adds, to each re-draw of the shipped engine (stop 24), the regions
above a lower bar that overlap the outline (:func:`engine.regions.near_additions`: tumour
continuing across the line, not specks away from it), from the smoothed score or from the
smoothed score and the patch's own (the edit's rule against the smoothing's leak across the
line), and moves the islands' bar:

* near additions: none (shipped), smoothed above 0.5 / 0.6 / 0.7, smoothed and own above
  0.5 / 0.6 / 0.7;
* islands above 0.6 / 0.7 / 0.75 (shipped).

Second family, added after the first's rows were read (they lost on region-level slides on
the fine auto grid, where smoothed scores of 0.6-0.8 next to the outline were not tumour),
set before its measure was computed: each near addition above with the shipped islands,
only where the slide's tissue away from the outline (outside it, two patches or more) rarely
scores between the near bar and the re-draw's own 0.8 (:func:`mid_away`: that share at most
0.01 / 0.02 / 0.05 / 0.1): the bar's false alarms on this slide, measured where no tumour
continues the outline's.

Third family, added after the second's rows were read, with the post hoc split below (near
additions gained where the self-test failed, mostly gland-level slides, whose scores are
weaker), set before its rows were computed: the near bar follows the slide's own score
scale, as the re-draw's iso-level does. It sits at level 0.95 / 0.9 / 0.85 / 0.8 between the
tissue outside the outline (0) and the outline's deep inside (1) (:class:`RimScores`), where
that is below 0.8 (else no near additions); smoothed, or smoothed and own; islands as
shipped. A slide whose scores run high keeps the 0.8 bar; one whose tumour scores lower gets
a bar below it.

Slide cases: every tuning slide case (3 benchmarks x 2 grids x 3 noise levels x 3 seeds)
that the shipped engine re-draws (``--shipped``: its run of the tuning part), each with one
MIL model as the engine trains it and the guard's self-test deciding the islands as in the
engine; the others keep their shipped gain (no rule here changes them). Judged by stop 17's
rule: the highest mean with the worst slide case above -0.01, and within 0.001 of it the
stricter rule, the one that changes fewer re-drawn slide cases (ties: the order of
``ISLANDS`` and ``NEAR``, the higher bar and the own score first).

Result (``tune-redraw-adds.txt``; 122 re-drawn slide cases, 40 others; the shipped rule
reproduces the engine's run on every case to the 5 digits it records): the shipped re-draw,
+0.04230 (worst -0.0049), is the only rule of the first family whose worst slide case stays
above -0.01. Near additions raise the mean to +0.0447 at most (smoothed above 0.7, islands
above 0.7; worst -0.040): they gain at gland level, severe noise, and at region level, 80 µm,
severe, and lose on region-level slides on the fine auto grid at every noise level; islands
above 0.7 lose there too (mild and moderate). The second family's gate does not separate the
two (losses at every ``mid_away``): its best, near (smoothed) above 0.7 where ``mid_away`` <=
0.01 (+0.04277, 18 cases moved), is within 0.001 of the shipped re-draw, which moves none. No
change: the engine keeps its re-draw. Post hoc (:func:`post_hoc_lines`, read after the rows,
not judged): near additions only where the self-test did not pass reach +0.04392 (smoothed
above 0.7, worst -0.0049); not adopted, since they run against the self-test's role (a slide
that fails it is not trusted away from the line) and were found by splitting the rows.
The third family does not separate them either (region-level tumour scores as low as
gland-level: deep inside 0.78-0.93 against 0.75-0.87): its highest mean, smoothed at level
0.8, +0.04299, loses 0.033 on a slide case, and those that keep the worst above -0.01 stay
within 0.001 of the shipped re-draw (+0.04248 at most).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from benchmarks.edit_adds import Edited, scored_case
from benchmarks.edit_cuts import choose, gain_lines, shipped_rows
from benchmarks.edit_redraw import cell_lines
from benchmarks.tune_guard import part_cases, passes, study_parser
from engine.encoders import build_encoder
from engine.regions import (
    DEEP,
    RegionSettings,
    RimScores,
    SlideScores,
    near_additions,
    outline_depth,
    refine_outline,
    rim_scores,
    smooth_on_grid,
    valid_polygons,
)

ISLANDS = (0.75, 0.7, 0.6)
#: the second family's gates: near additions only where at most this share of the tissue
#: away from the outline scores between the near bar and the re-draw's own (:func:`mid_away`)
GATES = (0.01, 0.02, 0.05, 0.1)
#: the third family: near additions at this level of the slide's own score scale, from the
#: tissue outside the outline (0) to its deep inside (1), where that is below 0.8
LEVELS = (0.95, 0.9, 0.85, 0.8)
#: (bar, own score too) of the near additions; None: none (shipped)
NEAR: tuple[tuple[float, bool] | None, ...] = (
    None,
    (0.7, True),
    (0.7, False),
    (0.6, True),
    (0.6, False),
    (0.5, True),
    (0.5, False),
)


def mid_key(bar: float) -> str:
    return f"mid_away{bar:g}"


BARS = sorted({n[0] for n in NEAR if n is not None})
MID_KEYS = tuple(mid_key(b) for b in BARS)


def mid_away(sc: SlideScores, bar: float, settings: RegionSettings) -> float | None:
    """The share of the tissue away from the outline (outside it, ``DEEP`` patches or more)
    whose smoothed score is at least ``bar`` but below the re-draw's own addition bar: how
    often this slide's scores reach the near bar where no tumour of the outline's continues
    (None: no such tissue). The smoothed score alone, for the own-score rules too."""
    c = np.asarray(sc.coarse_labels).astype(bool)
    away = ~c & (outline_depth(sc.grid, sc.coarse) >= DEEP)
    if not away.any():
        return None
    v = smooth_on_grid(sc.grid, sc.proba, settings.sigma)[away]
    return float(np.mean((v >= bar) & (v < settings.redraw_add_above)))


def rule_name(island: float, near: tuple[float, bool] | None) -> str:
    if near is None:
        head = "no near adds"
    else:
        head = f"near {'smoothed&own' if near[1] else 'smoothed'}>{near[0]:g}"
    return f"{head}, islands>{island:g}"


def rules() -> Iterator[tuple[str, float, tuple[float, bool] | None]]:
    """The first family's rules: name, island bar and near additions (each a Dice column)."""
    for island in ISLANDS:
        for near in NEAR:
            yield rule_name(island, near), island, near


def level_name(level: float, own: bool) -> str:
    kind = "smoothed&own" if own else "smoothed"
    return f"near {kind} at the slide's level {level:g}, islands>{ISLANDS[0]:g}"


def level_bar(rim: RimScores, level: float) -> float:
    """The score at ``level`` of the slide's scale (:class:`RimScores`), at most the
    re-draw's own addition bar."""
    return min(RegionSettings().redraw_add_above, rim.outside + level * (rim.deep - rim.outside))


def rule_values(rows: list[dict[str, Any]]) -> dict[str, Callable[[dict[str, Any]], float]]:
    """Each rule's Dice of a slide case: the first family's columns, then the second family
    (near additions, islands as shipped, only where ``mid_away`` at the near bar is at most
    each of GATES)."""
    values: dict[str, Callable[[dict[str, Any]], float]] = {
        name: itemgetter(name) for name, *_ in rules()
    }
    base = rule_name(ISLANDS[0], None)
    for near in NEAR[1:]:
        assert near is not None
        column = rule_name(ISLANDS[0], near)
        for q in GATES:

            def gated(r: dict[str, Any], column: str = column, key: str = mid_key(near[0]),
                      q: float = q) -> float:  # fmt: skip
                m = r[key]
                return float(r[column] if m is not None and m <= q else r[base])

            values[f"{column} where mid_away<={q:g}"] = gated
    for level in LEVELS:
        for own in (True, False):
            values[level_name(level, own)] = itemgetter(level_name(level, own))
    return values


def with_near(geom: shapely.Geometry, more: shapely.Geometry, e: Edited) -> float:
    """Dice of outline ``geom`` with near additions ``more`` (the re-draw's own additions
    are on a higher bar, 0.8)."""
    return e.dice(valid_polygons(geom.union(more), e.scores.frame))


def case_rows(a: Any, shipped: dict[tuple[str, str, str, int], dict[str, Any]]) -> list[dict]:
    """One row per re-drawn slide case: its head, self-test and each rule's Dice."""
    cache = a.work / "cache"
    enc = build_encoder("efficientnet-lite0", cache)
    engine = RegionSettings(near_add_above=None)  # stop 32's rule is this study's column
    rows = []
    for s, coarse, case in part_cases(a.data, a.work, [0, 1, 2]):
        known = shipped[(s.name, case[1], case[3], case[4])]
        if not known["outline"].startswith("re-drawn"):
            continue
        e = scored_case(s, coarse, case, enc, cache)
        sc = e.scores
        row = e.head | {"self_test": e.self_test(engine), "verdict": known["outline"]}
        row |= {"coarse": e.dice(coarse), "shipped": known["dice"]}
        passed = passes(row, engine.self_test_recovered)
        outlines = {}
        for island in ISLANDS:
            out = refine_outline(
                coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp,
                replace(engine, island_above=island), sc.frame, confirm=partial(bool, passed),
            )  # fmt: skip
            assert out.redrawn, "a re-drawn case of the shipped run is not re-drawn now"
            outlines[island] = out.regions
        for bar in BARS:
            row[mid_key(bar)] = mid_away(sc, bar, engine)
        more = {n: near_additions(sc, n[0], engine, n[1]) for n in NEAR if n is not None}
        for name, island, near in rules():
            geom = outlines[island]
            row[name] = e.dice(geom) if near is None else with_near(geom, more[near], e)
        rim = rim_scores(sc.proba, sc.coarse_labels, outline_depth(sc.grid, coarse))
        assert rim is not None, "a re-drawn outline has a rim"
        row |= {"rim_outside": rim.outside, "rim_deep": rim.deep}
        for at in LEVELS:
            bar = level_bar(rim, at)
            for own in (True, False):
                geom = outlines[ISLANDS[0]]
                if bar < engine.redraw_add_above:
                    row[level_name(at, own)] = with_near(
                        geom, near_additions(sc, bar, engine, own), e
                    )
                else:
                    row[level_name(at, own)] = e.dice(geom)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def post_hoc_lines(rows: list[dict[str, Any]], others: list[float]) -> list[str]:
    """Near additions (islands as shipped) only where the self-test did not pass, or only
    where it did: looked at after the rows were read, outside the judged families."""
    base = rule_name(ISLANDS[0], None)
    bar = RegionSettings().self_test_recovered
    gains = {}
    for near in NEAR[1:]:
        column = rule_name(ISLANDS[0], near)
        for failed in (True, False):
            name = f"{column} where the self-test {'failed' if failed else 'passed'}"
            gains[name] = np.array(
                [(r[column] if passes(r, bar) != failed else r[base]) - r["coarse"] for r in rows]
            )
    lines, _ = gain_lines(gains, np.array([r[base] - r["coarse"] for r in rows]), others)
    head = "post hoc, not judged (read after the rows, no reason given in advance):"
    return [head] + [ln.replace("edited cases", "re-drawn cases") for ln in lines]


def shipped_study(
    doc: str, case_rows: Callable[[Any, dict[tuple[str, str, str, int], dict[str, Any]]], list]
) -> tuple[Any, list[dict[str, Any]], dict[tuple[str, str, str, int], dict[str, Any]]]:
    """The command line of a study of the shipped engine's slide cases (``--shipped``: its
    run of the tuning part; ``--out``; ``--judge``: only judge ``--out``'s rows), parsed;
    its rows (``case_rows``, written to ``--out``) and the shipped run's, by slide case."""
    ap = study_parser(doc)
    ap.add_argument("--shipped", type=Path, required=True, help="benchmarks.run JSON (tuning)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--judge", action="store_true", help="only judge --out's rows")
    a = ap.parse_args()
    shipped = shipped_rows(a.shipped)
    if not a.judge:
        a.out.write_text(json.dumps(case_rows(a, shipped), indent=1) + "\n")
    return a, json.loads(a.out.read_text()), shipped


def judged(
    rows: list[dict[str, Any]],
    shipped: dict[tuple[str, str, str, int], dict[str, Any]],
    values: dict[str, Callable[[dict[str, Any]], float]],
    base: str,
    what: str,
) -> tuple[list[str], dict[str, tuple[float, float]], list[float]]:
    """Each rule's gains over the study's slide cases (``what``) and the shipped gains of
    the others, how far the study's ``base`` rule is from the shipped run, and stop 17's
    choice, the stricter rule being the one that moves fewer cases (stable: ties keep the
    order of ``values``). Returns the lines, each rule's (mean, worst) and the others'
    shipped gains."""
    drift = max(abs(values[base](r) - r["shipped"]) for r in rows)
    studied = {(r["slide"], r["grid"], r["level"], r["seed"]) for r in rows}
    others = [v["delta"] for k, v in shipped.items() if k not in studied]
    gains = {n: np.array([f(r) - r["coarse"] for r in rows]) for n, f in values.items()}
    lines, means = gain_lines(gains, gains[base], others)
    lines = [ln.replace("edited cases", f"{what} cases") for ln in lines]
    lines.insert(0, f"{len(rows)} {what} slide cases, {len(others)} others (their shipped gain)")
    lines.insert(1, f"shipped rule vs the shipped run, largest Dice difference {drift:.5f}")
    moved = {n: int(np.sum(g != gains[base])) for n, g in gains.items()}
    best, chosen = choose(means, sorted(values, key=lambda n: moved[n]))
    lines.append(f"best: {best} {means[best][0]:+.5f}; within 0.001, the strictest: {chosen}")
    return lines, means, others


def main() -> None:
    a, rows, shipped = shipped_study(__doc__ or "", case_rows)
    values = rule_values(rows)
    base = rule_name(ISLANDS[0], None)
    lines, means, others = judged(rows, shipped, values, base, "re-drawn")
    lines += post_hoc_lines(rows, others)
    top = max(values, key=lambda n: means[n][0])  # whatever its worst slide case
    lines.append(f"every re-drawn slide case: the highest mean ({top}) - shipped, self-test,")
    lines.append("  mid_away at 0.5 / 0.6 / 0.7, verdict")
    for r in sorted(rows, key=lambda r: values[top](r) - r[base]):
        test = "-" if r["self_test"] is None else f"{r['self_test']:.2f}"
        mids = " ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in MID_KEYS)
        lines.append(
            f"  {values[top](r) - r[base]:+.4f} {test:4s} {mids}  "
            f"{r['bench']:10s} {r['grid']:9s} {r['level']:8s} {r['slide']} s{r['seed']}  "
            f"{r['verdict']}"
        )
    lines += cell_lines(rows, values, "re-drawn outlines only")
    a.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
