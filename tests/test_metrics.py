"""The eight metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from engine.metrics import confusion, patch_metrics, pixel_metrics, rasterize, scores, summarise


def test_scores_from_confusion():
    m = scores(tp=8, fp=2, fn=4, tn=86)
    assert m["dice"] == pytest.approx(16 / 22)
    assert m["iou"] == pytest.approx(8 / 14)
    assert m["ppv"] == pytest.approx(0.8)
    assert m["npv"] == pytest.approx(86 / 90)
    assert m["tpr"] == pytest.approx(8 / 12)
    assert m["tnr"] == pytest.approx(86 / 88)
    assert m["accuracy"] == pytest.approx(0.94)
    assert m["f1"] == m["dice"]


def test_empty_conventions():
    m = scores(0, 0, 0, 50)
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert math.isnan(m["ppv"]) and math.isnan(m["tpr"])
    assert m["tnr"] == 1.0


def test_confusion_only_in_valid():
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 1, 0], bool)
    assert confusion(pred, truth) == (1, 1, 1, 1)
    assert confusion(pred, truth, np.array([1, 1, 0, 0], bool)) == (1, 1, 0, 0)


def test_rasterize_respects_holes():
    ring = shapely.box(0, 0, 100, 100).difference(shapely.box(40, 40, 60, 60))
    r = rasterize(ring, (20, 20), 5.0)
    assert r.sum() == 400 - 16
    assert not r[9, 9]


def test_pixel_and_patch_metrics():
    tissue = np.ones((20, 20), bool)
    truth = shapely.box(0, 0, 50, 100)
    pred = shapely.box(0, 0, 100, 100)
    m = pixel_metrics(pred, truth, tissue, 5.0)
    assert m["tpr"] == 1.0 and m["ppv"] == pytest.approx(0.5) and m["dice"] == pytest.approx(2 / 3)
    tissue[:, 15:] = False  # glass on the right is not scored
    m = pixel_metrics(pred, truth, tissue, 5.0)
    assert m["ppv"] == pytest.approx(10 / 15)
    assert patch_metrics([1, 1, 0], [1, 0, 0])["ppv"] == 0.5


def test_summarise_means_dice_pools_rest():
    a, b = scores(10, 0, 0, 10), scores(0, 10, 10, 0)
    s = summarise([a, b], [(10, 0, 0, 10), (0, 10, 10, 0)])
    assert s["dice"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)


def test_rasterize_takes_polygons_nested_in_a_collection():
    """make_valid can return a collection holding a MultiPolygon beside a line: its polygons
    are tumour too (engine.geometry.polygons flattens every level)."""
    from engine.geometry import polygons

    a, b = shapely.box(0, 0, 4, 4), shapely.box(6, 0, 10, 4)
    mixed = shapely.GeometryCollection(
        [shapely.MultiPolygon([a, b]), shapely.LineString([(0, 8), (9, 8)])]
    )
    assert polygons(mixed) == [a, b]
    assert polygons(None) == [] and polygons(shapely.Polygon()) == []
    raster = rasterize(mixed, (10, 10), 1.0)
    assert raster.sum() == 32 and not raster[:, 4:6].any()
