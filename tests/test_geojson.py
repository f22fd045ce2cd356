"""QuPath GeoJSON in and out, in the shapes QuPath versions actually write."""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest
import shapely

from engine.errors import AnnotationError
from qupath_bridge.geojson_io import (
    annotation_features,
    clip_to_frame,
    read_objects,
    refined_features,
    select_geometry,
    write_features,
)

SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]
HOLED = [SQUARE[0], [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]]


def _feature(coords, props, gtype="Polygon", fid=None):
    f = {"type": "Feature", "geometry": {"type": gtype, "coordinates": coords}, "properties": props}
    if fid:
        f["id"] = fid
    return f


def _write(tmp_path, doc, name="a.geojson"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_reads_qupath_04_feature_collection(tmp_path):
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                HOLED,
                {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": True,
                    "measurements": {"Area": 9600.0},
                },
                fid="6d1e2c9e-0000-4000-8000-000000000001",
            ),
            _feature([[1, 2]], {"objectType": "annotation"}, gtype="LineString"),
        ],
    }
    (obj,) = read_objects(_write(tmp_path, doc))
    assert obj.classification == "Tumor" and obj.color == (200, 0, 0)
    assert obj.locked and obj.id.startswith("6d1e2c9e")
    assert obj.geometry.area == 100 * 100 - 20 * 20  # hole kept
    assert obj.measurements == {"Area": 9600.0}


def test_reads_old_list_string_class_and_measurement_list(tmp_path):
    doc = [
        _feature(SQUARE, {"classification": "Tumor", "measurements": [{"name": "x", "value": 2}]}),
        _feature(
            SQUARE,
            {
                "objectType": "detection",
                "classification": {"name": "Stroma", "colorRGB": -16711936},
            },
        ),
    ]
    a, b = read_objects(_write(tmp_path, doc))
    assert a.object_type == "annotation" and a.classification == "Tumor"
    assert a.measurements == {"x": 2.0}
    assert b.object_type == "detection" and b.color == (0, 255, 0)


def test_invalid_polygon_is_repaired_with_warning(tmp_path, caplog):
    bowtie = [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]
    p = _write(tmp_path, [_feature(bowtie, {"classification": "Tumor"})])
    with caplog.at_level(logging.WARNING, logger="qupath_refine"):
        (obj,) = read_objects(p)
    assert obj.geometry.is_valid and obj.geometry.area == pytest.approx(5000)
    assert "make_valid" in caplog.text and "Self-intersection" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("this is not json", "not GeoJSON"),
        ('{"hello": 1}', "not QuPath GeoJSON"),
        ('[{"type": "Point"}]', "must be a GeoJSON Feature"),
    ],
)
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(AnnotationError, match=message):
        read_objects(p)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_objects(tmp_path / "none.geojson")


def test_select_class_lists_what_exists(tmp_path):
    doc = [
        _feature(SQUARE, {"classification": {"name": "Stroma", "color": [1, 2, 3]}}),
        _feature(SQUARE, {"classification": "Tumor: refined"}),
        _feature(SQUARE, {}),
    ]
    objs = read_objects(_write(tmp_path, doc))
    with pytest.raises(AnnotationError, match=r"Classes present: \(unclassified\), Stroma, Tumor"):
        select_geometry(objs, "Tumor", "a.geojson")


def test_select_class_includes_subclasses_not_our_output(tmp_path):
    doc = [
        _feature(SQUARE, {"classification": "Tumor: grade 2"}),
        _feature(
            [[[200, 0], [300, 0], [300, 100], [200, 0]]], {"classification": "Tumor: refined"}
        ),
    ]
    g = select_geometry(read_objects(_write(tmp_path, doc)), "Tumor", "x")
    assert g.area == 10000


def test_clip_and_outside():
    g = shapely.box(50, 50, 150, 150)
    assert clip_to_frame(g, 100, 100, "x").area == 2500
    with pytest.raises(AnnotationError, match="outside the slide"):
        clip_to_frame(shapely.box(500, 500, 600, 600), 100, 100, "x")


