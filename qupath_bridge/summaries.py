"""The rows a run reports for each slide or project image, and the metrics it reports, as
frozen dataclasses: the CLI reads their attributes, summary.json is their :func:`asdict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import shapely

from engine.pipeline import RefineResult, RefineSettings, SlideInput, SlideResult

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True)
class OutlineColumns:
    """The columns the slide and project rows share (:func:`result_fields`): patches, coarse
    and refined area (mm²), share of patches relabelled, and how the outline was drawn.

    A row puts its name first by listing a one-field dataclass after this one among its
    bases: dataclasses lay fields out base by base from the last, and the field order is
    summary.json's key order."""

    patches: int
    patch_um: float
    coarse_mm2: float
    refined_mm2: float
    relabelled: float
    outline: str


@dataclass(frozen=True)
class _SlideName:
    slide: str


@dataclass(frozen=True)
class SlideRow(OutlineColumns, _SlideName):
    """One slide of a ``slide`` or ``demo`` run: ``slide``, the :class:`OutlineColumns`, then
    these."""

    regions: int
    cached: bool
    #: the classifier's scores: "trained" in this run or "cached" from an earlier one
    classifier: str
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    """:func:`engine.evaluation.evaluate`'s metrics of one outline against the truth."""

    pixel: dict[str, float]
    patch: dict[str, float]
    pixel_um: float
    tissue_pixels: int
    patch_um: float
    patches: int
    truth_area_mm2: float
    pred_area_mm2: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def slide_rows(
    result: RefineResult, items: list[SlideInput], seconds: float
) -> tuple[SlideRow, ...]:
    """Per-slide summary: patches, coarse and refined area, share relabelled, and whether the
    coarse outline was edited or re-drawn, and why (its verdict)."""
    return tuple(
        SlideRow(
            slide=r.name,
            **result_fields(r, item.coarse, r.regions),
            regions=len(getattr(r.regions, "geoms", [])),
            cached=r.cached,
            classifier=r.classifier,
            seconds=round(seconds, 2),
        )
        for item, r in zip(items, result.slides, strict=True)
    )


def result_fields(
    r: SlideResult, coarse: shapely.Geometry, regions: shapely.Geometry
) -> dict[str, Any]:
    """A slide's :class:`OutlineColumns`, as keywords for a row."""
    um2 = r.info.mpp**2
    return {
        "patches": len(r.grid),
        "patch_um": r.grid_settings.side_um,
        "coarse_mm2": round(shapely.area(coarse) * um2 / 1e6, 4),
        "refined_mm2": round(shapely.area(regions) * um2 / 1e6, 4),
        "relabelled": round(r.relabelled_share, 4),
        "outline": r.outline,
    }


def run_json(run: DataclassInstance) -> dict[str, Any]:
    """A run's summary.json: its fields, less the Dask ones (``failed``, ``dask``) when it ran
    in one process."""
    d = asdict(run)
    if d["dask"] is None:
        del d["failed"], d["dask"]
    return d


def settings_dict(settings: RefineSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["cache_dir"] = str(settings.cache_dir) if settings.cache_dir else None
    return d


def rounded(timings: dict[str, float], digits: int) -> dict[str, float]:
    return {k: round(v, digits) for k, v in timings.items()}
