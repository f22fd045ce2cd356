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

import codecs
import json
import logging
import math
import re
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import geojson
import ijson
import numpy as np
import shapely
import shapely.errors
from shapely.geometry import mapping, shape

from engine.errors import AnnotationError
from engine.files import replaced_atomically
from engine.geometry import polygons
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
        name = None if name is None else str(name)
        color = c.get("color")
        if isinstance(color, list) and len(color) >= 3 and all(_is_int(v) for v in color[:3]):
            return name, (int(color[0]) & 255, int(color[1]) & 255, int(color[2]) & 255)
        rgb = c.get("colorRGB")
        if _is_int(rgb):
            rgb &= 0xFFFFFF
            return name, ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
        return name, None
    return str(c), None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> float | None:
    """A finite measurement value, else None (QuPath writes NaN measurements as null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _measurements(props: dict[str, Any]) -> dict[str, float]:
    m = props.get("measurements")
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(m, dict):
        pairs = m.items()
    elif isinstance(m, list):
        pairs = ((e.get("name"), e.get("value")) for e in m if isinstance(e, dict))
    else:
        return {}
    return {
        str(k): v for k, v in ((k, _number(v)) for k, v in pairs) if k is not None and v is not None
    }


#: Deepest JSON nesting we parse. QuPath's GeoJSON needs under 20 levels; the streaming parser
#: keeps a path string per level, so memory grows with the square of the depth (a 100,000-deep
#: file would need tens of GB): anything deeper than this is refused before it is parsed.
MAX_DEPTH = 256
_BRACKETS_AND_QUOTES = bytes(c for c in range(256) if c not in b'"[]{}')
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


class _DepthGuard:
    """A binary file for ijson that refuses nesting deeper than :data:`MAX_DEPTH`.

    Each chunk is reduced (in C: ``re.sub``, ``bytes.translate``) to its quotes and brackets,
    and numpy tracks whether each bracket lies inside a string and the depth it reaches; the
    state carries from chunk to chunk. About 2 s per GB, a tenth of the parse itself.
    """

    def __init__(self, f: BinaryIO, source: str) -> None:
        self.f, self.source = f, source
        self.depth, self.in_string, self.tail = 0, False, b""

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self._scan(self.tail + b)
        return b

    def _scan(self, b: bytes) -> None:
        self.tail = b""
        if b"\\" in b:
            b = _ESCAPE.sub(b"", b)  # escapes removed: an escaped quote does not end a string
            if b.endswith(b"\\"):  # an escape split between two reads
                b, self.tail = b[:-1], b"\\"
        k = np.frombuffer(b.translate(None, _BRACKETS_AND_QUOTES), np.uint8)
        if not len(k):
            return
        quote = k == ord('"')
        # inside a string at each byte: parity of the quotes before it
        inside = ((np.cumsum(quote) - quote) & 1).astype(bool) ^ self.in_string
        self.in_string = bool(inside[-1] ^ quote[-1])
        opens = (k == ord("[")) | (k == ord("{"))
        step = np.where(inside | quote, 0, np.where(opens, 1, -1))
        depth = self.depth + np.cumsum(step)
        if depth.max() > MAX_DEPTH:
            raise AnnotationError(
                f"{self.source}: JSON nested more than {MAX_DEPTH} levels deep; this is not "
                "QuPath GeoJSON (export with File > Export objects as GeoJSON)."
            )
        self.depth = int(depth[-1])


@contextmanager
def _json_file(path: Path) -> Iterator[_DepthGuard]:
    """The file as bytes for ijson, past a UTF-8 byte order mark (Windows editors add one)."""
    with path.open("rb") as f:
        if f.read(3) != codecs.BOM_UTF8:
            f.seek(0)
        yield _DepthGuard(f, path.name)


def _layout(path: Path) -> tuple[str, str | None]:
    """The top level of a JSON file without reading all of it: ("list", None), or ("map",
    its "type") with "features" checked to be a list. QuPath writes "type" first, so this
    stops after a few bytes."""
    with _json_file(path) as f:
        events = ijson.parse(f, use_float=True)
        _, event, _ = next(events)
        if event == "start_array":
            return "list", None
        if event != "start_map":
            return "scalar", None
        top_type: str | None = None
        features: str | None = None
        for prefix, event, value in events:
            if prefix == "type" and top_type is None:
                top_type = value if event == "string" else "?"
            elif prefix == "features" and features is None:
                features = event
            if top_type is not None and features is not None:
                break
    if top_type == "FeatureCollection" and features not in (None, "null", "start_array"):
        raise AnnotationError(
            f'{path.name}: "features" must be a list of GeoJSON Features, got a JSON '
            f"{_JSON_KINDS.get(features, features)}."
        )
    return "map", top_type


_JSON_KINDS = {"start_map": "object", "string": "string", "number": "number", "boolean": "boolean"}


def _features(path: Path) -> Iterator[Any]:
    """The Features of a QuPath GeoJSON file, one at a time (a cell export holds millions:
    only one is in memory at once)."""
    kind, top_type = _layout(path)
    with _json_file(path) as f:
        if kind == "list":  # QuPath 0.2-0.3: a bare list of Features
            yield from ijson.items(f, "item", use_float=True)
        elif top_type == "FeatureCollection":
            yield from ijson.items(f, "features.item", use_float=True)
        elif top_type == "Feature":
            yield from ijson.items(f, "", use_float=True)
        elif top_type in (*AREAL, "GeometryCollection"):
            for geom in ijson.items(f, "", use_float=True):
                yield {"type": "Feature", "geometry": geom, "properties": {}}
        else:
            raise AnnotationError(
                f"{path.name} is JSON but not QuPath GeoJSON (expected a FeatureCollection or a "
                "list of Features); export annotations with File > Export objects as GeoJSON."
            )


def read_objects(
    path: str | Path, object_types: Collection[str] | None = None
) -> list[QuPathObject]:
    """All objects with an areal geometry in a QuPath GeoJSON file.

    ``object_types`` (e.g. ``("annotation",)``) keeps only those: the others are skipped
    before their geometry is built, so a multi-GB cell export costs one streaming pass.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"Annotation file not found: {path}")
    if path.stat().st_size == 0:
        raise AnnotationError(f"{path.name} is empty: export the annotations again.")
    out: list[QuPathObject] = []
    skipped = 0
    try:
        for i, f in enumerate(_features(path)):
            obj = _object(f, i, path.name, object_types)
            if obj is None:
                skipped += 1
            else:
                out.append(obj)
    except ijson.JSONError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AnnotationError(f"{path.name} is not GeoJSON: invalid JSON ({detail}).") from None
    except OSError as e:
        raise AnnotationError(f"Cannot read {path}: {e.strerror or e}") from None
    if skipped:
        what = "of other types, or " if object_types is not None else ""
        log.info("%s: skipped %d objects %swithout area (points, lines)", path.name, skipped, what)
    return out


