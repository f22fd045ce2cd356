"""QuPath GeoJSON in and out.

QuPath exports objects as a FeatureCollection (0.4+) or a bare list of Features (0.2-0.3),
with ``classification`` as an object ``{"name", "color"}`` (or ``colorRGB`` in old versions)
or a plain string in hand-written files, and ``measurements`` as a map or a list of
``{"name", "value"}``. We read all of these. What we write is what QuPath's
*File > Import objects* and ``importObjectsFromFile`` accept: detections for the refined
regions, tiles for per-patch results with a ``p_<class>`` measurement, a ``classification``
that always carries a colour (QuPath throws on one without) and a fresh UUID ``id`` each.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geojson
import numpy as np
import shapely
from shapely.geometry import mapping, shape

from engine.errors import AnnotationError
from qupath_bridge.classes import class_matches, probability_key

log = logging.getLogger("qupath_refine")

DEFAULT_COLORS = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
}
AREAL = ("Polygon", "MultiPolygon")


@dataclass
class QuPathObject:
    """One object of a QuPath GeoJSON file, geometry in level-0 px of the image."""

    geometry: shapely.Geometry
    object_type: str = "annotation"
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    name: str | None = None
    locked: bool = False
    id: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)


def _classification(props: dict[str, Any]) -> tuple[str | None, tuple[int, int, int] | None]:
    c = props.get("classification")
    if c is None:
        return None, None
    if isinstance(c, str):
        return c, None
    if isinstance(c, dict):
        name = c.get("name")
        names = c.get("names")  # QuPath 0.4+ may also list derived class parts
        if name is None and isinstance(names, list):
            name = ": ".join(str(n) for n in names)
        color = c.get("color")
        if isinstance(color, list) and len(color) >= 3:
            return name, (int(color[0]), int(color[1]), int(color[2]))
        rgb = c.get("colorRGB")
        if isinstance(rgb, int):
            rgb &= 0xFFFFFF
            return name, ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
        return name, None
    return str(c), None


def _measurements(props: dict[str, Any]) -> dict[str, float]:
    m = props.get("measurements")
    if isinstance(m, dict):
        return {str(k): float(v) for k, v in m.items() if isinstance(v, (int, float))}
    if isinstance(m, list):
        return {
            str(e["name"]): float(e["value"])
            for e in m
            if isinstance(e, dict) and "name" in e and isinstance(e.get("value"), (int, float))
        }
    return {}


def _features(doc: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, dict) and doc.get("type") in AREAL:
        feats = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise AnnotationError(
            f"{path.name} is JSON but not QuPath GeoJSON (expected a FeatureCollection or a list "
            "of Features); export annotations with File > Export objects as GeoJSON."
        )
    if not all(isinstance(f, dict) and f.get("type") == "Feature" for f in feats):
        raise AnnotationError(f"{path.name}: every entry must be a GeoJSON Feature.")
    return feats


def read_objects(path: str | Path) -> list[QuPathObject]:
    """All objects with an areal geometry in a QuPath GeoJSON file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"Annotation file not found: {path}")
    try:
        doc = geojson.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise AnnotationError(f"{path.name} is not GeoJSON ({e}).") from None
    out = []
    skipped = 0
    for i, f in enumerate(_features(doc, path)):
        geom_doc = f.get("geometry")
        if not geom_doc or geom_doc.get("type") not in (*AREAL, "GeometryCollection"):
            skipped += 1  # points and lines have no area to refine
            continue
        try:
            geom = shape(geom_doc)
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise AnnotationError(
                f"{path.name}: feature {i} has a malformed geometry ({e})."
            ) from None
        geom = _areal(geom)
        if geom.is_empty:
            skipped += 1
            continue
        props = f.get("properties") or {}
        name, color = _classification(props)
        if not geom.is_valid:
            log.warning(
                "%s: feature %d (%s) is not a valid polygon (%s); repaired with make_valid",
                path.name,
                i,
                name or "unclassified",
                shapely.is_valid_reason(geom),
            )
            geom = _areal(shapely.make_valid(geom))
        out.append(
            QuPathObject(
                geometry=geom,
                object_type=str(props.get("objectType", "annotation")).lower(),
                classification=name,
                color=color,
                name=props.get("name"),
                locked=bool(props.get("isLocked", False)),
                id=f.get("id") or props.get("id"),
                measurements=_measurements(props),
            )
        )
    if skipped:
        log.info("%s: skipped %d objects without area (points, lines)", path.name, skipped)
    return out


