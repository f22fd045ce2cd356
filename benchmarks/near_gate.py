"""Tumour continuing across a re-drawn outline's line, added where the slide's self-test says
its scores fall off slowly (stop 32; tuning part).

    python -m benchmarks.near_gate --bench glas-gland --first 0 --slides 3 \
        --out benchmarks/results/tune-near-gate-seen-glas-gland.json   # and region, wsss4luad
    python -m benchmarks.near_gate --choose
    python -m benchmarks.near_gate --bench glas-gland --first 21 --slides 6 \
        --out benchmarks/results/tune-near-gate-glas-gland.json        # and region
    python -m benchmarks.near_gate --bench wsss4luad --first 27 --slides 6 \
        --out benchmarks/results/tune-near-gate-wsss4luad.json
    python -m benchmarks.near_gate --judge

Why: on the report part the engine misses two of issue 9's comparisons at severe and moderate
noise: the CA classifier at gland level (by 0.002-0.004) and LCMIL-style at region level on
the 80 µm grid (0.846 against 0.862), cells where it mostly re-draws. A re-draw adds tissue
outside the outline only where the smoothed score exceeds 0.8; stop 25 (``redraw_adds``, on
stop 24's engine) found that adding what continues the outline's own tumour across the line
above 0.7 (:func:`engine.regions.near_additions`) gained at gland level and on region-level
slides at 80 µm and lost on region-level slides on the fine auto grid, and, post hoc, that
it gained where the slide failed the guard's self-test (+0.04392 against +0.04230, worst
-0.0049) and lost where it passed. The self-test loosens the outline by two patches and asks
how much of that band the slide's scores take back out (:mod:`engine.guard`): where they take
out little, the scores fall off slowly across the tumour's edge, and tumour continuing the
outline's own across the line scores below the 0.8 bar too; where they take out most of it,
the scores drop sharply at the edge, and what scores 0.7-0.8 next to the line is the
smoothing's leak of the inside. This study asks it on the engine as shipped (stop 31), with
the self-test's share as a measured gate.

The family, set before any row was computed: each re-drawn slide case (loose, tumour outside,
normal inside) gets the near additions above 0.7 (the smoothed score and the patch's own, or
the smoothed score alone) where the slide's self-test share is below ``gate`` (0.5: the slide
fails the self-test; 0.6; 0.7; or always, whatever the self-test); a slide whose self-test
cannot run (too few patches in the band) gets none (except "always"). Judged by stop 17's
rule on the tuning part's own slides (0-2 of each benchmark, seeds 0-2, both grids, every
noise level; ``--choose``, ``tune-near-gate-seen.txt``): the highest mean gain over coarse
whose worst slide case is above -0.01, and within 0.001 of it the rule that moves the fewest
slide cases (the engine as shipped is a candidate).

The choice (``tune-near-gate-seen.txt``; 162 slide cases, 119 re-drawn; the rows' shipped
Dice reproduce the engine's run to 0.00005): the highest mean with the worst above -0.01 is
near (smoothed) > 0.7 where the self-test share is below 0.7 (+0.04932 against the shipped
+0.04775, worst -0.0058, 43 cases moved); within 0.001 of it, the rule that moves the fewest
is **near (smoothed) > 0.7 where the slide fails the self-test** (share below 0.5, the
self-test's own bar: +0.04835, worst -0.0034, 19 cases moved, 13 up, 6 down by at most
0.0083). Always adding them (stop 25's first family) loses on region-level slides on the
fine auto grid, as it did then (-0.0056 at moderate noise), where every slide passes.

The check, set before its rows are computed (``--judge``, ``tune-near-gate.txt``): slides
21-26 of the gland- and region-level tuning streams and 27-32 of the WSSS4LUAD-like one, never
looked at, the same cases; the chosen rule becomes the default if (1) no slide case of the new
rows falls below coarse - 0.03 with it, (2) its mean gain over coarse on the new rows is at
least the shipped engine's, and (3) its mean over every row (seen and new) is at least the
shipped engine's. Otherwise the engine keeps its re-draw.

Result (``tune-near-gate.txt``; 324 new slide cases, 209 re-drawn; 25-30 min a benchmark, the
three at once): all three hold, and **the rule is the default** (``RegionSettings.
near_add_above`` 0.7, on slides whose self-test share is below ``self_test_recovered``). On
the new rows it moves 24 slide cases, 16 up (by up to +0.029, gland level at severe noise) and
8 down (by up to 0.021: a region-level slide on the auto grid at severe noise, +0.010 over
coarse -> -0.011); mean +0.03772 -> +0.03819, worst -0.0076 -> -0.0113, none below -0.03. Over
every row (486): +0.04106 -> +0.04158. ``--judge --verify`` refines each moved case (43)
with the engine's rule directly: the same Dice as the column the rule reads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as H
from benchmarks.edit_adds import scored_case
from benchmarks.edit_cuts import shipped_rows
from benchmarks.tight_fine import RESULTS, loaded, rows, rows_parser, summary
from benchmarks.tune_guard import spec_cases
from engine.encoders import build_encoder
from engine.regions import RegionSettings, near_additions, refine_outline, valid_polygons

BENCHES = ("glas-gland", "region", "wsss4luad")
#: the engine before this study (the rule off)
SHIPPED = RegionSettings(near_add_above=None)
#: near additions: (bar, the patch's own score too)
NEAR = ((0.7, True), (0.7, False))
#: below this self-test share (None: always)
GATES: tuple[float | None, ...] = (0.5, 0.6, 0.7, None)


def near_key(near: tuple[float, bool]) -> str:
    return f"near {'smoothed&own' if near[1] else 'smoothed'}>{near[0]:g}"


def rule_name(near: tuple[float, bool], gate: float | None) -> str:
    return near_key(near) + (" always" if gate is None else f" where self-test < {gate:g}")


def rule_value(r: dict, near: tuple[float, bool], gate: float | None) -> float:
    """Slide case ``r``'s Dice under the rule (``near`` additions below ``gate``)."""
    if near_key(near) not in r:  # not re-drawn
        return float(r["shipped"])
    st = r["self test"]
    if gate is None or (st is not None and st < gate):
        return float(r[near_key(near)])
    return float(r["shipped"])


