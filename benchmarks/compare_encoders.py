"""Encoders side by side on one part (issue 9 item 6): engine Dice, mean and worst slide case.

    python -m benchmarks.compare_encoders benchmarks/results/tune-guard3.json \\
        benchmarks/results/tune-enc-lite1.json ... > benchmarks/results/tune-enc.md

Each results JSON is a ``benchmarks.run`` part run (same part, seeds and slides); the first
file's default encoder is the reference. Per benchmark × grid × noise: the coarse Dice and, per
encoder, the engine's mean Dice, its worst slide case (refined − coarse) and the slide cases
worse than coarse by more than 0.02. Then one line per encoder with the rule a candidate must
pass to replace the reference: over every cell, its worst slide case is not worse than the
reference's and its mean gain over coarse is higher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as H
from benchmarks.run import grid_cells


def engine_cells(results: dict[str, Any]) -> dict[str, dict[tuple[str, str, str], dict[str, Any]]]:
    """{encoder: {(benchmark, grid, noise): {"coarse": cell, "engine": cell, "seeds": [...]}}};
    the grid is "benchmark" or "default" so that runs whose auto grids chose other sides still
    line up."""
    cfg = results["config"]
    out: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {}
    for bname, b in results["benchmarks"].items():
        for ename, e in b["encoders"].items():
            grids = [("benchmark", e["levels"])]
            if "default_grid" in e:
                grids.append(("default", e["default_grid"]["levels"]))
            for gname, levels in grids:
                for level, lv in levels.items():
                    m = lv["methods"]
                    if "engine" in m and "coarse" in m:
                        seeds = cfg["seeds"] if ename == H.DEFAULT_ENCODER else cfg["encoder_seeds"]
                        cell = {"coarse": m["coarse"], "engine": m["engine"], "seeds": seeds}
                        out.setdefault(ename, {})[bname, gname, level] = cell
    return out


def cases(cell: dict[str, Any], seeds: set[int]) -> dict[tuple[str, int], float]:
    return {(c["slide"], c["seed"]): c["delta"] for c in cell["slide_cases"] if c["seed"] in seeds}


def on_seeds(cell: dict[str, Any], run_seeds: list[int], seeds: set[int]) -> dict[str, float]:
    """A method's cell restricted to ``seeds``: mean Dice over them (each seed's Dice as the
    harness computed it), worst slide case Δ, slide cases below −WORSE_BY, and their count."""
    per = [d for s, d in zip(run_seeds, cell["dice_per_seed"], strict=True) if s in seeds]
    deltas = list(cases(cell, seeds).values()) if "slide_cases" in cell else []
    return {
        "dice": float(np.mean(per)),
        "worst": min(deltas) if deltas else float("nan"),
        "n_worse": sum(d < -H.WORSE_BY for d in deltas),
        "n_cases": len(deltas),
    }


View = dict[str, dict[tuple[str, str, str], dict[str, dict[str, Any]]]]


def compare(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    names, source, seeds, view = _common_cells(paths, runs)
    ref, keys = names[0], list(view[names[0]])
    labels = _grid_labels(runs[0])
    lines = [
        f"Engine Dice per encoder on the same slides, seeds {sorted(seeds)}; each entry: mean "
        f"Dice / worst slide case Δ (refined − coarse) / slide cases with Δ < −{H.WORSE_BY}.",
        "",
        "Sources: " + ", ".join(f"{e}: `{source[e]}`" for e in names) + ".",
        "",
        "| benchmark | grid | noise | coarse | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for k in keys:
        row = [f"{view[ref][k]['coarse']['dice']:.3f}"]
        for e in names:
            c = view[e][k]["engine"]
            row.append(f"{c['dice']:.3f} / {c['worst']:+.3f} / {c['n_worse']}/{c['n_cases']}")
        b, g, lv = k
        lines.append(f"| {b} | {labels.get((b, g), g)} | {lv} | " + " | ".join(row) + " |")
    return "\n".join(lines + _verdicts(view, names)) + "\n"


def _common_cells(
    paths: list[Path], runs: list[dict[str, Any]]
) -> tuple[list[str], dict[str, str], set[int], View]:
    """The encoders (the reference first), the file each came from, and their coarse and
    engine summaries on like with like: the cells every encoder ran, on the seeds every
    encoder ran."""
    ref = H.DEFAULT_ENCODER
    encs: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {}
    source: dict[str, str] = {}
    for p, r in zip(paths, runs, strict=True):
        for ename, cells in engine_cells(r).items():
            if ename not in encs:  # the first file that has an encoder is its source
                encs[ename], source[ename] = cells, p.name
    if ref not in encs:
        raise SystemExit(f"error: {paths[0]} has no {ref} engine cells to compare against")
    names = [ref, *sorted(e for e in encs if e != ref)]
    keys = [k for k in encs[ref] if all(k in encs[e] for e in names)]
    seeds = set.intersection(*(set(c["seeds"]) for e in names for c in encs[e].values()))
    for e in names:
        for k in keys:
            if cases(encs[e][k]["coarse"], seeds) != cases(encs[ref][k]["coarse"], seeds):
                raise SystemExit(f"error: {e} ran other slide cases than {ref} at {k}")
    view = {
        e: {
            k: {
                m: on_seeds(encs[e][k][m], encs[e][k]["seeds"], seeds) for m in ("coarse", "engine")
            }
            for k in keys
        }
        for e in names
    }
    return names, source, seeds, view


def _verdicts(view: View, names: list[str]) -> list[str]:
    """Per encoder: mean gain, worst slide case, and whether it beats the reference
    (``names[0]``)."""
    ref, keys = names[0], list(view[names[0]])
    lines = [
        "",
        "| encoder | cells | mean gain over coarse (mean of cells) | worst slide case | "
        f"cells with a slide < coarse {H.WORST_SLIDE:+g} | cells with mean < coarse "
        f"{H.PART_NEVER_WORSE:+g} | cells: worst not below reference's | beats reference |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def gain(e: str) -> float:
        return float(np.mean([c["engine"]["dice"] - c["coarse"]["dice"] for c in view[e].values()]))

    def worst(e: str, k: tuple[str, str, str]) -> float:
        return view[e][k]["engine"]["worst"]

    ref_min = min(worst(ref, k) for k in keys)
    for e in names:
        e_min = min(worst(e, k) for k in keys)
        below = sum(worst(e, k) < H.WORST_SLIDE for k in keys)
        low = sum(
            c["engine"]["dice"] < c["coarse"]["dice"] + H.PART_NEVER_WORSE for c in view[e].values()
        )
        held = sum(worst(e, k) >= worst(ref, k) - 1e-9 for k in keys)
        beats = "reference" if e == ref else _yes(e_min >= ref_min and gain(e) > gain(ref))
        lines.append(
            f"| {e} | {len(keys)} | {gain(e):+.4f} | {e_min:+.3f} | {below} | {low} | "
            f"{held}/{len(keys)} | {beats} |"
        )
    return [
        *lines,
        "",
        "A candidate beats the reference when its worst slide case over all these cells is not "
        "worse than the reference's and its mean gain over coarse is higher (reference: "
        f"{gain(ref):+.4f}, worst {ref_min:+.3f}).",
    ]


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "no"


def _grid_labels(results: dict[str, Any]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for b, label, *_ in grid_cells(results):
        out.setdefault((b, "default" if label.startswith("CLI") else "benchmark"), label)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="part-run JSONs; the first has lite0")
    args = p.parse_args(argv)
    print(compare(args.results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