def _areal(geom: shapely.Geometry) -> shapely.Geometry:
    """Only the polygonal parts of a geometry."""
    if geom.geom_type in AREAL:
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in AREAL]
    return shapely.unary_union(parts) if parts else shapely.Polygon()


def select_geometry(
    objects: Iterable[QuPathObject], class_name: str, source: str, object_types=("annotation",)
) -> shapely.Geometry:
    """Union of the annotations of ``class_name``; an error listing the classes present."""
    objects = list(objects)
    chosen = [
        o.geometry
        for o in objects
        if o.object_type in object_types and class_matches(o.classification, class_name)
    ]
    if not chosen:
        present = sorted(
            {o.classification or "(unclassified)" for o in objects if o.object_type in object_types}
        )
        listing = ", ".join(present) if present else "none"
        raise AnnotationError(
            f"{source}: no annotation of class {class_name!r}. Classes present: {listing}. "
            "Pass --class with one of them."
        )
    return shapely.make_valid(shapely.unary_union(chosen))


def clip_to_frame(geom: shapely.Geometry, width: int, height: int, source: str) -> shapely.Geometry:
    """Annotations are in level-0 px; those wholly outside the image are an error, those
    partly outside are clipped with a warning."""
    frame = shapely.box(0, 0, width, height)
    if not geom.intersects(frame):
        b = [round(v) for v in geom.bounds]
        raise AnnotationError(
            f"{source}: the annotations (bounds x {b[0]}..{b[2]}, y {b[1]}..{b[3]} px) lie "
            f"outside the slide ({width} x {height} px). Were they exported from another image?"
        )
    if not frame.contains(geom):
        log.warning("%s: annotations reach outside the slide; clipped to its frame", source)
        geom = _areal(geom.intersection(frame))
    return geom


def classification(name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    return {"name": name, "color": [int(c) for c in color]}


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def feature(
    geom: shapely.Geometry,
    object_type: str,
    cls: dict[str, Any],
    measurements: dict[str, float] | None = None,
    name: str | None = None,
) -> geojson.Feature:
    props: dict[str, Any] = {"objectType": object_type, "classification": cls, "isLocked": False}
    if name:
        props["name"] = name
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items()}
    return geojson.Feature(id=str(uuid.uuid4()), geometry=mapping(geom), properties=props)


def refined_features(
    regions: shapely.Geometry,
    tiles_xy: np.ndarray | None,
    tile_size: float,
    proba: np.ndarray | None,
    class_name: str,
    refined_class: str,
    color: tuple[int, int, int],
    mpp: float | None = None,
) -> list[geojson.Feature]:
    """Refined regions as detections (one per connected polygon, so each can be deleted on
    its own in QuPath) and, when given, patches as tiles with ``p_<class>``."""
    cls = classification(refined_class, color)
    feats = []
    for poly in _polygons(regions):
        m = {"Area µm^2": poly.area * mpp * mpp} if mpp else None
        feats.append(feature(poly, "detection", cls, m))
    if tiles_xy is not None and proba is not None:
        x, y = tiles_xy[:, 0], tiles_xy[:, 1]
        boxes = shapely.box(x, y, x + tile_size, y + tile_size)
        key = probability_key(class_name)
        for b, p in zip(boxes, proba, strict=True):
            feats.append(feature(b, "tile", cls, {key: float(p)}))
    return feats


def write_features(path: str | Path, feats: list[geojson.Feature]) -> Path:
    """A FeatureCollection written atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        geojson.dump(geojson.FeatureCollection(feats), f)
    tmp.replace(path)
    return path


def annotation_features(
    geom: shapely.Geometry, class_name: str, color: tuple[int, int, int] | None = None
) -> list[geojson.Feature]:
    """Annotations in QuPath's format (for the demo's coarse input and for tests)."""
    cls = classification(class_name, color or DEFAULT_COLORS.get(class_name, (200, 0, 0)))
    return [feature(p, "annotation", cls) for p in _polygons(geom)]
