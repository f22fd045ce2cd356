"""The files the QuPath menu script and Python exchange: both sides must name the same keys.

QuPath cannot run here, so the Groovy script is read as text: the keys of the map literals it
writes into the export manifest, and the keys it reads from the results manifest, are
checked against what ``export.read_export`` reads and what the project job writes. A key
renamed on one side only fails here instead of in a pathologist's QuPath.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

from qupath_bridge.export import EXPORT_FORMAT, RESULTS_FORMAT, read_export
from qupath_bridge.jobs import project as project_job
from tests.conftest import REPO

GROOVY = (REPO / "groovy" / "refine_coarse_annotations.groovy").read_text(encoding="utf-8")


def _map_literal(opening: str) -> set[str]:
    """The keys of the Groovy map literal that starts at ``opening`` (``key: value`` pairs
    at the literal's own nesting level)."""
    start = GROOVY.index(opening) + len(opening)
    depth, i = 1, start
    while depth:
        depth += {"[": 1, "]": -1}.get(GROOVY[i], 0)
        i += 1
    body = GROOVY[start : i - 1]
    top, depth = [], 0
    for ch in body:  # drop nested literals: their keys are not this map's
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth == 0 and ch not in "[]":
            top.append(ch)
    return set(re.findall(r"(?:^|,)\s*(\w+)\s*:", "".join(top)))


def _python_reads(func, var: str) -> set[str]:
    """Keys ``func`` reads from the dict ``var``: ``var.get("k")`` and ``var["k"]``."""
    tree = ast.parse(inspect.getsource(func).lstrip())
    keys = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == var
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.add(node.args[0].value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == var
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(node.slice.value)
    return keys


def test_export_manifest_keys_python_reads_are_written_by_groovy():
    image_keys = _map_literal("images << [")
    manifest_keys = _map_literal("Map manifest = [")
    assert {"id", "geojson", "pixel_width_um", "detection_classes"} <= image_keys  # parsed
    # "live" is an older export's name for open_in_gui, read as a fallback only
    assert _python_reads(read_export, "e") - {"live"} <= image_keys
    assert _python_reads(read_export, "doc") <= manifest_keys
    assert f"format        : '{EXPORT_FORMAT}'" in GROOVY


def test_results_manifest_keys_groovy_reads_are_written_by_python():
    groovy_reads = set(re.findall(r"\bresult\.(\w+)", GROOVY))
    groovy_reads |= set(re.findall(r"\bit\.(\w+)\?", GROOVY[GROOVY.index("results.images") :]))
    doc_reads = set(re.findall(r"\bdoc\??\.(\w+)", GROOVY[GROOVY.index("Map readResults") :]))
    assert {"geojson", "refined_class", "id"} <= groovy_reads  # parsed
    source = inspect.getsource(project_job.write_results)
    entry = _dict_literal_keys(source, "entry = {")
    manifest = _dict_literal_keys(source, "manifest = {")
    assert groovy_reads <= entry, groovy_reads - entry
    assert doc_reads - {"images"} <= manifest and "images" in manifest
    assert f"doc?.format != '{RESULTS_FORMAT}'" in GROOVY


def _dict_literal_keys(source: str, opening: str) -> set[str]:
    start = source.index(opening) + len(opening) - 1
    depth, i = 0, start
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
        if depth == 0:
            break
    return set(re.findall(r'^\s*"(\w+)":', source[start:i], re.M))


def test_read_export_accepts_a_manifest_shaped_like_the_groovy_one(tmp_path):
    """A manifest with exactly the Groovy script's keys (values as QuPath writes them) reads."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "3.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    image = dict.fromkeys(_map_literal("images << ["))
    image.update(
        name="slide A.svs",
        id="3",
        slide="/data/slide A.svs",
        geojson="images/3.geojson",
        pixel_width_um=0.25,
        pixel_height_um=0.25,
        width=4000,
        height=3000,
        open_in_gui=False,
        detection_classes=["Tumor: refined"],
    )
    doc = dict.fromkeys(_map_literal("Map manifest = ["))
    doc.update(format=EXPORT_FORMAT, version=2, project="/p/project.qpproj", images=[image])
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    got = read_export(tmp_path)
    assert [(r.id, r.name, r.pixel_um, r.width, r.live) for r in got.images] == [
        ("3", "slide A.svs", 0.25, 4000, False)
    ]
    assert got.images[0].detection_classes == ("Tumor: refined",)
    assert got.images[0].slide == Path("/data/slide A.svs")
