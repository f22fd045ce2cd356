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

from collections.abc import Callable
from typing import Any

from shapely.geometry import MultiPolygon

from benchmarks.edit_islands import island_study
from engine.regions import RegionSettings, SlideScores, _in_frame, island_additions

#: floors on an island's area tried, mm² (0: every island, stop 21's study)
FLOORS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)


def floor_columns(
    sc: SlideScores, edit: MultiPolygon, dice: Callable[[Any], float]
) -> tuple[dict[str, Any], bool]:
    """The islands' areas (mm²) and the edit's Dice with those of each floor or more added."""
    isl = island_additions(sc, RegionSettings())
    mm2 = [g.area * sc.mpp**2 / 1e6 for g in isl.geoms]
    row: dict[str, Any] = {"island_mm2": mm2}
    for f in FLOORS:
        kept = MultiPolygon([g for g, m in zip(isl.geoms, mm2, strict=True) if m >= f])
        row[f"isl{f:g}"] = dice(_in_frame(edit.union(kept), sc.frame))
    return row, bool(mm2)


def main() -> None:
    island_study(__doc__ or "", floor_columns, [(f">={f:g} mm2", f"isl{f:g}") for f in FLOORS])


if __name__ == "__main__":
    main()
