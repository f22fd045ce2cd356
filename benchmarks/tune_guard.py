"""How the edit thresholds and the guard were chosen (issue 9): on the **tuning** part only.

For every slide case of the tuning part (benchmark x grid x noise x seed; both the
benchmark's grid and the CLI's ``auto`` grid) this records, from one MIL model per slide as
the engine trains it: the coarse Dice, the Dice of the edited and of the re-drawn outline
under several edit thresholds, the rim level, the separation of the scores, how far the
re-draw moves the outline and how well its patches agree with the outline's, the chosen edit
and capped re-draw with islands added (regions away from the outline, ISLANDS), and the
guard's self-test (:mod:`engine.guard`). Candidate rules are then judged per slide case (mean gain,
worst gain, cases worse than coarse by > 0.02) without retraining::

    python -m benchmarks.tune_guard --seeds 3 --out benchmarks/results/tune-guard.json

It reads the built slides and the feature cache of ``python -m benchmarks.run --part tune``
(``benchmarks/results/tmp``), embedding what is missing. It never touches the report part.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks import harness as H
from benchmarks.slides import simulate_coarse
from engine.classifier import ClassifierSettings, mil_proba, standardise
from engine.encoders import build_encoder
from engine.guard import redraw_self_test
from engine.metrics import pixel_metrics
from engine.patches import GridSettings
from engine.pipeline import (
    RefineSettings,
    SlideFeatures,
    SlideInput,
    embed_slide,
    label_patches,
    slide_grid,
)
from engine.regions import (
    DEEP,
    RegionSettings,
    SlideScores,
    island_additions,
    outline_depth,
    redraw_outline,
    refine_outline,
    rim_scores,
)

REPO = Path(__file__).resolve().parents[1]
#: edit thresholds tried: name -> (remove_below, add_above)
EDITS = {
    "e50/70": (0.5, 0.7),
    "e40/70": (0.4, 0.7),
    "e40/75": (0.4, 0.75),
    "e40/80": (0.4, 0.8),
    "e45/80": (0.45, 0.8),
    "e30/80": (0.3, 0.8),
    "e40/noadd": (0.4, 1.0),
}
#: re-draws tried with stricter additions outside the outline (RegionSettings.redraw_add_above)
REDRAW_ADDS = (0.8, 1.0)
#: re-draws that move the outline inwards by at most this many patches, the edit's cuts
#: deeper inside (RegionSettings.redraw_depth; stop 16). Every other re-draw column cuts
#: anywhere (redraw_depth=None), as the engine did before.
CAPS = (1.0, 2.0)
#: islands tried (stop 17): regions scoring above ``above`` more than ``gap`` patches away
#: from the outline, added to the chosen edit (e40/80) and to the capped re-draw
#: (RegionSettings.island_above / island_gap)
ISLANDS = tuple((above, gap) for above in (0.5, 0.6, 0.7, 0.75, 0.8, 0.9) for gap in (0.0, 1.0))
#: the islands chosen (above, gap), and the rim levels tried at which an outline is left as
#: drawn (RegionSettings.tight_above; stop 17): judged from the same rows, no new column
CHOSEN_ISLANDS = (0.75, 1.0)
TIGHT = (0.8, 0.85, 0.9, 0.95, 1.0)
#: rim levels tried (stop 18) below which an outline is loose and gets the capped re-draw
#: whatever its self-test says (RegionSettings.redraw_below; the engine's is 0.6)
LOOSE_BARS = (0.5, 0.55, 0.65, 0.7, 0.75, 0.8)
#: island bars tried (stop 19) on edited outlines (neither loose nor tight) whose slide
#: passes the self-test: the test, not the rim, deciding where islands are trusted
EDIT_ISLANDS = (0.75, 0.8, 0.9)

#: guard rules tried: re-draw when rim level < rim, self-test >= st and the re-draw's patch
#: Dice with the outline <= agree (each when given); the re-draw's additions outside the
#: outline at a smoothed score above add (0.6: issue 4's; 0.8: the edit's bar). Rules in
#: SELF_TEST_BALANCE add a bar on the self-test's ``retained`` (share of the outline's own
#: patches its re-draw kept) or on recovered - (1 - retained) (band taken out minus outline
#: taken out: a re-draw that cuts everything scores 0 there).
GUARDS: dict[str, tuple[float, float | None, float | None, float]] = {
    "rim<0.6 (issue 4)": (0.6, None, None, 0.6),
    "rim<0.6 & self-test>=0.5": (0.6, 0.5, None, 0.6),
    "rim<0.6 & self-test>=0.7": (0.6, 0.7, None, 0.6),
    "rim<0.75 & self-test>=0.5": (0.75, 0.5, None, 0.6),
    **{
        f"rim<0.6 & self-test>=0.5 & agree<={a:.2f}": (0.6, 0.5, a, 0.6)
        for a in (0.76, 0.78, 0.8, 0.82, 0.84, 0.86, 0.88)
    },
    "rim<0.6 & self-test>=0.5, adds>0.8 (chosen)": (0.6, 0.5, None, 0.8),
    "rim<0.6 & self-test>=0.5, adds>0.8 & agree<=0.80": (0.6, 0.5, 0.8, 0.8),
    "rim<0.6, adds>0.8": (0.6, None, None, 0.8),
    "rim<0.75 & self-test>=0.5, adds>0.8": (0.75, 0.5, None, 0.8),
    "rim<0.6 & self-test>=0.5, no adds": (0.6, 0.5, None, 1.0),
    "never re-draw": (-1.0, None, None, 0.6),
    "any rim, adds>0.8": (float("inf"), None, None, 0.8),
    "any rim & self-test>=0.5, adds>0.8": (float("inf"), 0.5, None, 0.8),
}
#: name -> (guard rule it extends, bar on retained, bar on recovered - (1 - retained))
SELF_TEST_BALANCE: dict[str, tuple[str, float | None, float | None]] = {
    **{
        f"chosen & retained>={t:.1f}": ("rim<0.6 & self-test>=0.5, adds>0.8 (chosen)", t, None)
        for t in (0.5, 0.6, 0.7, 0.8)
    },
    **{
        f"chosen & balance>={t:.1f}": ("rim<0.6 & self-test>=0.5, adds>0.8 (chosen)", None, t)
        for t in (0.2, 0.3, 0.4, 0.5)
    },
}


#: name -> guard rule it extends with the self-test's comparison (stop 16): re-draw only where
#: the test's re-draw gave the pathologist's outline back better than the test's edit did
#: (Youden's J: band taken out + outline kept - 1; no threshold)
SELF_TEST_J: dict[str, str] = {
    "chosen & J(redraw)>J(edit)": "rim<0.6 & self-test>=0.5, adds>0.8 (chosen)",
    "rim<0.6 & J(redraw)>J(edit), adds>0.8": "rim<0.6, adds>0.8",
    "any rim & J(redraw)>J(edit), adds>0.8": "any rim, adds>0.8",
    "any rim & self-test>=0.5 & J(redraw)>J(edit)": "any rim & self-test>=0.5, adds>0.8",
}


CHOSEN = "rim<0.6 & self-test>=0.5, adds>0.8 (chosen)"
#: the chosen guard with its re-draw's cuts limited to ``cap`` patches: name -> column
CAPPED = {f"chosen, re-draw cuts <= {cap:g} patch": f"redraw_cap{cap:g}" for cap in CAPS}


def j_better(r: dict[str, Any]) -> bool:
    """Did slide case ``r``'s self-test re-draw give the outline back better than its edit?"""
    keys = ("self_test", "self_test_retained", "self_test_edit", "self_test_edit_retained")
    if any(r.get(k) is None for k in keys):
        return False
    redraw = r["self_test"] + r["self_test_retained"]
    return bool(redraw > r["self_test_edit"] + r["self_test_edit_retained"])


