"""The real-tissue benchmark, one command (issues 4 and 9):

    python -m benchmarks.run --out benchmarks/results --part report --encoders lite0 --seeds 3
    python -m benchmarks.run --out benchmarks/results --part tune --encoders lite0 --seeds 3
    python -m benchmarks.run --out benchmarks/results --quick      # CI's quick mode (tune part)
    python -m benchmarks.run --out benchmarks/results --part all   # issue 4's table (~30 min)

``--part``: ``report`` (the default; the headline), ``tune`` (where every threshold and default
is chosen; the default with ``--quick``) or ``all`` (issue 4's slides from every crop, on which
the defaults were tuned). A part's run measures coarse, CA, LCMIL-style and the engine on two
grids (``--grids benchmark default``): the benchmark's patch side and the CLI's default, and
reports per slide case the worst refined - coarse Dice and the count below -0.02.

Options: ``--seeds N`` (coarse-annotation seeds, default 5; 3 on a part), ``--slides N``
(slides per benchmark in a part, default 3), ``--encoders lite0 ...`` (default: all of
``benchmarks.harness.ENCODERS``; lite0 on a part), ``--encoder-seeds N`` (seeds for the
non-default encoders; default 3), ``--benchmarks``, ``--levels``, ``--methods`` (also the
``v-*`` variants of ``benchmarks.harness.VARIANTS``), ``--data`` (a folder laid out like
``../shared/data``), ``--work`` (built slides and the feature cache; reused by later runs).
Writes ``<out>/<name>.json`` (every number) and ``<out>/<name>.md`` (the tables that
BENCHMARKS.md quotes); ``name`` is ``<part>-full`` or ``<part>-quick`` (``full`` or ``quick``
with ``--part all``) unless ``--name`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as H
from engine.metrics import METRICS
from engine.regions import verdict_group

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

#: the headline table's columns
HEADLINE = (
    "coarse",
    "ca",
    "knn",
    "lcmil",
    "paper-rf",
    "engine-prototype",
    "engine",
    "oracle",
    "ceiling",
    "ceiling-insample",
)
LABELS = {
    "coarse": "coarse",
    "ca": "CA classifier",
    "knn": "kNN cleaning",
    "lcmil": "LCMIL-style",
    "paper-ca": "paper: CA",
    "paper-lp": "paper: +LP",
    "paper-gp": "paper: +GP",
    "paper-dds": "paper: +DDS",
    "paper-rf": "paper literal (+RF)",
    "engine-prototype": "engine, --method prototype",
    "engine": "**engine defaults**",
    "oracle": "oracle (true patch labels)",
    "ceiling": "ceiling (other slides)",
    "ceiling-insample": "ceiling (in-sample)",
}


#: what a run on a part measures unless told: the CLI's rivals, on both grids
PART_METHODS = ("coarse", "ca", "lcmil", "engine")


def config(args: argparse.Namespace) -> H.SuiteConfig:
    chosen = args.part or ("tune" if args.quick else "report")
    part = None if chosen == "all" else chosen
    if part is None:
        pool = H.QUICK_BENCHMARKS if args.quick else H.BENCHMARKS
    else:
        # every benchmark, the quick mode's slides small; two slides a part in quick mode
        n = args.slides or (2 if args.quick else H.PART_SLIDES)
        pool = {
            b: H.part_spec(replace(s, small=args.quick), part, n) for b, s in H.BENCHMARKS.items()
        }
    names = args.benchmarks or list(pool)
    unknown = [b for b in names if b not in pool]
    if unknown:
        raise SystemExit(f"error: unknown benchmark(s) {unknown}; choose from {list(pool)}")
    if args.quick:
        levels = tuple(args.levels or ("severe", "mild"))
        seeds = tuple(range(args.seeds or 1))
        encoders = tuple(args.encoders or (H.DEFAULT_ENCODER,))
        methods = tuple(args.methods or ("coarse", "ca", "engine"))
    else:
        levels = tuple(args.levels or H.NOISE_LEVELS)
        seeds = tuple(range(args.seeds or (3 if part else 5)))
        encoders = tuple(args.encoders or ((H.DEFAULT_ENCODER,) if part else H.ENCODERS))
        methods = tuple(args.methods or (PART_METHODS if part else H.MAIN_METHODS))
    for e in encoders:
        if e not in H.ENCODERS:
            raise SystemExit(f"error: unknown encoder {e!r}; choose from {list(H.ENCODERS)}")
    for m in methods:
        if m not in H.METHODS:
            raise SystemExit(f"error: unknown method {m!r}; choose from {list(H.METHODS)}")
    grids = tuple(args.grids or (H.GRIDS if part else ("benchmark",)))
    for g in grids:
        if g not in H.GRIDS:
            raise SystemExit(f"error: unknown grid {g!r}; choose from {list(H.GRIDS)}")
    # the non-default encoders run on 3 seeds unless told: keeps the full run near 30 min
    n_enc = args.encoder_seeds or (len(seeds) if args.quick else min(3, len(seeds)))
    enc_seeds = tuple(range(n_enc))
    return H.SuiteConfig(
        data_root=Path(args.data),
        work=Path(args.work),
        # --patch-um: the same slides on another grid (is a choice tied to one patch size?)
        benchmarks={
            b: replace(pool[b], patch_um=args.patch_um) if args.patch_um else pool[b] for b in names
        },
        levels=levels,
        seeds=seeds,
        encoders=encoders,
        methods=methods,
        encoder_seeds=enc_seeds,
        # methods named on the command line run with every encoder named
        per_encoder=tuple(args.methods) if args.methods else H.PER_ENCODER,
        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True)),
        grids=grids,
        part=part,
    )


# --------------------------------------------------------------------------- markdown


def fmt(cell: dict[str, Any] | None, key: str = "dice", digits: int = 3) -> str:
    if not cell or cell[key]["mean"] is None:
        return "n/a"
    m, s = cell[key]["mean"], cell[key]["std"]
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def cells(
    results: dict[str, Any], enc: str = H.DEFAULT_ENCODER
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(benchmark, noise level, {method: aggregated results}) of one encoder."""
    for bname, b in results["benchmarks"].items():
        if enc in b["encoders"]:
            for level, lv in b["encoders"][enc]["levels"].items():
                yield bname, level, lv["methods"]


