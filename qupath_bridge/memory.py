"""What earlier runs wrote into each image, so that refined regions the user deleted are
remembered as not tumour (``<project>/qupath-refine/memory/<id>.json``).

The Groovy menu script reads these files too: the refined class it put into the open image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import shapely
import shapely.geometry

from engine.geometry import polygons
from qupath_bridge.geojson_io import QuPathObject, union
from qupath_bridge.outputs import PROJECT_ADVICE, write_json
from qupath_bridge.project import work_dir

log = logging.getLogger("qupath_refine")


MEMORY_VERSION = 1
#: share of a written region that must still be covered for it to count as present
PRESENT_SHARE = 0.5
#: share of a written region a new annotation must cover for it to count as converted
CONVERTED_SHARE = 0.1


@dataclass
class Memory:
    """What qupath-refine last put into one image, kept in ``qupath-refine/memory/<id>.json``.

    ``state``: ``project`` (written into the data file), ``live`` (handed to the menu script
    for the open image), ``pending`` (a write started and may not have finished).
    """

    refined_class: str
    state: str
    regions: list[shapely.Polygon]
    rejected: shapely.Geometry | None = None  # tissue the user said is not tumour, by deleting
    annotations: frozenset[str] = frozenset()  # the image's annotations then (shape_key)


def shape_key(geom: shapely.Geometry) -> str:
    """A geometry's identity across runs: QuPath keeps 0.01 px and may start rings elsewhere."""
    g = shapely.normalize(shapely.set_precision(geom, 0.01))
    return hashlib.sha1(shapely.to_wkb(g)).hexdigest()


def annotation_keys(objects: list[QuPathObject]) -> frozenset[str]:
    return frozenset(shape_key(o.geometry) for o in objects if o.object_type == "annotation")


def memory_file(project: Path, entry_id: str) -> Path:
    return work_dir(project) / "memory" / f"{entry_id}.json"


def read_memory(project: Path, entry_id: str) -> Memory | None:
    """The image's memory; None (with a warning when the file is damaged) if there is none."""
    f = memory_file(project, entry_id)
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        regions = polygons(shapely.geometry.shape(doc["regions"])) if doc["regions"] else []
        rejected = shapely.geometry.shape(doc["rejected"]) if doc.get("rejected") else None
        known = frozenset(str(k) for k in doc.get("annotations") or [])
        return Memory(str(doc["refined_class"]), str(doc["state"]), regions, rejected, known)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring damaged %s (%s): deleted regions are not compared this run", f, e)
        return None


def write_memory(project: Path, entry_id: str, memory: Memory) -> Path:
    doc = {
        "version": MEMORY_VERSION,
        "refined_class": memory.refined_class,
        "state": memory.state,
        "regions": shapely.geometry.mapping(shapely.MultiPolygon(memory.regions)),
        "rejected": shapely.geometry.mapping(memory.rejected) if memory.rejected else None,
        "annotations": sorted(memory.annotations),
    }
    return write_json(memory_file(project, entry_id), doc, PROJECT_ADVICE)


def vanished_regions(
    written: list[shapely.Polygon],
    objects: list[QuPathObject],
    refined: str,
    known: frozenset[str] = frozenset(),
) -> list[shapely.Polygon]:
    """Regions a run wrote that the user has since deleted without converting them.

    A written region is still there when the image's ``refined`` detections (locked or not)
    cover at least half of it, and converted when an annotation the user made since that run
    (not among ``known``, the :func:`shape_key` of the annotations then) covers a tenth of it:
    a converted region, perhaps trimmed or re-classified, or an edited outline. The coarse
    outline that was already there is no conversion of the regions inside it.
    """
    dets = [
        o.geometry for o in objects if o.object_type == "detection" and o.classification == refined
    ]
    present = shapely.make_valid(shapely.union_all(dets)) if dets else None
    new = [
        o.geometry
        for o in objects
        if o.object_type == "annotation" and shape_key(o.geometry) not in known
    ]
    claimed = shapely.make_valid(shapely.union_all(new)) if new else None
    return [
        p
        for p in written
        if not (present is not None and p.intersection(present).area >= PRESENT_SHARE * p.area)
        and not (claimed is not None and p.intersection(claimed).area >= CONVERTED_SHARE * p.area)
    ]


def remembered_negative(
    name: str,
    memory: Memory | None,
    objects: list[QuPathObject],
    compare: bool,
    mpp: float | None,
) -> shapely.Geometry | None:
    """Tissue the user rejected by deleting refined regions, this run and earlier ones (the
    image's new ``rejected``), from its memory and its objects now. ``compare`` is False when
    the objects do not include the image's refined detections (an older menu script's export).
    """
    if memory is None:
        return None
    rejected = memory.rejected
    gone: list[shapely.Polygon] = []
    if memory.state == "pending":
        log.info("%s: the last write may not have finished; deleted regions not compared", name)
    elif not compare:
        log.info("%s: the export lacks its refined detections; deleted regions not compared", name)
    elif memory.regions:
        gone = vanished_regions(memory.regions, objects, memory.refined_class, memory.annotations)
        if len(gone) == len(memory.regions):
            log.warning(
                "%s: none of the %d refined regions of the last run are in the image; taking "
                "them as never imported, not as rejected (to mark tissue as not tumour, draw "
                "an Ignore* annotation)",
                name,
                len(gone),
            )
            gone = []
    if gone:
        area = sum(p.area for p in gone)
        size = f"{area * mpp**2 / 1e6:.3f} mm²" if mpp else f"{area:.0f} px²"
        log.info(
            "%s: %d refined region(s) of the last run were deleted (%s): treated as not tumour "
            "from now on",
            name,
            len(gone),
            size,
        )
        rejected = union([g for g in (rejected, *gone) if g is not None])
    return rejected
