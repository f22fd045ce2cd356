"""The paquo side of ``tests/test_project_paquo.py``, run in a child process (the JVM lives there):

    python -m tests.paquo_helper {build,snapshot,edit} SPEC.json OUT.json

``build`` makes projects with images and objects, ``edit`` changes a project the way a
pathologist would in QuPath (add, remove or lock an object), ``snapshot`` writes a project's
classes and every image's objects as JSON. Objects travel as dicts with the geometry as hex WKB.

paquo (and with it the JVM) is imported only when a command runs, so this module imports
without paquo or QuPath; pytest does not collect it (the name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import shapely

COLORS = {
    "Tumor": "#c80000",
    "Tumor: refined": "#ff8800",
    "Stroma": "#96c896",
    "Immune cells": "#a05aa0",
    "Ignore*": "#b4b4b4",
}
_classes: dict[str, Any] = {}


def pclass(name: str | None) -> Any:
    from paquo.classes import QuPathPathClass

    if name is None:
        return None
    if name not in _classes:
        *parents, last = name.split(": ")
        parent = pclass(": ".join(parents)) if parents else None
        _classes[name] = QuPathPathClass(last, parent=parent, color=COLORS.get(name, "#808080"))
    return _classes[name]


def add(h: Any, o: dict) -> None:
    geom = shapely.from_wkb(bytes.fromhex(o["wkb"]))
    fn = {"annotation": h.add_annotation, "detection": h.add_detection, "tile": h.add_tile}
    obj = fn[o["type"]](
        roi=geom, path_class=pclass(o.get("cls")), measurements=o.get("meas") or None
    )
    if o.get("locked"):
        obj.locked = True
    if o.get("name"):
        obj.name = o["name"]


def build(spec: dict) -> dict:
    from paquo.projects import QuPathProject

    ids: dict[str, list[str]] = {}
    for p in spec["projects"]:
        with QuPathProject(p["project"], mode="x") as qp:
            qp.path_classes = [pclass(c) for c in p.get("classes", [])]
            for im in p["images"]:
                e = qp.add_image(im["slide"], allow_duplicates=True)
                for o in im.get("objects", []):
                    add(e.hierarchy, o)
                ids.setdefault(p["project"], []).append(str(e.entry_id))
    return ids


def record(o: Any, kind: str) -> dict:
    pc = o.path_class
    return {
        "type": kind,
        "cls": pc.id if pc is not None else None,
        "color": pc.color.to_hex() if pc is not None and pc.color is not None else None,
        "locked": bool(o.locked),
        "name": o.name,
        "uid": str(o.java_object.getID()),
        "wkb": shapely.to_wkb(o.roi, hex=True),
        "meas": {k: float(v) for k, v in o.measurements.items()},
    }


def snapshot(spec: dict) -> dict:
    import paquo.java
    from paquo.projects import QuPathProject

    qp = QuPathProject(spec["project"], mode="r")
    images = []
    for e in qp.images:
        h = e.hierarchy
        objs = [record(a, "annotation") for a in h.annotations]
        objs += [record(d, "tile" if d.java_object.isTile() else "detection") for d in h.detections]
        images.append({"id": str(e.entry_id), "name": e.image_name, "uri": e.uri, "objects": objs})
    classes = [[c.id, c.color.to_hex() if c.color is not None else None] for c in qp.path_classes]
    return {
        "version": qp.version,
        "qupath": str(paquo.java.qupath_version),
        "classes": classes,
        "images": images,
    }


def edit(spec: dict) -> dict:
    from paquo.projects import QuPathProject

    with QuPathProject(spec["project"], mode="r+") as qp:
        entries = {str(e.entry_id): e for e in qp.images}
        for op in spec["ops"]:
            h = entries[op["image"]].hierarchy
            if op["op"] == "add":
                add(h, op)
                continue
            for coll in (h.annotations, h.detections):
                hit = [o for o in coll if str(o.java_object.getID()) == op["uid"]]
                if hit:
                    break
            assert len(hit) == 1, op
            if op["op"] == "remove":
                coll.discard(hit[0])
            elif op["op"] == "lock":
                hit[0].locked = True
            else:
                raise ValueError(op["op"])
    return {}


COMMANDS: dict[str, Callable[[dict], dict]] = {"build": build, "snapshot": snapshot, "edit": edit}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m tests.paquo_helper", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("command", choices=sorted(COMMANDS))
    ap.add_argument("spec", help="the command's input, JSON")
    ap.add_argument("out", help="where to write the command's result, JSON")
    args = ap.parse_args(argv)
    import paquo.java  # noqa: F401  (starts the JVM before any QuPath class is touched)

    with open(args.spec, encoding="utf-8") as f:
        out = COMMANDS[args.command](json.load(f))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