def case_row(e: Any) -> dict:
    """One slide case: the shipped outline, and where it is re-drawn the slide's self-test
    share and the outline with each near addition."""
    sc = e.scores
    test: list[float | None] = []

    def share() -> float | None:
        if not test:
            test.append(e.self_test(SHIPPED))
        return test[0]

    def confirm() -> bool:
        st = share()
        return st is not None and st >= SHIPPED.self_test_recovered

    o = refine_outline(
        sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp, SHIPPED, sc.frame, confirm
    )
    row = e.head | {
        "coarse": e.dice(sc.coarse),
        "patch um": sc.grid.size * sc.mpp,
        "shipped": e.dice(o.regions),
        "verdict": o.verdict(SHIPPED),
    }
    if o.redrawn:
        row["self test"] = share()
        for near in NEAR:
            more = near_additions(sc, near[0], SHIPPED, near[1])
            row[near_key(near)] = e.dice(valid_polygons(o.regions.union(more), sc.frame))
    return row


def rules() -> list[tuple[str, tuple[float, bool], float | None]]:
    return [(rule_name(n, g), n, g) for n in NEAR for g in GATES]


def cell_lines(rs: list[dict], values: dict[str, np.ndarray], base: np.ndarray) -> list[str]:
    """Each rule's mean change against the shipped engine, per benchmark x grid x noise."""
    lines = ["per cell, mean change against the shipped engine (re-drawn cases / cases):"]
    for bench in BENCHES:
        for grid in ("benchmark", "auto"):
            for level in ("mild", "moderate", "severe"):
                idx = [
                    i
                    for i, r in enumerate(rs)
                    if (r["bench"], r["grid"], r["level"]) == (bench, grid, level)
                ]
                if not idx:
                    continue
                n_re = sum("self test" in rs[i] for i in idx)
                parts = [f"{(v[idx] - base[idx]).mean():+.4f}" for v in values.values()]
                head = f"  {bench:10s} {grid:9s} {level:8s} {n_re}/{len(idx)}  "
                lines.append(head + " ".join(parts))
    return lines


def choose_lines(rs: list[dict]) -> tuple[list[str], str]:
    """The family on the seen rows and stop 17's pick; the rows' shipped Dice against the
    engine's run of the tuning part (stop 31)."""
    run = shipped_rows(RESULTS / "tune-stop31.json")
    drift = max(abs(r["shipped"] - run[r["slide"], r["grid"], r["level"], r["seed"]]["dice"])
                for r in rs)  # fmt: skip
    coarse = np.array([r["coarse"] for r in rs])
    base = np.array([r["shipped"] for r in rs])
    lines = [f"{len(rs)} slide cases, {sum('self test' in r for r in rs)} re-drawn"]
    lines.append(
        f"shipped rows vs the engine's run (tune-stop31), largest Dice difference {drift:.5f}"
    )
    lines.append(summary("shipped", base, base, coarse, 42))
    scored = [(base.mean() - coarse.mean(), (base - coarse).min(), 0, "shipped")]
    values = {}
    for name, near, gate in rules():
        v = np.array([rule_value(r, near, gate) for r in rs])
        values[name] = v
        lines.append(summary(name, v, base, coarse, 42))
        scored.append(((v - coarse).mean(), (v - coarse).min(), int((v != base).sum()), name))
    ok = [s for s in scored if s[1] > -0.01]
    best = max(s[0] for s in ok)
    pick = min((s for s in ok if s[0] >= best - 0.001), key=lambda s: (s[2], -s[0]))
    lines.append(f"stop 17's rule picks: {pick[3]} (mean {pick[0]:+.5f})")
    lines.append("columns: " + " | ".join(values))
    lines += cell_lines(rs, values, base)
    return lines, pick[3]


#: stop 17's pick on the seen rows (``tune-near-gate-seen.txt``)
CHOSEN = ((0.7, False), 0.5)


