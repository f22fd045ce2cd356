"""Tissue mask, patch grid and coarse labels."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from engine.errors import SettingsError
from engine.patches import (
    AUTO_SIDES_UM,
    GridSettings,
    coarse_labels,
    make_grid,
    overlap_fraction,
    tissue_mask,
)
from engine.slide import Slide


def test_tissue_mask_on_real_slide(cmu_svs):
    with Slide(cmu_svs) as s:
        thumb, _ = s.thumbnail(8.0)
    mask = tissue_mask(thumb)
    # CMU-1's small region is mostly tissue with some glass: neither all nor nothing.
    assert 0.2 < mask.mean() < 0.95
    # Tissue pixels are darker/more coloured than glass pixels.
    assert thumb[mask].mean() < thumb[~mask].mean()


def test_blank_slide_has_no_tissue():
    blank = np.full((100, 120, 3), 245, dtype=np.uint8)
    assert not tissue_mask(blank).any()


def test_grid_keeps_tissue_patches():
    mask = np.zeros((100, 100), dtype=bool)
    mask[:50, :] = True  # top half tissue
    # 1000 x 1000 px frame, mask at downsample 10; 100 px patches.
    grid = make_grid(1000, 1000, mask, 10.0, 100.0, 100.0, 0.5)
    assert len(grid) == 50
    assert grid.shape == (10, 10)
    assert (grid.xy[:, 1] < 500).all()
    np.testing.assert_allclose(grid.tissue, 1.0)
    np.testing.assert_array_equal(grid.xy, grid.ij * 100.0)


def test_overlapping_grid_lattice():
    mask = np.ones((40, 40), dtype=bool)
    grid = make_grid(400, 400, mask, 10.0, 100.0, 50.0, 0.5)
    assert grid.shape == (7, 7)
    assert grid.stride == 50 and grid.size == 100


def test_overlap_respects_holes():
    mask = np.ones((30, 30), dtype=bool)
    grid = make_grid(300, 300, mask, 10.0, 100.0, 100.0, 0.1)
    ring = shapely.box(0, 0, 300, 300).difference(shapely.box(100, 100, 200, 200))
    frac = overlap_fraction(grid, ring)
    centre = np.flatnonzero((grid.ij == [1, 1]).all(axis=1))[0]
    assert frac[centre] == 0.0
    assert np.delete(frac, centre).min() == 1.0
    half = shapely.box(0, 0, 150, 300)
    frac = overlap_fraction(grid, half)
    assert sorted(set(np.round(frac, 3))) == [0.0, 0.5, 1.0]
    labels = coarse_labels(grid, half, min_overlap=0.5)
    assert labels.sum() == 6  # columns 0 and 1 (half-covered counts at 0.5)


def test_grid_settings():
    g = GridSettings(patch_um=128.0)
    assert g.patch_px == 256 and g.step_um == 128
    with pytest.raises(ValueError):
        GridSettings(patch_um=128.0, stride_um=200).validate()
    for bad in ("huge", float("inf"), 0.0, -5.0):
        with pytest.raises(SettingsError):
            GridSettings(patch_um=bad).validate()
    with pytest.raises(SettingsError, match="numeric"):
        GridSettings(stride_um=32).validate()  # a stride needs a known patch size


def test_auto_patch_size_follows_the_outline_and_the_budget():
    g = GridSettings()
    assert g.is_auto
    with pytest.raises(ValueError, match="resolve"):
        _ = g.patch_px
    # About 1,000 patches inside: a gland-level outline of 1.2 mm² gets ~35 µm -> 32 µm,
    # a 0.2 mm² one the smallest side, a 50 mm² tumour the paper's 128 µm.
    assert g.resolved(1.2e6, 3e6).patch_um == 32.0
    assert g.resolved(0.2e6, 0.3e6).patch_um == 16.0
    assert g.resolved(50e6, 150e6).patch_um == 128.0
    # A small outline on a large slide: the patch budget (30,000 on the tissue) wins.
    side = g.resolved(1.0e6, 200e6).patch_um
    assert side == 96.0 and 200e6 / side**2 <= g.auto_max_patches
    # Every answer is one of the fixed sides (a small edit keeps the same grid and cache).
    for area in np.geomspace(1e4, 1e9, 40):
        assert g.resolved(area, 5 * area).patch_um in AUTO_SIDES_UM
    assert g.resolved(1.2e6 * 1.05, 3e6).patch_um == 32.0
    # A number is kept as it is.
    assert GridSettings(patch_um=40.0).resolved(1e9, 1e9).patch_um == 40.0
