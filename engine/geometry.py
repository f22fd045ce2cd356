"""The one rule for taking a geometry apart into its polygons."""

from __future__ import annotations

import shapely


def polygons(geom: shapely.Geometry | None) -> list[shapely.Polygon]:
    """The non-empty polygons of any geometry, nested collections flattened; lines, points
    and None give none (``make_valid`` and intersections return such mixed collections)."""
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    return [p for g in getattr(geom, "geoms", []) for p in polygons(g)]
