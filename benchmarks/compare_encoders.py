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
    """{encoder: {(benchmark, grid, noise): {"coarse": cell, "engine": cell}}}; the grid is
    "benchmark" or "default" so that runs whose auto grids chose other sides still line up."""
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
                        out.setdefault(ename, {})[bname, gname, level] = m
    return out


def cases(cell: dict[str, Any]) -> dict[tuple[str, int], float]:
    return {(c["slide"], c["seed"]): c["delta"] for c in cell["slide_cases"]}


def compare(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
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
    labels = _grid_labels(runs[0])
    lines = [
        "Engine Dice per encoder on the same slides and seeds; each entry: mean Dice / worst "
        f"slide case Δ (refined − coarse) / slide cases with Δ < −{H.WORSE_BY}.",
        "",
        "Sources: " + ", ".join(f"{e}: `{source[e]}`" for e in names) + ".",
        "",
        "| benchmark | grid | noise | coarse | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for key, rc in encs[ref].items():
        row = [f"{rc['coarse']['dice']['mean']:.3f}"]
        for e in names:
            c = encs[e].get(key)
            if c is None:
                row.append("n/a")
                continue
            if cases(c["coarse"]) != cases(rc["coarse"]):
                raise SystemExit(f"error: {e} ran other slide cases than {ref} at {key}")
            w = c["engine"]["worst"]["delta"]
            nw = c["engine"]["n_worse"]
            row.append(
                f"{c['engine']['dice']['mean']:.3f} / {w:+.3f} / {nw}/{c['engine']['n_cases']}"
            )
        b, g, lv = key
        lines.append(f"| {b} | {labels.get((b, g), g)} | {lv} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| encoder | cells | mean gain over coarse (mean of cells) | worst slide case | "
        "cells with a slide < −0.03 | cells with mean < coarse − 0.005 | "
        "cells: worst not below reference's | beats reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref_gain = _gain(encs[ref])
    ref_min = min(c["engine"]["worst"]["delta"] for c in encs[ref].values())
    for e in names:
        cells = {k: c for k, c in encs[e].items() if k in encs[ref]}
        gain = _gain(cells)
        worst = min(c["engine"]["worst"]["delta"] for c in cells.values())
        ref_worst = min(encs[ref][k]["engine"]["worst"]["delta"] for k in cells)
        below = sum(c["engine"]["worst"]["delta"] < H.WORST_SLIDE for c in cells.values())
        mean_low = sum(
            c["engine"]["dice"]["mean"] < c["coarse"]["dice"]["mean"] + H.PART_NEVER_WORSE
            for c in cells.values()
        )
        held = sum(
            c["engine"]["worst"]["delta"] >= encs[ref][k]["engine"]["worst"]["delta"] - 1e-9
            for k, c in cells.items()
        )
        beats = "reference" if e == ref else _yes(worst >= ref_worst and gain > ref_gain)
        lines.append(
            f"| {e} | {len(cells)} | {gain:+.4f} | {worst:+.3f} | {below} | {mean_low} | "
            f"{held}/{len(cells)} | {beats} |"
        )
    lines += [
        "",
        "A candidate beats the reference when its worst slide case over all cells is not worse "
        "than the reference's and its mean gain over coarse is higher (reference: "
        f"{ref_gain:+.4f}, worst {ref_min:+.3f}).",
    ]
    return "\n".join(lines) + "\n"


def _gain(cells: dict[tuple[str, str, str], dict[str, Any]]) -> float:
    """Mean over cells of the engine's mean gain over coarse."""
    return float(
        np.mean([c["engine"]["dice"]["mean"] - c["coarse"]["dice"]["mean"] for c in cells.values()])
    )


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
