"""The exchange folder between the QuPath script and Python, without paquo.

The Groovy action (``groovy/refine_coarse_annotations.groovy``) writes
``<project>/qupath-refine/export/manifest.json`` (last, atomically) and one GeoJSON of all
annotations per image; Python answers in ``<project>/qupath-refine/results/`` with one GeoJSON
per image and a results manifest the script reads back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qupath_bridge.errors import ProjectError

EXPORT_FORMAT = "qupath-refine-export"
RESULTS_FORMAT = "qupath-refine-results"
WORK_DIR = "qupath-refine"
ENTRY_ID = re.compile(r"[0-9]+")  # QuPath numbers its project entries


@dataclass(frozen=True)
class ImageRecord:
    """One image of a project, from paquo or from the export manifest."""

    name: str
    id: str
    slide: Path | None
    pixel_um: float | None = None
    width: int | None = None
    height: int | None = None
    live: bool = False  # open in QuPath: only the script may change its hierarchy
    geojson: Path | None = None  # exported annotations (export mode)
    # classes whose unlocked detections the objects include; None: all (read through paquo)
    detection_classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Export:
    folder: Path
    project: Path | None
    created: str | None
    qupath_version: str | None
    images: list[ImageRecord]


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _classes(v: Any) -> tuple[str, ...]:
    """The manifest's ``detection_classes`` (since export version 2); none before."""
    return tuple(str(c) for c in v) if isinstance(v, list) else ()


def read_export(folder: str | Path) -> Export:
    """Parse and check an export folder; a :class:`ProjectError` says what is wrong."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    hint = "Run the QuPath menu script again to export the project."
    doc = _read_manifest(folder, manifest, hint)
    images: list[ImageRecord] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["images"]):
        images.append(_image_record(folder, manifest, i, entry, seen, hint))
        seen.add(images[-1].id)
    return Export(
        folder=folder,
        project=Path(doc["project"]) if doc.get("project") else None,
        created=doc.get("created"),
        qupath_version=doc.get("qupath_version"),
        images=images,
    )


def _read_manifest(folder: Path, manifest: Path, hint: str) -> dict[str, Any]:
    """The manifest as a dict with a list of images, or a :class:`ProjectError`."""
    if not folder.is_dir():
        raise ProjectError(f"Export folder not found: {folder}. {hint}")
    if not manifest.is_file():
        raise ProjectError(
            f"No manifest.json in {folder}: the export is missing or unfinished. {hint}"
        )
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProjectError(f"{manifest} is corrupt ({e}). {hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ProjectError(f"{manifest} is not a qupath-refine export manifest. {hint}")
    if not isinstance(doc.get("images"), list):
        raise ProjectError(f"{manifest} lists no images. {hint}")
    return doc


def _image_record(
    folder: Path, manifest: Path, i: int, e: Any, seen: set[str], hint: str
) -> ImageRecord:
    """Image entry ``i`` of the manifest (``seen``: the ids before it), checked."""
    if not isinstance(e, dict) or not e.get("id") or not e.get("geojson"):
        raise ProjectError(f"{manifest}: image entry {i} lacks an id or a geojson file. {hint}")
    # The id names files we write (results/<id>.geojson): only QuPath's entry numbers, so
    # a manifest can never make us write outside the project.
    eid = str(e["id"])
    if not ENTRY_ID.fullmatch(eid) or eid in seen:
        why = "is listed twice" if eid in seen else "is not a QuPath entry number"
        raise ProjectError(f"{manifest}: image entry {i} has id {eid!r}, which {why}. {hint}")
    gj = (folder / str(e["geojson"])).resolve()
    if not gj.is_relative_to(folder.resolve()):
        raise ProjectError(
            f"{manifest}: image entry {i} names {e['geojson']!r}, outside the export folder. {hint}"
        )
    if not gj.is_file():
        raise ProjectError(
            f"{manifest} names {gj.name} for image {e.get('name')!r}, but it is missing. {hint}"
        )
    pw, ph = _number(e.get("pixel_width_um")), _number(e.get("pixel_height_um"))
    w, h = _number(e.get("width")), _number(e.get("height"))
    return ImageRecord(
        name=str(e.get("name") or e["id"]),
        id=eid,
        slide=Path(e["slide"]) if e.get("slide") else None,
        pixel_um=(pw + ph) / 2 if pw and ph else pw or ph,
        width=int(w) if w else None,
        height=int(h) if h else None,
        live=bool(e.get("open_in_gui") or e.get("live")),
        geojson=gj,
        detection_classes=_classes(e.get("detection_classes")),
    )