def test_written_objects_are_what_qupath_imports(tmp_path):
    regions = shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 20, 30, 30)])
    xy = np.array([[0.0, 0.0], [64.0, 0.0]])
    feats = refined_features(
        regions, xy, 64.0, np.array([0.9, 0.1]), "Tumor", "Tumor: refined", (0, 170, 60), mpp=0.5
    )
    path = write_features(tmp_path / "out" / "r.geojson", feats)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 4
    types = [f["properties"]["objectType"] for f in doc["features"]]
    assert types == ["detection", "detection", "tile", "tile"]
    for f in doc["features"]:
        uuid.UUID(f["id"])  # a fresh UUID each
        assert f["properties"]["classification"] == {
            "name": "Tumor: refined",
            "color": [0, 170, 60],
        }
    tile = doc["features"][2]["properties"]
    assert tile["measurements"] == {"p_Tumor": pytest.approx(0.9)}
    assert len({f["id"] for f in doc["features"]}) == 4
    # And it reads back through our own reader.
    back = read_objects(path)
    assert [o.object_type for o in back] == types
    assert back[0].geometry.equals(shapely.box(0, 0, 10, 10))
    assert not list(tmp_path.glob("out/.*tmp"))


def test_tiles_are_clipped_to_the_image_and_every_polygon_is_valid(tmp_path):
    # A 100 x 80 px image; the second patch reaches past its right and bottom edges.
    regions = shapely.MultiPolygon([shapely.box(0, 0, 10, 10)])
    xy = np.array([[0.0, 0.0], [64.0, 32.0]])
    feats = refined_features(
        regions, xy, 64.0, np.array([0.9, 0.1]), "Tumor", "Tumor: refined", (0, 170, 60),
        mpp=0.5, frame=(100, 80),
    )  # fmt: skip
    back = read_objects(write_features(tmp_path / "r.geojson", feats))
    frame = shapely.box(0, 0, 100, 80)
    assert all(o.geometry.is_valid and frame.covers(o.geometry) for o in back)
    assert back[-1].geometry.equals(shapely.box(64, 32, 100, 80))


def test_annotation_round_trip(tmp_path):
    geom = shapely.box(0, 0, 100, 100).difference(shapely.box(10, 10, 20, 20))
    p = write_features(tmp_path / "c.geojson", annotation_features(geom, "Tumor"))
    g = select_geometry(read_objects(p), "Tumor", "c")
    assert g.equals(geom)


def test_tile_fast_path_writes_what_the_geojson_package_writes():
    """Tiles are plain dicts (geojson.Feature's validation took seconds per 10k tiles): the
    JSON must be the package's own, coordinates rounded alike, for awkward coordinates too."""
    import geojson

    from qupath_bridge.geojson_io import collection_json, feature, tile_features

    rng = np.random.default_rng(0)
    x = np.r_[0.0, 1e-7, 4999.99, 123.456789123, rng.uniform(0, 5000, 200)]
    y = np.r_[0.0, 3.3333333333, 4999.99, 0.1, rng.uniform(0, 5000, 200)]
    x1, y1 = np.minimum(x + 255.7777777, 5100), np.minimum(y + 255.7777777, 5050)
    p = rng.uniform(0, 1, len(x)).astype(np.float32)
    cls = {"name": "Tumor: refined", "color": [1, 2, 3]}
    fast = tile_features(x, y, x1, y1, p, cls, "p_Tumor")
    slow = [
        feature(shapely.box(*b), "tile", cls, {"p_Tumor": float(q)})
        for b, q in zip(np.c_[x, y, x1, y1], p, strict=True)
    ]
    for a, b in zip(fast, slow, strict=True):
        a["id"] = b["id"]
    assert collection_json(fast) == geojson.dumps(geojson.FeatureCollection(slow))
    assert collection_json(fast, ensure_ascii=True) == json.dumps(
        geojson.FeatureCollection(slow), cls=geojson.GeoJSONEncoder, allow_nan=False
    )