def judged(seen: list[dict], new: list[dict]) -> list[str]:
    """The criterion set before the new rows: see the module's docstring."""
    name = rule_name(*CHOSEN)
    parts = {}
    for what, rs in (("new", new), ("every", seen + new)):
        c = np.array([r["coarse"] for r in rs])
        b = np.array([r["shipped"] for r in rs])
        v = np.array([rule_value(r, *CHOSEN) for r in rs])
        parts[what] = (c, b, v)
    lines = []
    for what, (c, b, v) in parts.items():
        n_re = sum("self test" in r for r in (new if what == "new" else seen + new))
        lines.append(f"{what} row{'s' * (what == 'new')}: {len(c)} slide cases, {n_re} re-drawn")
        lines.append(summary("shipped", b, b, c, 42))
        lines.append(summary(name, v, b, c, 42))
    (nc, nb, nv), (pc, pb, pv) = parts["new"], parts["every"]
    checks = {
        "(1) no new slide case below coarse - 0.03": bool((nv - nc).min() >= -0.03),
        "(2) new rows' mean at least the shipped engine's": bool(
            (nv - nc).mean() >= (nb - nc).mean()
        ),
        "(3) every row's mean at least the shipped engine's": bool(
            (pv - pc).mean() >= (pb - pc).mean()
        ),
    }
    lines += [f"{k}: {'yes' if ok else 'NO'}" for k, ok in checks.items()]
    lines.append("the rule becomes the default" if all(checks.values()) else "the rule stays off")
    lines += cell_lines(new, {name: nv}, nb)
    for r in sorted(new, key=lambda r: rule_value(r, *CHOSEN) - r["shipped"]):
        d = rule_value(r, *CHOSEN) - r["shipped"]
        if d:
            lines.append(
                f"  {d:+.4f} (shipped over coarse {r['shipped'] - r['coarse']:+.4f})  "
                f"{r['bench']:10s} {r['grid']:9s} {r['level']:8s} {r['slide']} s{r['seed']}  "
                f"self-test {r['self test']:.2f}, {r['patch um']:g} um, was {r['verdict']}"
            )
    return lines


def verified(data: Path, work: Path, rs: list[dict]) -> list[str]:
    """Every slide case the rule moves, refined by the engine with the rule
    (``RegionSettings.near_add_above``, the self-test's share as ``confirm``): its Dice must
    be the column the rule reads."""
    want = {
        (r["slide"], r["grid"], r["level"], r["seed"]): r
        for r in rs
        if rule_value(r, *CHOSEN) != r["shipped"]
    }
    engine = replace(SHIPPED, near_add_above=CHOSEN[0][0])
    cache = work / "cache"
    enc = build_encoder("efficientnet-lite0", cache)
    worst = 0.0
    for bench in BENCHES:
        last = max(
            (int(k[0].rsplit("-", 1)[1]) for k in want if k[0].startswith(bench)), default=-1
        )
        if last < 0:
            continue
        spec = H.part_spec(H.BENCHMARKS[bench], "tune", last + 1)
        for s, coarse, case in spec_cases(data, work, spec, [0, 1, 2]):
            r = want.get((s.name, case[1], case[3], case[4]))
            if r is None:
                continue
            e = scored_case(s, coarse, case, enc, cache)
            sc = e.scores
            o = refine_outline(
                sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp, engine, sc.frame,
                partial(e.self_test, SHIPPED),
            )  # fmt: skip
            worst = max(worst, abs(e.dice(o.regions) - rule_value(r, *CHOSEN)))
            print(f"{s.name} {case[1:]}: {o.verdict(engine)}", flush=True)
    if worst > 1e-9:
        raise SystemExit(f"error: the engine's rule is not the studied one (by {worst:.2e})")
    return [f"the engine's rule refined directly on the {len(want)} moved cases: the same Dice"]


def main() -> None:
    ap = rows_parser(__doc__ or "", 0, 3)
    ap.add_argument("--choose", action="store_true", help="judge the family on the seen rows")
    ap.add_argument("--judge", action="store_true", help="judge the new rows")
    ap.add_argument(
        "--verify", action="store_true", help="with --judge: the engine's rule, refined directly"
    )
    a = ap.parse_args()
    if a.choose:
        lines, _ = choose_lines(loaded(f"tune-near-gate-seen-{b}" for b in BENCHES))
        (RESULTS / "tune-near-gate-seen.txt").write_text("\n".join(lines) + "\n")
    elif a.judge:
        seen = loaded(f"tune-near-gate-seen-{b}" for b in BENCHES)
        new = loaded(f"tune-near-gate-{b}" for b in BENCHES)
        lines = judged(seen, new)
        if a.verify:
            lines += verified(a.data, a.work, seen + new)
        (RESULTS / "tune-near-gate.txt").write_text("\n".join(lines) + "\n")
    else:
        if a.bench is None or a.out is None:
            ap.error("--bench and --out are needed to compute rows")
        rs = rows(a.data, a.work, a.bench, a.first, a.slides, case_row)
        a.out.write_text(json.dumps(rs, indent=1) + "\n")


if __name__ == "__main__":
    main()