def _key(name: str, add: float) -> str:
    return name if add == 0.6 else f"{name}_add{add:g}"


def redraws(
    r: dict[str, Any], rim_below: float, st_min: float | None, agree: float | None, add: float
) -> bool:
    """Would this guard rule re-draw slide case ``r``?"""
    if r["rim"] is None or r["rim"] >= rim_below:
        return False
    if st_min is not None and not passes(r, st_min):
        return False
    return agree is None or r[_key("agree", add)] <= agree


def passes(r: dict[str, Any], st_min: float | None) -> bool:
    """Did slide case ``r`` pass the self-test (at ``st_min``)?"""
    return st_min is not None and r["self_test"] is not None and r["self_test"] >= st_min


def redraw_move(coarse: np.ndarray, redrawn: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    """How far a re-draw moves the outline, in patches: the patches it takes out of and adds
    to the coarse outline per patch along the outline (inside, within one patch of it), and
    the patch-level Dice of the two."""
    c, r = coarse.astype(bool), redrawn.astype(bool)
    edge = max(1, int((c & (depth < 1.0)).sum()))
    return {
        "move_in": float((c & ~r).sum() / edge),
        "move_out": float((r & ~c).sum() / edge),
        "agree": float(2 * (c & r).sum() / max(1, c.sum() + r.sum())),
    }


#: a slide case: benchmark, grid name, patch side (µm or "auto"), noise level, seed
Case = tuple[str, str, Any, str, int]


class Scored(NamedTuple):
    """One slide case's features and the slide's MIL scores, as the engine trains them."""

    d: SlideFeatures
    labels: np.ndarray  # the coarse outline's patch labels
    x: np.ndarray  # the features, standardised per slide
    p: np.ndarray  # the MIL scores
    classifier: ClassifierSettings


def part_cases(
    data: Path, work: Path, seeds: list[int], part_name: str = "tune"
) -> Iterator[tuple[Any, Any, Case]]:
    """Every slide case of a part: the built slide, its simulated coarse outline, the case."""
    for b in H.BENCHMARKS:
        yield from spec_cases(data, work, H.part_spec(H.BENCHMARKS[b], part_name), seeds)


def spec_cases(
    data: Path, work: Path, spec: Any, seeds: list[int], first: int = 0
) -> Iterator[tuple[Any, Any, Case]]:
    """The slide cases of benchmark ``spec``'s slides (its part's), from slide ``first`` on:
    both grids, every noise level, every seed."""
    part = H.PARTS[spec.part or ""]
    for s in H.build_part_cohort(data, work, spec)[first:]:
        for grid_name, pum in (("benchmark", spec.patch_um), ("auto", "auto")):
            for level in ("mild", "moderate", "severe"):
                for seed in seeds:
                    coarse = simulate_coarse(
                        s.truth, s.tissue, level, part.coarse_seed + seed, s.mpp, frame=s.size
                    )
                    yield s, coarse, (spec.kind, grid_name, pum, level, seed)


def scored(s: Any, coarse: Any, pum: Any, seed: int, enc: Any, cache: Path) -> Scored:
    """Slide ``s`` with outline ``coarse`` on a ``pum`` grid: features (embedded where the
    cache lacks them) and one MIL model's scores, seeded by ``seed``."""
    settings = RefineSettings(grid=GridSettings(patch_um=pum), cache_dir=cache).with_seed(seed)
    item = SlideInput(s.path, coarse, name=s.name)
    d = slide_grid(item, settings, enc, {"read": 0.0, "embed": 0.0})
    if d.features is None:
        embed_slide(d, settings, enc, {"read": 0.0, "embed": 0.0}, False)
    c, _ = label_patches(item, d.grid, 0.5)
    x = standardise(d.embedded())
    p = mil_proba(x, c, settings.classifier, seed=seed * 100)
    return Scored(d, c, x, p, settings.classifier)


def slide_cases(
    data: Path,
    work: Path,
    seeds: list[int],
    part_name: str = "tune",
    skip_self_test: bool = False,
    encoder: str = "efficientnet-lite0",
) -> list[dict[str, Any]]:
    rows = []
    cache = work / "cache"
    enc = build_encoder(encoder, cache)
    for s, coarse, case in part_cases(data, work, seeds, part_name):
        row = case_row(s, coarse, case, enc, cache, skip_self_test)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def case_row(
    s: Any,
    coarse: Any,
    case: Case,
    enc: Any,
    cache: Path,
    skip_self_test: bool,
) -> dict[str, Any]:
    """Slide ``s`` with outline ``coarse``, one MIL model: every column the rules judge."""
    bench, grid_name, pum, level, seed = case
    truth = H.slide_truth(s)

    def dice(g: Any) -> float:
        return pixel_metrics(g, s.truth, truth.tissue, truth.downsample)["dice"]

    d, c, x, p, classifier = scored(s, coarse, pum, seed, enc, cache)
    row: dict[str, Any] = {
        "bench": bench,
        "grid": grid_name,
        "patch_um": d.grid_settings.side_um,
        "level": level,
        "seed": seed,
        "slide": s.name,
        "coarse": dice(coarse),
    }
    frame = (d.info.width, d.info.height)
    rim = rim_scores(p, c, outline_depth(d.grid, coarse))
    row["rim"] = None if rim is None else rim.level
    row["separation"] = None if rim is None else rim.deep - rim.outside
    # Every rule off that the columns compare (islands and tight outlines, stop 17, included):
    # each column adds only what it names.
    base = RegionSettings(
        edit_cut_below=0.4,  # the edit of stops 13-19, whose cut bars the columns compare
        min_separation=0.0,
        redraw_add_above=0.6,
        redraw_depth=None,
        island_above=None,
        tight_above=None,
        tight_fine_above=None,
        near_add_above=None,
        missed_min_um2=None,
        redraw_outside=None,
        redraw_inside=None,
    )
    row.update(outline_columns(coarse, d, p, c, rim, base, dice))
    if skip_self_test:
        return row
    test = redraw_self_test(
        coarse, d.grid, x, d.info.mpp, classifier, base, frame,
        seed * 100 + 50,
    )  # fmt: skip
    row["self_test"] = test.recovered
    row["self_test_retained"] = test.retained
    row["self_test_edit"] = test.edit_recovered
    row["self_test_edit_retained"] = test.edit_retained
    return row


def outline_columns(
    coarse: Any,
    d: Any,
    p: np.ndarray,
    c: np.ndarray,
    rim: Any,
    base: RegionSettings,
    dice: Callable[[Any], float],
) -> dict[str, Any]:
    """Dice of the edited outline under each of EDITS and of the re-draws, and how far the
    re-draw moves the outline."""
    row: dict[str, Any] = {}
    frame = (d.info.width, d.info.height)
    # "redraw": issue 4's re-draw (adds above 0.6); REDRAW_ADDS: the others
    for name, (cut, add) in EDITS.items():
        rs = replace(base, outline="edit", remove_below=cut, edit_cut_below=cut, add_above=add)
        out = refine_outline(coarse, d.grid, p, c, d.info.mpp, rs, frame)
        row[name] = dice(out.regions)
    rs = replace(base, outline="redraw")
    out = refine_outline(coarse, d.grid, p, c, d.info.mpp, rs, frame)
    row["redraw"] = dice(out.regions)
    if rim is not None:
        depth = outline_depth(d.grid, coarse)
        deep = c.astype(bool) & (depth >= DEEP)
        scores = SlideScores(coarse, d.grid, p, c, d.info.mpp, frame)
        _, lab = redraw_outline(scores, rim, base)
        kept = float(np.mean(lab[deep] == 1)) if deep.any() else None
        row["deep_kept"] = kept
        row["area_kept"] = float(lab.sum() / max(1, c.sum()))
        row.update(redraw_move(c, lab, depth))
        for cap in CAPS:  # cuts deeper than `cap` patches left to the edit
            capped = replace(base, redraw_add_above=0.8, redraw_depth=cap)
            row[f"redraw_cap{cap:g}"] = dice(redraw_outline(scores, rim, capped)[0])
        row.update(island_columns(scores, rim, base, dice))
        for add in REDRAW_ADDS:  # stricter additions outside the outline
            g, lab = redraw_outline(scores, rim, replace(base, redraw_add_above=add))
            row[f"redraw_add{add:g}"] = dice(g)
            row[f"agree_add{add:g}"] = redraw_move(c, lab, depth)["agree"]
    return row


def island_columns(
    scores: SlideScores, rim: Any, base: RegionSettings, dice: Callable[[Any], float]
) -> dict[str, float]:
    """Dice of the chosen edit and of the capped re-draw, each with the islands of ISLANDS."""
    edit = refine_outline(
        scores.coarse, scores.grid, scores.proba, scores.coarse_labels, scores.mpp,
        replace(base, outline="edit"), scores.frame,
    ).regions  # fmt: skip
    capped = redraw_outline(scores, rim, replace(base, redraw_add_above=0.8, redraw_depth=1.0))[0]
    row: dict[str, float] = {}
    for above, gap in ISLANDS:
        found = island_additions(scores, replace(base, island_above=above, island_gap=gap))
        row[f"isl{above:g}g{gap:g}"] = dice(edit.union(found))
        row[f"cap1_isl{above:g}g{gap:g}"] = dice(capped.union(found))
    return row


def balanced(r: dict[str, Any], retain: float | None, balance: float | None) -> bool:
    """Does slide case ``r``'s self-test clear the bars on what its re-draw kept?"""
    st, kept = r.get("self_test"), r.get("self_test_retained")
    if st is None or kept is None:
        return retain is None and balance is None
    return (retain is None or kept >= retain) and (balance is None or st - (1 - kept) >= balance)


def judge(rows: list[dict[str, Any]]) -> list[str]:
    """Per edit x guard rule: per cell and overall mean / worst gain over coarse."""
    lines = []
    rules: dict[
        str,
        tuple[tuple[float, float | None, float | None, float], float | None, float | None, bool],
    ] = {name: (rule, None, None, False) for name, rule in GUARDS.items()}
    if any("self_test_retained" in r for r in rows):
        rules |= {n: (GUARDS[g], t, b, False) for n, (g, t, b) in SELF_TEST_BALANCE.items()}
    if any("redraw_cap1" in r for r in rows):
        rules |= {n: (GUARDS[CHOSEN], None, None, False) for n in CAPPED}
    if any("self_test_edit" in r for r in rows):
        rules |= {n: (GUARDS[g], None, None, True) for n, g in SELF_TEST_J.items()}
    if any("isl0.6g1" in r for r in rows):
        lines += judge_islands(rows)
    for edit in EDITS:
        for gname, (rule, retain, balance, compare) in rules.items():
            cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
            for r in rows:
                redraw = redraws(r, *rule) and balanced(r, retain, balance)
                redraw = redraw and (not compare or j_better(r))
                column = CAPPED.get(gname, _key("redraw", rule[3]))
                v = r[column] if redraw else r[edit]
                cells[(r["bench"], r["grid"], r["level"])].append(v - r["coarse"])
            lines += rule_lines(f"edit {edit:9s} guard {gname:40s}", cells)
    return lines


def rule_lines(head: str, cells: dict[tuple[str, str, str], list[float]]) -> list[str]:
    """One rule's judgement: overall mean / worst gain over coarse, then per cell."""
    gains = [g for v in cells.values() for g in v]
    lines = [
        f"{head} mean {np.mean(gains):+.4f} "
        f"worst {min(gains):+.3f} worse-by-0.02 {sum(g < -0.02 for g in gains)}"
    ]
    for k in sorted(cells):
        v = cells[k]
        lines.append(
            f"    {k[0]:10s} {k[1]:9s} {k[2]:8s} mean {np.mean(v):+.3f} worst {min(v):+.3f}"
        )
    return lines


class IslandRule(NamedTuple):
    """One engine judged by :func:`judge_islands`."""

    name: str
    #: the island column (None: no islands)
    column: str | None = None
    #: islands on re-drawn slides only (elsewhere the chosen edit)
    redrawn_only: bool = False
    #: rim level at or above which an outline is left as drawn (None: never)
    tight: float | None = None
    #: None: the self-test decides the re-draw; else the rim level below which every outline
    #: gets the capped re-draw and the self-test decides only its islands (stop 18)
    loose_below: float | None = None
    #: the island column for edited outlines whose slide passes the self-test (stop 19)
    edit_islands: str | None = None


def judge_islands(rows: list[dict[str, Any]]) -> list[str]:
    """The chosen guard (edit e40/80, capped re-draw) with each of ISLANDS added, on every
    slide or only on the slides the guard re-draws, per cell and overall, beside the chosen
    guard alone; then the chosen islands with tight outlines (rim level >= each of TIGHT)
    left as drawn instead of edited; then that engine with the self-test deciding only the
    islands (stop 18): a loose slide that fails it is re-drawn all the same, capped, without
    islands, with "loose" meaning a rim level below 0.6 or each of LOOSE_BARS; stop 18's
    engine with each of TIGHT (stop 19: to choose that bar for another encoder's scores);
    last, stop 18's engine with islands above each of EDIT_ISLANDS also added to edited
    outlines whose slide passes the self-test (stop 19)."""
    rim_below, st_min, agree, add = GUARDS[CHOSEN]
    rules = [IslandRule("chosen")]
    for a, g in ISLANDS:
        name, column = f"chosen + islands >{a:g}, gap {g:g}", f"isl{a:g}g{g:g}"
        rules += [IslandRule(name, column), IslandRule(f"{name}, re-drawn only", column, True)]
    # stop 17: the islands chosen, and outlines whose rim level is at least `tight` left as drawn
    chosen = f"isl{CHOSEN_ISLANDS[0]:g}g{CHOSEN_ISLANDS[1]:g}"
    for t in TIGHT:
        rules.append(
            IslandRule(f"chosen + islands (chosen), rim>={t:g} left as drawn", chosen, True, t)
        )
    name = "stop 17's engine, self-test decides the islands only"
    rules.append(IslandRule(name, chosen, True, 0.9, rim_below))
    rules += [
        IslandRule(f"{name}, loose below rim {b:g}", chosen, True, 0.9, b) for b in LOOSE_BARS
    ]
    # stop 19: stop 18's engine with each tight bar (for scores of another encoder)
    rules += [
        IslandRule(f"stop 18's engine, rim>={t:g} left as drawn", chosen, True, t, rim_below)
        for t in TIGHT
    ]
    rules += [
        IslandRule(
            f"stop 18's engine + islands >{a:g} on edits passing the self-test", chosen, True,
            0.9, rim_below, f"isl{a:g}g{CHOSEN_ISLANDS[1]:g}",
        )
        for a in EDIT_ISLANDS
    ]  # fmt: skip
    lines = []
    for name, suffix, redrawn_only, tight, loose_below, edit_islands in rules:
        bar = rim_below if loose_below is None else loose_below
        cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for r in rows:
            redraw = redraws(r, bar, st_min, agree, add)
            loose = loose_below is not None and redraws(r, bar, None, agree, add)
            if suffix is None:
                v = r["redraw_cap1"] if redraw else r["e40/80"]
            elif redraw:
                v = r[f"cap1_{suffix}"]
            elif loose:
                v = r["redraw_cap1"]
            elif tight is not None and r["rim"] is not None and r["rim"] >= tight:
                v = r["coarse"]
            elif edit_islands is not None and passes(r, st_min):
                v = r[edit_islands]
            else:
                v = r["e40/80"] if redrawn_only else r[suffix]
            cells[(r["bench"], r["grid"], r["level"])].append(v - r["coarse"])
        lines += rule_lines(f"islands   guard {name:48s}", cells)
    return lines


def study_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a tuning study (its docstring's first paragraph, the shared data,
    and the work folder of ``benchmarks.run``'s built slides and feature cache)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    return ap


def main() -> None:
    ap = study_parser(__doc__)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--part", choices=("tune", "report"), default="tune")
    ap.add_argument("--skip-self-test", action="store_true", help="faster; no self-test column")
    ap.add_argument("--encoder", default="efficientnet-lite0", help="the scores' encoder")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/tune-guard.json")
    ap.add_argument("--judge", type=Path, default=None, help="only judge the rows of that JSON")
    a = ap.parse_args()
    if a.judge:
        rows = json.loads(a.judge.read_text())
        a.judge.with_suffix(".txt").write_text("\n".join(judge(rows)) + "\n")
        return
    rows = slide_cases(a.data, a.work, list(range(a.seeds)), a.part, a.skip_self_test, a.encoder)
    a.out.write_text(json.dumps(rows, indent=1) + "\n")
    a.out.with_suffix(".txt").write_text("\n".join(judge(rows)) + "\n")


if __name__ == "__main__":
    main()
