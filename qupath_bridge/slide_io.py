"""Slides with their QuPath GeoJSON in; each slide's refined GeoJSON and overlay picture out.

What the ``slide`` and ``demo`` jobs share: pairing slides with their annotations, a unique
output name per slide, and every output file computed in memory before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import shapely

from engine.errors import AnnotationError
from engine.overlay import render_overlay
from engine.pipeline import RefineResult, SlideInput, open_slide
from engine.slide import Slide
from qupath_bridge.classes import REFINED_COLOR, ClassNames
from qupath_bridge.geojson_io import (
    class_geometry,
    clip_to_frame,
    collection_json,
    read_objects,
    refined_features,
    select_geometry,
)

log = logging.getLogger("qupath_refine")

OVERLAY_SIDE = 1600  # px, long side of overlay pictures: detail without huge files


def load_inputs(
    slides: list[Path], coarse_files: list[Path], classes: ClassNames, mpp: float | None
) -> list[SlideInput]:
    """Pair slides with their GeoJSON (in order), select the classes, check the frame."""
    if len(slides) != len(coarse_files):
        raise AnnotationError(
            f"Got {len(slides)} slides and {len(coarse_files)} --coarse files: give one "
            "GeoJSON per slide, in the same order."
        )
    items = []
    for path, gj in zip(slides, coarse_files, strict=True):
        with Slide(path, mpp=mpp) as s:
            # Only annotations are inputs: a cell export's detections are skipped unbuilt.
            objects = read_objects(gj, ("annotation",))
            source = f"{gj.name} (for {path.name})"
            coarse = select_geometry(objects, classes.coarse, source)
            coarse = clip_to_frame(coarse, s.width, s.height, source)
            # the same class rule as projects: `Ignore*` also takes `Ignore*: folds`
            negative = class_geometry(objects, classes.negative) if classes.negative else None
        items.append(SlideInput(path=path, coarse=coarse, negative=negative, mpp=mpp))
    return items


#: inner extensions that belong to the format, stripped along with the last one
_FORMAT_INFIXES = (".ome",)


def _stem(path: Path) -> str:
    """The name outputs are called by: the file name without its extension (``case.A1.svs``
    -> ``case.A1``; double extensions such as ``.ome.tif`` -> ``slide``)."""
    name = Path(path).name
    stem = Path(name).stem or name
    for infix in _FORMAT_INFIXES:
        if stem.lower().endswith(infix) and len(stem) > len(infix):
            stem = stem[: -len(infix)]
    return stem


def output_names(paths: list[Path]) -> tuple[list[str], list[dict]]:
    """A unique output name per input slide, and the collisions that had to be resolved.

    Slides whose stems collide (``x/slide.svs``, ``y/slide.tif``; compared case-blind, as
    macOS and Windows do) get their folder's name appended (``slide.x``, ``slide.y``), else
    a hash of their full path, else (the same file given twice) their position: the same
    inputs get the same names in any order, and a slide that collides with nothing keeps
    its plain stem.
    """
    stems = [_stem(p) for p in paths]
    names = list(stems)

    def clashes(ns: list[str]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(ns):
            groups.setdefault(n.casefold(), []).append(i)
        return [g for g in groups.values() if len(g) > 1]

    def path_hash(i: int) -> str:
        return hashlib.sha256(str(Path(paths[i]).resolve()).encode()).hexdigest()[:8]

    ways = (
        lambda i: f"{stems[i]}.{Path(paths[i]).resolve().parent.name or 'root'}",
        lambda i: f"{stems[i]}.{path_hash(i)}",
        lambda i: f"{stems[i]}.{path_hash(i)}.{i + 1}",
    )
    for way in ways:
        groups = clashes(names)
        if not groups:
            break
        for g in groups:
            for i in g:
                names[i] = way(i)
    collisions = []
    for g in clashes(stems):
        collisions.append(
            {
                "stem": stems[g[0]],
                "slides": [str(paths[i]) for i in g],
                "names": [names[i] for i in g],
            }
        )
    for c in collisions:
        pairs = ", ".join(f"{s} -> {n}.*" for s, n in zip(c["slides"], c["names"], strict=True))
        log.warning(f"slides share the output name {c['stem']!r}; writing {pairs}")
    return names, collisions


@dataclass(frozen=True)
class SlideFiles:
    """The files written for one slide."""

    geojson: Path
    overlay: Path


def render_outputs(
    result: RefineResult,
    items: list[SlideInput],
    out_dir: Path,
    classes: ClassNames,
    tiles: bool = True,
    truths: list[shapely.Geometry | None] | None = None,
    names: list[str] | None = None,
) -> tuple[dict[Path, bytes], list[SlideFiles]]:
    """Every slide's refined GeoJSON and overlay PNG, computed in memory (thumbnails read,
    pictures encoded) so that nothing is written until all of it has worked."""
    files: dict[Path, bytes] = {}
    written: list[SlideFiles] = []
    truths = truths or [None] * len(items)
    names = names or output_names([Path(i.path) for i in items])[0]
    for item, r, truth, stem in zip(items, result.slides, truths, names, strict=True):
        feats = refined_features(
            r.regions,
            r.grid.xy if tiles else None,
            r.grid.size,
            r.proba if tiles else None,
            classes.coarse,
            classes.refined,
            REFINED_COLOR,
            mpp=r.info.mpp,
            frame=(r.info.width, r.info.height),
        )
        gj = out_dir / f"{stem}.refined.geojson"
        files[gj] = collection_json(feats).encode("utf-8")
        with open_slide(item) as s:
            thumb, ds = s.thumbnail(s.mpp * max(1.0, max(s.width, s.height) / OVERLAY_SIDE))
        img = render_overlay(thumb, ds, item.coarse, r.regions, truth, r.grid, r.proba)
        png = out_dir / f"{stem}.overlay.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        files[png] = buf.getvalue()
        written.append(SlideFiles(geojson=gj, overlay=png))
    return files, written