def _object(
    f: Any, i: int, source: str, object_types: Collection[str] | None
) -> QuPathObject | None:
    """One Feature as a :class:`QuPathObject`; None for one without area or not wanted."""
    if not isinstance(f, dict) or f.get("type") != "Feature":
        raise AnnotationError(
            f"{source}: entry {i} is not a GeoJSON Feature; every entry must be a GeoJSON Feature."
        )
    props = f.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise AnnotationError(f'{source}: feature {i} has "properties" that are not a JSON object.')
    object_type = str(props.get("objectType", "annotation")).lower()
    if object_types is not None and object_type not in object_types:
        return None  # skipped before its geometry is built: the cost of a cell export
    geom = _geometry(f.get("geometry"), i, source)
    if geom is None:
        return None
    name, color = _classification(props)
    if not geom.is_valid:
        log.warning(
            "%s: feature %d (%s) is not a valid polygon (%s); repaired with make_valid",
            source,
            i,
            name or "unclassified",
            shapely.is_valid_reason(geom),
        )
        geom = _areal(shapely.make_valid(geom))
    fid = f.get("id") or props.get("id")
    label = props.get("name")
    return QuPathObject(
        geometry=geom,
        object_type=object_type,
        classification=name,
        color=color,
        name=None if label is None else str(label),
        locked=props.get("isLocked") is True,
        id=None if fid is None else str(fid),
        measurements=_measurements(props),
    )


def _geometry(geom_doc: Any, i: int, source: str) -> shapely.Geometry | None:
    """Feature ``i``'s geometry, its areal part only; None when it has no area."""
    if geom_doc is None:
        return None
    if not isinstance(geom_doc, dict):
        raise AnnotationError(f'{source}: feature {i} has a "geometry" that is not a JSON object.')
    if geom_doc.get("type") not in (*AREAL, "GeometryCollection"):
        return None  # points and lines have no area to refine
    try:
        geom = shape(geom_doc)
    except (
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        shapely.errors.GEOSException,
    ) as e:
        raise AnnotationError(
            f"{source}: feature {i} has a malformed geometry ({_short(e)})."
        ) from None
    geom = _areal(geom)
    return None if geom.is_empty else geom