def cell_table(heads: Sequence[str]) -> list[str]:
    """The header of a table with one row per benchmark and noise level."""
    return ["| benchmark | noise | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]


def headline(results: dict[str, Any], enc: str = H.DEFAULT_ENCODER) -> list[str]:
    present = {m for _, _, methods in cells(results, enc) for m in methods}
    cols = [m for m in (*HEADLINE, *H.VARIANTS) if m in present]
    out = cell_table([LABELS.get(m, m) for m in cols])
    for bname, level, methods in cells(results, enc):
        row = [fmt(methods.get(m)) for m in cols]
        out.append(f"| {bname} | {level} | " + " | ".join(row) + " |")
    return out


def target_rows(results: dict[str, Any]) -> list[str]:
    enc = H.DEFAULT_ENCODER
    kinds = ["never_worse", "better", *(f"above_{b}" for b in H.BASELINES)]
    names = {
        "never_worse": "never worse (≥ coarse − 0.01)",
        "better": "better (≥ coarse + 0.03 / + 0.06)",
        "above_ca": "above CA",
        "above_knn": "above kNN",
        "above_lcmil": "above LCMIL-style",
    }
    out = cell_table([names[k] for k in kinds])
    for bname, level, cell in cells(results, enc):
        if "engine" not in cell or "coarse" not in cell:
            continue
        t = H.targets(cell, level)  # from the stored means: no double rounding
        out.append(f"| {bname} | {level} | " + " | ".join(_verdicts(t, kinds)) + " |")
    return out


def _verdicts(t: dict[str, Any], kinds: Sequence[str]) -> list[str]:
    """One table cell per target: PASS or MISS with the value and what it needed."""
    return [
        "–"
        if k not in t
        else f"{'PASS' if t[k]['pass'] else '**MISS**'} {t[k]['got']:.3f} vs {t[k]['need']:.3f}"
        for k in kinds
    ]


def full_tables(results: dict[str, Any]) -> list[str]:
    out = []
    enc = H.DEFAULT_ENCODER
    for bname, b in results["benchmarks"].items():
        if enc not in b["encoders"]:
            continue
        e = b["encoders"][enc]
        spec = b["spec"]
        out.append("")
        out.append(
            f"#### {bname}: {spec['n_slides']} slides, {spec['patch_um']:g} µm patches, "
            f"{sum(e['patches'])} patches ({', '.join(map(str, e['patches']))})"
        )
        out.append("")
        heads = [m.upper() if m in ("ppv", "npv", "tpr", "tnr") else m for m in METRICS]
        out.append("| noise | method | " + " | ".join(heads) + " | time s | peak MiB |")
        out.append("|---|---|" + "---|" * (len(METRICS) + 2))
        for level, lv in e["levels"].items():
            for m, cell in lv["methods"].items():
                vals = [fmt(cell, k) for k in METRICS]
                t = cell["seconds"]["mean"]
                mem = cell["peak_mib"]["mean"]
                out.append(
                    f"| {level} | {LABELS.get(m, m)} | "
                    + " | ".join(vals)
                    + f" | {t:.1f} | {mem:.0f} |"
                )
    return out


def encoder_table(results: dict[str, Any]) -> list[str]:
    """Dice of every encoder on the same seeds (the non-default encoders' seeds; the default
    encoder's first as many), so rows compare like with like."""
    levels = results["config"]["levels"]
    n = len(results["config"]["encoder_seeds"])
    trio = " / ".join(levels)
    out = [
        "| benchmark | encoder | patches/s (read + embed) | "
        f"coarse ({trio}) | engine ({trio}) | paper literal ({trio}) | "
        "ceiling (other slides) | ceiling (in-sample) |"
    ]
    out.append("|---|---|---|---|---|---|---|---|")

    def dice(cell: dict[str, Any] | None, std: bool = False) -> str:
        if not cell:
            return "n/a"
        v = np.array(cell["dice_per_seed"][:n], dtype=float)
        if std:
            return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"
        return f"{v.mean():.3f}"

    for bname, b in results["benchmarks"].items():
        for ename, e in b["encoders"].items():
            lvs = [e["levels"][lv]["methods"] for lv in levels]
            tp = e.get("throughput")
            row = [f"{tp['patches_per_s']:.0f}" if tp else "n/a"]
            row += [
                " / ".join(dice(c.get(m)) for c in lvs) for m in ("coarse", "engine", "paper-rf")
            ]
            row += [dice(lvs[0].get("ceiling"), True), dice(lvs[0].get("ceiling-insample"), True)]
            out.append(f"| {bname} | {ename} | " + " | ".join(row) + " |")
    return out


def ablation_table(results: dict[str, Any]) -> list[str]:
    enc = H.DEFAULT_ENCODER
    steps = ("coarse", *H.PAPER_STEPS, "engine")
    out = cell_table([LABELS[s] for s in steps])
    for bname, level, methods in cells(results, enc):
        if all(s in methods for s in H.PAPER_STEPS):
            row = [fmt(methods.get(s)) for s in steps]
            out.append(f"| {bname} | {level} | " + " | ".join(row) + " |")
    return out if len(out) > 2 else []


def markdown(results: dict[str, Any], command: str) -> str:
    mach = results["machine"]
    cfg = results["config"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, torch "
        f"{mach['torch']}; total {results['seconds'] / 60:.1f} min.  ",
        f"Seeds (coarse annotations, and every random step of the methods): "
        f"{cfg['seeds']}; other encoders: {cfg['encoder_seeds']}. Pixel Dice inside tissue, "
        "mean ± std over seeds.",
        "",
        "### Dice, default encoder (EfficientNet-Lite0)",
        "",
        *headline(results),
        "",
        "### Targets (engine defaults)",
        "",
        *target_rows(results),
    ]
    # encoders that ran more than the usual per-encoder methods get a headline table too
    if set(cfg["per_encoder"]) - set(H.PER_ENCODER):
        for ename, spec in cfg["encoders"].items():
            if ename != H.DEFAULT_ENCODER:
                lines += [
                    "",
                    f"### Dice, encoder {ename} ({spec['encoder']}, context {spec['context']:g})",
                    "",
                    *headline(results, ename),
                ]
    abl = ablation_table(results)
    if abl:
        lines += ["", "### The paper's ablation, literal (Dice)", "", *abl]
    n_enc = len(cfg["encoder_seeds"])
    lines += [
        "",
        f"### Encoders (Dice, mean of seeds 0-{n_enc - 1} for every encoder)",
        "",
        *encoder_table(results),
    ]
    lines += ["", "### Every metric, time and memory (default encoder)", *full_tables(results)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parts (issue 9)

#: the methods of a part's tables, in order, and the per-slide columns each gets
PART_COLUMNS = ("ca", "lcmil", "engine")


def grid_cells(
    results: dict[str, Any], enc: str = H.DEFAULT_ENCODER
) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(benchmark, grid label, noise level, {method: aggregated results}) on both grids."""
    for bname, b in results["benchmarks"].items():
        e = b["encoders"].get(enc)
        if e is None:
            continue
        grids = [(f"{b['spec']['patch_um']:g} µm", e["levels"])]
        if "default_grid" in e:
            grids.append((default_grid_label(e["default_grid"]), e["default_grid"]["levels"]))
        for label, levels in grids:
            for level, lv in levels.items():
                yield bname, label, level, lv["methods"]


def default_grid_label(dg: dict[str, Any]) -> str:
    """ "CLI default (128 µm)", or the range of patch sides the engine chose per slide."""
    sides = {
        c["patch_um"]
        for lv in dg["levels"].values()
        for m in lv["methods"].values()
        for c in m.get("slide_cases", [])
        if c.get("patch_um")
    }
    if len(sides) > 1:
        return f"CLI default ({dg['patch_um']}: {min(sides):.0f}-{max(sides):.0f} µm)"
    side = next(iter(sides)) if sides else dg["patch_um"]
    return f"CLI default ({side:.0f} µm)" if isinstance(side, float | int) else "CLI default"


def slide_tag(name: str) -> str:
    """A part slide's index (``glas-gland-report-full-2`` -> ``2``)."""
    return name.rsplit("-", 1)[-1]


def worst(cell: dict[str, Any] | None) -> str:
    if not cell or "worst" not in cell:
        return "n/a"
    w = cell["worst"]
    return f"{w['delta']:+.3f} (#{slide_tag(w['slide'])}, s{w['seed']})"


def n_worse(cell: dict[str, Any] | None) -> str:
    if not cell or "n_worse" not in cell:
        return "n/a"
    return f"{cell['n_worse']}/{cell['n_cases']}"


def verdicts(cell: dict[str, Any] | None) -> str:
    if not cell or "verdicts" not in cell:
        return ""
    tally: dict[str, int] = {}  # grouped: the per-slide table keeps the whole verdict
    for v, n in cell["verdicts"].items():
        key = verdict_group(v)
        tally[key] = tally.get(key, 0) + n
    return ", ".join(f"{v} {n}" for v, n in sorted(tally.items()))


def part_table(results: dict[str, Any]) -> list[str]:
    """Per benchmark × grid × noise: coarse, and per method the mean, the worst slide case
    (refined - coarse Dice) and how many slide cases lost more than 0.02; engine verdicts."""
    present = {m for *_, methods in grid_cells(results) for m in methods}
    cols = [m for m in PART_COLUMNS if m in present]
    heads = ["coarse"]
    for m in cols:
        heads += [LABELS[m].strip("*"), "worst Δ (slide, seed)", f"Δ < −{H.WORSE_BY}"]
    heads.append("engine outlines")
    out = [
        "| benchmark | grid | noise | " + " | ".join(heads) + " |",
        "|---|---|---|" + "---|" * len(heads),
    ]
    for bname, grid, level, methods in grid_cells(results):
        row = [fmt(methods.get("coarse"))]
        for m in cols:
            row += [fmt(methods.get(m)), worst(methods.get(m)), n_worse(methods.get(m))]
        row.append(verdicts(methods.get("engine")))
        out.append(f"| {bname} | {grid} | {level} | " + " | ".join(row) + " |")
    return out


def part_targets(results: dict[str, Any]) -> list[str]:
    kinds = ("never_worse", "worst_slide", "better", "above_ca", "above_lcmil")
    names = {
        "never_worse": f"mean ≥ coarse {H.PART_NEVER_WORSE:+g}",
        "worst_slide": f"no slide case below coarse {H.WORST_SLIDE:+g}",
        "better": "≥ coarse + 0.03 / + 0.06",
        "above_ca": "above CA",
        "above_lcmil": "above LCMIL-style",
    }
    heads = [names[k] for k in kinds]
    out = [
        "| benchmark | grid | noise | " + " | ".join(heads) + " |",
        "|---|---|---|" + "---|" * len(heads),
    ]
    for bname, grid, level, cell in grid_cells(results):
        if "engine" not in cell or "coarse" not in cell:
            continue
        t = H.targets(cell, level, never_worse=H.PART_NEVER_WORSE)
        out.append(f"| {bname} | {grid} | {level} | " + " | ".join(_verdicts(t, kinds)) + " |")
    return out


def slide_case_table(results: dict[str, Any]) -> list[str]:
    """Every slide case: coarse Dice, refined - coarse per method, the engine's verdict."""
    present = {m for *_, methods in grid_cells(results) for m in methods}
    cols = [m for m in PART_COLUMNS if m in present]
    heads = ["slide", "seed", "patch µm", "coarse", *(f"Δ {LABELS[m].strip('*')}" for m in cols)]
    heads.append("engine outline")
    out = [
        "| benchmark | grid | noise | " + " | ".join(heads) + " |",
        "|---|---|---|" + "---|" * len(heads),
    ]
    for bname, grid, level, methods in grid_cells(results):
        if "coarse" not in methods:
            continue
        per = {m: methods[m].get("slide_cases", []) for m in ("coarse", *cols) if m in methods}
        for k, c in enumerate(per["coarse"]):
            row = [slide_tag(c["slide"]), str(c["seed"])]
            eng = per.get("engine", [])
            side = (eng[k] if eng else c).get("patch_um")
            row += [f"{side:.0f}" if side else "", f"{c['dice']:.3f}"]
            row += [f"{per[m][k]['delta']:+.3f}" if m in per else "" for m in cols]
            row.append(eng[k].get("outline", "") if eng else "")
            out.append(f"| {bname} | {grid} | {level} | " + " | ".join(row) + " |")
    return out


def part_composition(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    pdef, pdata = cfg["part_definition"], cfg["part_data"]
    out = [
        f"Part **{pdef['name']}**: GlaS patients {', '.join(pdata['glas_patients'])} "
        f"({pdata['glas_crops']} crops, {pdata['glas_malignant']} malignant); WSSS4LUAD images "
        f"{', '.join(pdata['wsss4luad_images'])}; slide builder seeds from {pdef['slide_seed']}, "
        f"coarse-annotation seeds {pdef['coarse_seed']} + run seed.",
        "",
        "| benchmark | slide | builder seed | size px | tumour share | crops | patches |",
        "|---|---|---|---|---|---|---|",
    ]
    for bname, b in results["benchmarks"].items():
        e = next(iter(b["encoders"].values()))
        for s, n in zip(b["slides"], e["patches"], strict=True):
            crops = len(s.get("crops") or s.get("texture_crops") or [])
            out.append(
                f"| {bname} | {s['name']} | {s.get('builder_seed', '')} | "
                f"{s['size_px'][0]}x{s['size_px'][1]} | {s['tumour_share_of_tissue']:.3f} | "
                f"{crops} | {n} |"
            )
    return out


def reused_note(cfg: dict[str, Any]) -> list[str]:
    r = cfg.get("reused")
    if not r:
        return []
    return [
        "",
        f"Methods {', '.join(r['methods'])} are taken from `{r['from']}` (same part, seeds and "
        f"slides; command `{r['command']}`): they do not use the engine's outline code, so "
        "this run did not repeat them.",
    ]


def part_markdown(results: dict[str, Any], command: str) -> str:
    mach, cfg = results["machine"], results["config"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, torch "
        f"{mach['torch']}; total {results['seconds'] / 60:.1f} min.  ",
        f"Seeds {cfg['seeds']} (coarse annotations drawn with the part's seed + these; every "
        "random step of the methods with these). Pixel Dice inside tissue, mean ± std over "
        "seeds; a slide case is one slide at one seed; Δ = refined − coarse Dice of the slide "
        "case. The engine refines one slide per call, as `qupath-refine slide`; CA is trained "
        "on the cohort's slides together, LCMIL-style per slide.",
        *reused_note(cfg),
        "",
        *part_composition(results),
        "",
        "### Dice, worst slide case and slide cases worse than coarse",
        "",
        *part_table(results),
        "",
        "### Targets (engine, issue 9)",
        "",
        *part_targets(results),
        "",
        "### Every slide case",
        "",
        *slide_case_table(results),
        "",
        "### Every metric, time and memory (default encoder, benchmark grid)",
        *full_tables(results),
    ]
    return "\n".join(lines) + "\n"


def rejudge(results: dict[str, Any]) -> None:
    """Judge every cell's targets again from its methods (both grids)."""
    nw = H.PART_NEVER_WORSE if results["config"].get("part") else H.NEVER_WORSE
    for b in results["benchmarks"].values():
        for e in b["encoders"].values():
            grids = [e["levels"], *([e["default_grid"]["levels"]] if "default_grid" in e else [])]
            for levels in grids:
                for level, lv in levels.items():
                    if "engine" in lv["methods"] and "coarse" in lv["methods"]:
                        lv["targets"] = H.targets(lv["methods"], level, never_worse=nw)


def reuse_methods(results: dict[str, Any], earlier: dict[str, Any], source: str) -> None:
    """Copy the methods ``results`` lacks from ``earlier`` (same part, seeds, levels, slides)
    and re-judge the targets. Refuses a mismatch: a method's numbers from other slides or
    seeds would be compared with the engine's as if they were the same cases."""
    same = ("part", "seeds", "levels", "grids", "encoders")
    for k in same:
        if results["config"].get(k) != earlier["config"].get(k):
            raise SystemExit(f"error: --reuse {source}: its {k} differs from this run's")
    taken: set[str] = set()
    for b, bench in results["benchmarks"].items():
        old_bench = earlier["benchmarks"][b]
        if [s["name"] for s in bench["slides"]] != [s["name"] for s in old_bench["slides"]]:
            raise SystemExit(f"error: --reuse {source}: the {b} slides differ from this run's")
        for enc, e in bench["encoders"].items():
            old = old_bench["encoders"][enc]
            pairs = [(e["levels"], old["levels"])]
            if "default_grid" in e:
                pairs.append((e["default_grid"]["levels"], old["default_grid"]["levels"]))
            for levels, old_levels in pairs:
                for level, lv in levels.items():
                    for m, v in old_levels[level]["methods"].items():
                        if m not in lv["methods"]:
                            lv["methods"][m] = v
                            taken.add(m)
    rejudge(results)
    methods = set(results["config"]["methods"]) | taken
    results["config"]["methods"] = [m for m in PART_METHODS if m in methods] + sorted(
        methods - set(PART_METHODS)
    )
    results["config"]["reused"] = {
        "from": source,
        "command": earlier.get("command"),
        "methods": sorted(taken),
    }


def render(results: dict[str, Any], command: str) -> str:
    """The markdown of a results file: a part's tables, or issue 4's."""
    if results["config"].get("part"):
        return part_markdown(results, command)
    return markdown(results, command)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default=None, help="built slides and feature cache")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument(
        "--part",
        choices=("report", "tune", "all"),
        default=None,
        help="the part of the data: report (the headline; the default), tune (where defaults "
        "are chosen; the default with --quick, as CI's test) or all (the issue-4 slides, "
        "every crop; the defaults were tuned on them)",
    )
    p.add_argument("--slides", type=int, default=None, help="slides per benchmark in a part")
    p.add_argument("--grids", nargs="+", default=None, help="benchmark and/or default")
    p.add_argument("--quick", action="store_true", help="CI's quick mode")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--encoder-seeds", type=int, default=None)
    p.add_argument("--encoders", nargs="+", default=None)
    p.add_argument("--benchmarks", nargs="+", default=None)
    p.add_argument("--levels", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument(
        "--patch-um", type=float, default=None, help="patch side for every benchmark (µm)"
    )
    p.add_argument(
        "--reuse",
        default=None,
        metavar="JSON",
        help="take the methods this run skips (e.g. ca, lcmil: they do not use the engine's "
        "region code) from that earlier results JSON of the same part, seeds and slides",
    )
    p.add_argument("--name", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--render", default=None, help="only re-write the .md of a results JSON")
    p.add_argument(
        "--remeasure-throughput",
        default=None,
        metavar="JSON",
        help="only measure the encoders' patches/s again and update that results JSON",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        src = Path(args.render)
        results = json.loads(src.read_text())
        rejudge(results)
        H.write_json(results, src)
        src.with_suffix(".md").write_text(render(results, results.get("command", "")))
        return 0
    if args.remeasure_throughput:
        src = Path(args.remeasure_throughput)
        results = json.loads(src.read_text())
        args.work = args.work or str(Path(args.out) / "tmp")
        H.remeasure_throughput(results, config(args))
        H.write_json(results, src)
        src.with_suffix(".md").write_text(render(results, results.get("command", "")))
        return 0
    if not Path(args.data).is_dir():
        print(f"error: data folder {args.data} not found (see ../shared/data/README.md)")
        return 2
    out = Path(args.out)
    args.work = args.work or str(out / "tmp")
    cfg = config(args)
    t0 = time.perf_counter()
    results = H.run_suite(cfg)
    name = args.name or ("quick" if args.quick else "full")
    if cfg.part and not args.name:
        name = f"{cfg.part}-{name}"
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command
    if args.reuse:
        reuse_methods(results, json.loads(Path(args.reuse).read_text()), args.reuse)
    H.write_json(results, out / f"{name}.json")
    (out / f"{name}.md").write_text(render(results, command))
    print(f"wrote {out / name}.json and .md in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
