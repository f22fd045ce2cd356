"""The columns a run reports for each slide or project image, shared by the jobs."""

from __future__ import annotations

from dataclasses import asdict

import shapely

from engine.pipeline import RefineResult, RefineSettings, SlideInput, SlideResult


def slide_rows(result: RefineResult, items: list[SlideInput], seconds: float) -> list[dict]:
    """Per-slide summary: patches, coarse and refined area, share relabelled, and whether the
    coarse outline was edited or, judged loose, re-drawn."""
    rows = []
    for item, r in zip(items, result.slides, strict=True):
        rows.append(
            {
                "slide": r.name,
                **result_fields(r, item.coarse, r.regions),
                "regions": len(getattr(r.regions, "geoms", [])),
                "cached": r.cached,
                "seconds": round(seconds, 2),
            }
        )
    return rows


def result_fields(r: SlideResult, coarse: shapely.Geometry, regions: shapely.Geometry) -> dict:
    """The columns the slide and project summaries share: patches, coarse and refined area
    (mm²), share of patches relabelled, and how the outline was drawn."""
    um2 = r.info.mpp**2
    return {
        "patches": len(r.grid),
        "patch_um": r.grid_settings.side_um,
        "coarse_mm2": round(shapely.area(coarse) * um2 / 1e6, 4),
        "refined_mm2": round(shapely.area(regions) * um2 / 1e6, 4),
        "relabelled": round(r.relabelled_share, 4),
        "outline": r.outline,
    }


def settings_dict(settings: RefineSettings) -> dict:
    d = asdict(settings)
    d["cache_dir"] = str(settings.cache_dir) if settings.cache_dir else None
    return d