def _short(e: Exception, limit: int = 120) -> str:
    """An exception's message cut to fit one line (a malformed geometry can echo megabytes)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _areal(geom: shapely.Geometry) -> shapely.Geometry:
    """Only the polygonal parts of a geometry."""
    if geom.geom_type in AREAL:
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in AREAL]
    return shapely.unary_union(parts) if parts else shapely.Polygon()


def class_geometry(
    objects: Iterable[QuPathObject],
    class_name: str,
    object_types: Collection[str] = ("annotation",),
) -> shapely.Geometry | None:
    """Union of the objects of ``class_name`` (derived classes included, see
    :func:`class_matches`), or None if there are none: the one rule for every class option."""
    chosen = [
        o.geometry
        for o in objects
        if o.object_type in object_types and class_matches(o.classification, class_name)
    ]
    return shapely.make_valid(shapely.unary_union(chosen)) if chosen else None


def select_geometry(
    objects: Iterable[QuPathObject],
    class_name: str,
    source: str,
    object_types: Collection[str] = ("annotation",),
) -> shapely.Geometry:
    """Union of the annotations of ``class_name``; an error listing the classes present."""
    objects = list(objects)
    geom = class_geometry(objects, class_name, object_types)
    if geom is None:
        present = sorted(
            {o.classification or "(unclassified)" for o in objects if o.object_type in object_types}
        )
        listing = ", ".join(present) if present else "none"
        raise AnnotationError(
            f"{source}: no annotation of class {class_name!r}. Classes present: {listing}. "
            "Pass --class with one of them."
        )
    return geom


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


def union(geoms: list[shapely.Geometry]) -> shapely.Geometry | None:
    """The valid union of ``geoms``; None for none."""
    return shapely.make_valid(shapely.union_all(geoms)) if geoms else None


#: decimals the geojson package keeps of a coordinate (geojson.geometry.DEFAULT_PRECISION)
COORD_DIGITS = 6


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
    frame: tuple[int, int] | None = None,
) -> list[Any]:
    """Refined regions as detections (one per connected polygon, so each can be deleted on
    its own in QuPath) and, when given, patches as tiles with ``p_<class>``, clipped to the
    image (``frame`` = width, height: a patch at the right or bottom edge may reach past it,
    and QuPath rejects objects outside the image)."""
    cls = classification(refined_class, color)
    feats = []
    for poly in polygons(regions):
        m = {"Area µm^2": poly.area * mpp * mpp} if mpp else None
        feats.append(feature(poly, "detection", cls, m))
    if tiles_xy is not None and proba is not None:
        x, y = tiles_xy[:, 0], tiles_xy[:, 1]
        x1, y1 = x + tile_size, y + tile_size
        if frame is not None:
            x1, y1 = np.minimum(x1, frame[0]), np.minimum(y1, frame[1])
        scored = np.isfinite(proba)  # NaN: a slide no model scored has no tiles
        key = probability_key(class_name)
        feats.extend(
            tile_features(x[scored], y[scored], x1[scored], y1[scored], proba[scored], cls, key)
        )
    return feats


def tile_features(
    x: np.ndarray,
    y: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    proba: np.ndarray,
    cls: dict[str, Any],
    key: str,
) -> list[dict[str, Any]]:
    """Tiles as plain dicts, the same JSON as :func:`feature` of each box (shapely's ring,
    coordinates rounded as the geojson package rounds them): 10k+ tiles through
    ``geojson.Feature``'s validation took seconds of every run."""
    if not len(x):  # e.g. a slide no model scored
        return []
    rings = shapely.get_coordinates(shapely.box(x, y, x1, y1)).reshape(len(x), -1, 2).tolist()
    return [
        {
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[round(a, COORD_DIGITS), round(b, COORD_DIGITS)] for a, b in r]],
            },
            "properties": {
                "objectType": "tile",
                "classification": cls,
                "isLocked": False,
                "measurements": {key: float(p)},
            },
        }
        for r, p in zip(rings, proba.tolist(), strict=True)
    ]


def collection_json(feats: list[Any], ensure_ascii: bool = False) -> str:
    """``geojson.dumps(geojson.FeatureCollection(feats))``, without the package re-building
    and re-validating every feature (plain dicts from :func:`tile_features` included)."""
    return json.dumps(
        {"type": "FeatureCollection", "features": feats},
        ensure_ascii=ensure_ascii,
        allow_nan=False,
    )


def write_features(path: str | Path, feats: list[Any]) -> Path:
    """A FeatureCollection written atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write(collection_json(feats, ensure_ascii=True))  # as geojson.dump wrote it
    return path


def annotation_features(
    geom: shapely.Geometry, class_name: str, color: tuple[int, int, int] | None = None
) -> list[geojson.Feature]:
    """Annotations in QuPath's format (for the demo's coarse input and for tests)."""
    cls = classification(class_name, color or DEFAULT_COLORS.get(class_name, (200, 0, 0)))
    return [feature(p, "annotation", cls) for p in polygons(geom)]
