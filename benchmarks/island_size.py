"""Islands on edited outlines with a floor on their size (stop 22's study; tuning part only).

    python -m benchmarks.island_size --cases benchmarks/results/tune-cuts.json \
        benchmarks/results/tune-cuts-small.json --shipped benchmarks/results/tune-stop21.json \
        --out benchmarks/results/tune-island-size.json

Stop 21's study (``edit_islands``) found islands on edited outlines worth +0.0007 of mean
gain, not adopted: they gained where the outline had left out a tumour focus (region level,
moderate and severe noise) and lost where it had left out nothing (region level, CLI grid,
mild noise), and a look at those islands showed the false ones were specks of 1-9 patches
(at most 0.01 mm²) and the found foci larger. This judges the same 107 edited slide cases
with islands (above 0.75, the engine's bar, more than a patch away) added only where they
cover at least ``A`` mm², where the slide passes the self-test or on every edited slide, by
stop 17's rule: the highest mean with the worst slide case above -0.01, and within 0.001 of
it the stricter choice (no islands, then the larger floor, the self-test before "always").
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon

from benchmarks.edit_adds import edited_cases, edited_study, others_of
from benchmarks.edit_cuts import choose, gain_lines
from benchmarks.tune_guard import passes, rule_lines
from engine.guard import redraw_self_test
from engine.regions import RegionSettings, _in_frame, island_additions, refine_outline

#: floors on an island's area tried, mm² (0: every island, stop 21's study)
FLOORS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)


def main() -> None:
    a, known = edited_study(__doc__)
    settings = RegionSettings()
    if not a.judge:
        rows = []
        for e in edited_cases(a.data, a.work, known):
            sc, sd = e.scores, e.scored
            edit = refine_outline(
                sc.coarse, sc.grid, sc.proba, sc.coarse_labels, sc.mpp, settings, sc.frame
            ).regions
            row = e.head | {"edit": e.dice(edit)}
            isl = island_additions(sc, settings)
            mm2 = [g.area * sc.mpp**2 / 1e6 for g in isl.geoms]
            row["island_mm2"] = mm2
            for f in FLOORS:
                kept = MultiPolygon([g for g, m in zip(isl.geoms, mm2, strict=True) if m >= f])
                row[f"isl{f:g}"] = e.dice(_in_frame(edit.union(kept), sc.frame))
            row["self_test"] = None
            if mm2:  # as the engine: asked only where islands were found
                test = redraw_self_test(
                    sc.coarse, sc.grid, sd.x, sc.mpp, sd.classifier, settings, sc.frame,
                    e.head["seed"] * 100 + 50,
                )  # fmt: skip
                row["self_test"] = test.recovered
            print(json.dumps(row), flush=True)
            rows.append(row)
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    rows = json.loads(a.out.read_text())
    others = others_of(known, a.shipped)

    bar = settings.self_test_recovered  # as the engine asks of a loose outline's slide
    rules: dict[str, Any] = {"no islands": lambda r: r["edit"]}
    for f in FLOORS:
        col = f"isl{f:g}"
        rules[f">={f:g} mm2, self-test"] = lambda r, c=col: r[c] if passes(r, bar) else r["edit"]
        rules[f">={f:g} mm2, always"] = lambda r, c=col: r[c]
    gains = {n: np.array([rule(r) - r["coarse"] for r in rows]) for n, rule in rules.items()}
    lines, means = gain_lines(gains, gains["no islands"], others)
    lines.insert(0, f"{len(rows)} edited slide cases, {len(others)} others (their shipped gain)")
    order = ["no islands"] + [
        f">={f:g} mm2, {w}" for w in ("self-test", "always") for f in FLOORS[::-1]
    ]
    best, chosen = choose(means, order)
    lines.append(f"best: {best} {means[best][0]:+.5f}; within 0.001, the stricter: {chosen}")
    for name, rule in rules.items():
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            cells.setdefault((r["bench"], r["grid"], r["level"]), []).append(rule(r) - r["coarse"])
        lines += rule_lines(f"edited outlines only: {name}", cells)
    a.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
