"""Bad input found by trying the tool as a user would: each case ends in one ``error:`` line and
exit 2 (or a documented repair), never an internal error or a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import shapely

from engine.errors import AnnotationError
from qupath_bridge.geojson_io import annotation_features, read_objects, write_features
from qupath_bridge.project_runner import sort_objects
from qupath_bridge.runner import ClassNames, load_inputs

REPO = Path(__file__).resolve().parents[1]
SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]


def _fc(*features) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def _tumor(coords=SQUARE, **extra) -> dict:
    props = {"objectType": "annotation", "classification": {"name": "Tumor"}}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": props, **extra}  # fmt: skip


#: file content -> what the one error line must say
BAD_GEOJSON = {
    "geometry a list": (
        json.dumps(_fc({"type": "Feature", "geometry": [1, 2], "properties": {}})),
        'feature 0 has a "geometry" that is not a JSON object',
    ),
    "properties a list": (
        json.dumps(_fc({"type": "Feature", "geometry": _tumor()["geometry"], "properties": [1]})),
        'feature 0 has "properties" that are not a JSON object',
    ),
    "features a string": (
        '{"type": "FeatureCollection", "features": "abc"}',
        '"features" must be a list of GeoJSON Features, got a JSON string',
    ),
    "features an object": (
        '{"type": "FeatureCollection", "features": {"a": 1}}',
        '"features" must be a list of GeoJSON Features, got a JSON object',
    ),
    # Python's json reads 1e400 as inf; ours refuses it.
    "coordinate 1e400": (
        json.dumps(_fc(_tumor())).replace("100", "1e400", 1),
        "numeric (floating point) overflow",
    ),
    "coordinate NaN": (json.dumps(_fc(_tumor())).replace("100", "NaN", 1), "invalid JSON"),
    "100k-deep nesting": ("[" * 100_000 + "]" * 100_000, "nested more than 256 levels"),
    "deep inside a feature": (
        json.dumps(_fc(_tumor(coords="X"))).replace('"X"', "[" * 300 + "]" * 300),
        "nested more than 256 levels",
    ),
    "coordinates a string": (json.dumps(_fc(_tumor(coords="abc"))), "malformed geometry"),
    "ring of numbers": (json.dumps(_fc(_tumor(coords=[1, 2, 3]))), "malformed geometry"),
    "entry not a feature": ('[{"type": "Point"}]', "must be a GeoJSON Feature"),
    "empty file": ("", "is empty"),
    "truncated": (json.dumps(_fc(_tumor()))[:-5], "invalid JSON"),
    "trailing garbage": (json.dumps(_fc(_tumor())) + " x", "invalid JSON"),
    "not utf-8": (
        json.dumps(_fc(_tumor(), _tumor())).replace("Tumor", "Tum\udcffor", 1),
        "invalid JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GEOJSON))
def test_bad_geojson_is_one_clear_error(case, tmp_path):
    content, message = BAD_GEOJSON[case]
    p = tmp_path / "bad.geojson"
    p.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(AnnotationError, match="bad.geojson") as e:
        read_objects(p)
    assert message in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_utf8_bom_is_accepted(tmp_path):
    """Windows editors save a byte order mark; the file is still UTF-8 GeoJSON."""
    p = tmp_path / "bom.geojson"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_fc(_tumor())).encode())
    (obj,) = read_objects(p)
    assert obj.classification == "Tumor" and obj.geometry.area == 100 * 100


def test_brackets_and_escaped_quotes_in_strings_are_not_nesting(tmp_path):
    """The depth guard follows strings across read chunks (ijson reads 64 KiB at a time):
    brackets in a name are text, an escaped quote does not end the string."""
    name = 'a"' + "[" * 100_000 + "\\"  # in JSON: "a\"[[[...\\"
    feature = _tumor()
    feature["properties"]["name"] = name
    text = json.dumps(_fc(feature))
    assert '"a\\"[[[' in text and '[\\\\"' in text
    p = tmp_path / "names.geojson"
    p.write_text(text)
    (obj,) = read_objects(p)
    assert obj.name == name


def _cell_export(path, n_cells: int) -> None:
    """A QuPath-like export: two Tumor annotations, then ``n_cells`` cell detections, each
    with a nucleus geometry and measurements (as *Export objects as GeoJSON* writes them)."""
    cell = (
        '{{"type":"Feature","id":"c{i}","geometry":{{"type":"Polygon","coordinates":'
        "[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}},"
        '"properties":{{"objectType":"cell","classification":{{"name":"Tumor","color":[200,0,0]}},'
        '"nucleusGeometry":{{"type":"Polygon","coordinates":[[[{x},{y}],[{xn},{y}],[{xn},{yn}],'
        '[{x},{y}]]]}},"measurements":{{"Nucleus: Area":12.5,"Cell: Area":40.0}}}}}}'
    )
    with path.open("w") as f:
        f.write('{"type":"FeatureCollection","features":[')
        f.write(json.dumps(_tumor()) + ",")
        f.write(json.dumps(_tumor([[[500, 500], [900, 500], [900, 900], [500, 500]]])))
        for i in range(n_cells):
            x, y = (i % 1000) * 10, (i // 1000) * 10
            f.write(",")
            f.write(cell.format(i=i, x=x, y=y, x1=x + 8, y1=y + 8, xn=x + 4, yn=y + 4))
        f.write("]}")


def test_cell_export_streams_annotations_in_bounded_memory(tmp_path):
    """A 1.7 M-cell export took 5.5 GB to parse; now the file streams and only annotations
    are built. 100k cells (~38 MB of JSON; json.load alone peaks near 0.5 GB) must parse with
    the process growing by under 40 MB. Measured in a child process: its peak RSS is its own."""
    p = tmp_path / "cells.geojson"
    _cell_export(p, 100_000)
    assert p.stat().st_size > 35e6
    script = f"""
import json, resource, time
from qupath_bridge.geojson_io import read_objects
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
objects = read_objects({str(p)!r}, ("annotation",))
seconds = time.perf_counter() - t0
grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps([[o.object_type for o in objects], [o.geometry.area for o in objects],
                  grew_kib, seconds]))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    types, areas, grew_kib, seconds = json.loads(run.stdout)
    assert types == ["annotation", "annotation"] and areas == [10_000, 80_000]
    assert grew_kib < 40 * 1024, f"grew {grew_kib / 1024:.0f} MiB"
    assert seconds < 60, seconds  # ~2 s here, unloaded


def test_cells_are_kept_when_asked_for(tmp_path):
    p = tmp_path / "cells.geojson"
    _cell_export(p, 1_000)
    objects = read_objects(p)
    assert len(objects) == 1_002 and objects[-1].object_type == "cell"
    assert objects[-1].measurements == {"Nucleus: Area": 12.5, "Cell: Area": 40.0}


# --- --negative-class: one class rule in slide and project mode ---------------------------


def test_negative_class_takes_derived_classes_in_slide_mode(demo_slide, tmp_path):
    """`Ignore*` also matches `Ignore*: folds`, as it does in project mode."""
    folds = shapely.box(100, 100, 400, 300)
    feats = annotation_features(demo_slide.coarse, "Tumor") + annotation_features(
        folds, "Ignore*: folds"
    )
    gj = write_features(tmp_path / "c.geojson", feats)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(), None)
    assert item.negative is not None and item.negative.equals(folds)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(negative="Ignore*: folds"), None)
    assert item.negative.equals(folds)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(negative="Ignore* x"), None)
    assert item.negative is None
    # Project mode, same objects, same rule.
    inp = sort_objects(read_objects(gj), ClassNames())
    assert inp.negative is not None and inp.negative.equals(folds)
