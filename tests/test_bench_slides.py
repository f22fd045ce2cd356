"""Benchmark slides built from the real crops in ../shared/data, and simulated coarse outlines.

Small slides (a few crops each, a second or two to build) so the suite stays quick; the
checks are the ones the benchmark relies on: the files open as slides at the right pixel
size, the truth is where the data says it is, mask and polygons agree pixel for pixel, noise
levels are ordered, and everything reproduces from its seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image

from benchmarks.slides import (
    GLASS_RGB,
    NOISE_LEVELS,
    BenchSlide,
    GlasMosaicSettings,
    NoiseSettings,
    RegionSlideSettings,
    WsssMosaicSettings,
    glas_mosaic,
    load_bench_slide,
    load_index,
    mask_geometry,
    omit_pieces,
    rasterize_exact,
    read_glas_grades,
    region_slide,
    simulate_coarse,
    smooth_blob,
    thumbnail_tissue,
    write_coarse,
    wsss4luad_mosaic,
)
from engine.geometry import polygons
from engine.metrics import pixel_metrics
from engine.slide import Slide
from qupath_bridge.geojson_io import read_objects, select_geometry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GLAS = DATA / "glas-train"
WSSS = DATA / "wsss4luad-val"

needs_glas = pytest.mark.skipif(
    not (GLAS / "Grade.csv").is_file(),
    reason=f"GlaS crops not found at {GLAS} (the shared real-tissue data, ../shared/data)",
)
needs_wsss = pytest.mark.skipif(
    not (WSSS / "img").is_dir(),
    reason=f"WSSS4LUAD crops not found at {WSSS} (the shared real-tissue data, ../shared/data)",
)

SMALL_GLAS = GlasMosaicSettings(n_crops=6, malignant_share=0.5)
SMALL_REGION = RegionSlideSettings(size_um=(1600.0, 1100.0), n_blobs=4)
SMALL_WSSS = WsssMosaicSettings(n_crops=5)


def _build(kind: str, out: Path, seed: int = 0, overwrite: bool = False) -> BenchSlide:
    if kind == "glas-gland":
        return glas_mosaic(GLAS, out, seed, SMALL_GLAS, overwrite=overwrite)
    if kind == "region":
        return region_slide(GLAS, out, seed, SMALL_REGION, overwrite=overwrite)
    return wsss4luad_mosaic(WSSS, out, seed, SMALL_WSSS, overwrite=overwrite)


KINDS = [
    pytest.param("glas-gland", marks=needs_glas),
    pytest.param("region", marks=needs_glas),
    pytest.param("wsss4luad", marks=needs_wsss),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BenchSlide]:
    """Each kind built once for the module, lazily (a missing data folder skips only its kind)."""
    out = tmp_path_factory.mktemp("bench-slides")

    class Lazy(dict):
        def __missing__(self, kind: str) -> BenchSlide:
            self[kind] = _build(kind, out)
            return self[kind]

    return Lazy()


def _level0(slide: BenchSlide) -> np.ndarray:
    return tifffile.imread(slide.path, key=0)


# --------------------------------------------------------------------------- the slides


@pytest.mark.parametrize("kind", KINDS)
def test_slide_opens_in_the_engine_at_its_pixel_size(built, kind):
    b = built[kind]
    assert b.kind == kind
    with Slide(b.path) as s:
        assert (s.width, s.height) == b.size
        assert s.mpp == pytest.approx(b.mpp, rel=1e-4)
        assert len(s.level_downsamples) > 1  # pyramidal
        patch = s.read_patches(np.array([[b.size[0] / 2, b.size[1] / 2]]), 64, 64)
    assert patch.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_truth_is_nonempty_inside_the_frame_and_on_tissue(built, kind):
    b = built[kind]
    assert b.truth.is_valid and b.tissue.is_valid
    assert b.truth.area > 0.02 * b.tissue.area
    assert b.truth.area < 0.9 * b.tissue.area  # there is benign tissue to over-include
    frame = shapely.box(0, 0, *b.size)
    assert frame.contains(b.truth) and frame.contains(b.tissue)
    assert b.truth.difference(b.tissue).area <= 1e-6 * b.truth.area


@pytest.mark.parametrize("kind", KINDS)
def test_mask_png_matches_truth_polygons_pixel_for_pixel(built, kind):
    b = built[kind]
    mask = np.asarray(Image.open(b.truth_mask)) > 0
    assert mask.shape == (b.size[1], b.size[0])
    assert np.array_equal(mask, b.truth_raster())


@pytest.mark.parametrize("kind", KINDS)
def test_truth_geojson_is_qupath_tumor_annotations(built, kind):
    b = built[kind]
    objs = read_objects(b.truth_geojson)
    assert objs and all(o.object_type == "annotation" for o in objs)
    assert all(o.classification == "Tumor" and o.color is not None for o in objs)
    geom = select_geometry(objs, "Tumor", b.truth_geojson.name)
    assert geom.symmetric_difference(b.truth).area <= 1e-6 * b.truth.area


@pytest.mark.parametrize("kind", KINDS)
def test_slide_reloads_from_its_sidecar_unchanged(built, kind):
    b = built[kind]
    again = load_bench_slide(b.sidecar)
    assert again.truth.equals_exact(b.truth, 0) and again.tissue.equals_exact(b.tissue, 0)
    assert (again.size, again.mpp, again.kind, again.name) == (b.size, b.mpp, b.kind, b.name)


@needs_glas
def test_glas_truth_is_the_glands_of_malignant_crops_only(built):
    b = built["glas-gland"]
    grades = read_glas_grades(GLAS)
    crops = b.meta["crops"]
    assert {c["malignant"] for c in crops} == {True, False}
    for c in crops:
        assert grades[c["crop"]] == c["malignant"]
        x, y = c["xy"]
        gland_px = int((load_index(GLAS / "masks" / f"{c['crop']}.png") > 0).sum())
        with Image.open(GLAS / "images" / f"{c['crop']}.png") as im:
            w, h = im.size
        inside = b.truth.intersection(shapely.box(x, y, x + w, y + h)).area
        assert inside == pytest.approx(gland_px if c["malignant"] else 0.0)


@needs_wsss
def test_wsss_truth_is_palette_index_0_on_tissue(built):
    b = built["wsss4luad"]
    for c in b.meta["crops"]:
        idx = load_index(WSSS / "mask" / f"{c['crop']}.png")
        bg = load_index(WSSS / "background-mask" / f"{c['crop']}.png") > 0
        x, y = c["xy"]
        h, w = idx.shape if c["orient"] % 2 == 0 else idx.shape[::-1]
        box = shapely.box(x, y, x + w, y + h)
        assert b.truth.intersection(box).area == pytest.approx(float(((idx == 0) & ~bg).sum()))
        assert b.tissue.intersection(box).area == pytest.approx(float((~bg).sum()))


@needs_glas
def test_region_slide_is_glass_outside_tissue_and_texture_is_not_crop_aligned(built):
    b = built["region"]
    rgb = _level0(b)
    tissue = b.tissue_raster()
    assert np.all(rgb[~tissue] == GLASS_RGB)
    assert rgb[tissue].std() > 10  # real texture, not a flat fill
    # Malignant texture fills the blobs, benign texture the rest, tiles at random offsets.
    tiles = b.meta["tiles"]
    assert tiles["malignant"] and tiles["benign"]
    grades = read_glas_grades(GLAS)
    assert all(grades[n] for n in tiles["malignant"])
    assert not any(grades[n] for n in tiles["benign"])


@needs_glas
def test_builder_reuses_a_build_and_rebuilds_when_settings_change(tmp_path):
    a = glas_mosaic(GLAS, tmp_path, 3, GlasMosaicSettings(n_crops=2))
    stamp = a.path.stat().st_mtime_ns
    again = glas_mosaic(GLAS, tmp_path, 3, GlasMosaicSettings(n_crops=2))
    assert again.path.stat().st_mtime_ns == stamp
    assert again.truth.equals_exact(a.truth, 0)
    other = glas_mosaic(GLAS, tmp_path, 3, GlasMosaicSettings(n_crops=2, malignant_share=1.0))
    assert other.path == a.path and other.path.stat().st_mtime_ns != stamp
    assert all(c["malignant"] for c in other.meta["crops"])


@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproduces_a_slide_exactly_and_another_seed_differs(built, kind, tmp_path):
    b = built[kind]
    again = _build(kind, tmp_path / "again", seed=0)
    assert np.array_equal(_level0(again), _level0(b))
    assert again.truth.equals_exact(b.truth, 0)
    other = _build(kind, tmp_path / "other", seed=1)
    assert not other.truth.equals(b.truth)


# --------------------------------------------------------------------------- geometry helpers


def test_rasterize_exact_sets_the_pixels_whose_centre_is_inside():
    rng = np.random.default_rng(0)
    outer = smooth_blob((60.0, 50.0), 40.0, rng)
    geom = shapely.union_all(
        [
            outer.difference(smooth_blob((60.0, 50.0), 12.0, rng)),
            shapely.box(105.3, 8.7, 131.2, 40.1),
        ]
    )
    for ds in (1.0, 2.5):
        shape = (int(100 / ds), int(140 / ds))
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        want = shapely.contains_xy(geom, (xx + 0.5) * ds, (yy + 0.5) * ds)
        assert np.array_equal(rasterize_exact(geom, shape, ds), want)


def test_mask_geometry_round_trips_including_corner_touching_pixels():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) < 0.45  # plenty of diagonal-only contacts
    geom = mask_geometry(mask, (7, 3))
    assert geom.is_valid
    assert geom.area == mask.sum()
    back = rasterize_exact(geom, (43, 57))
    assert np.array_equal(back[3:, 7:], mask) and not back[:3].any() and not back[:, :7].any()


def test_omit_pieces_drops_a_share_but_never_the_largest():
    rng = np.random.default_rng(2)
    discs = [shapely.Point(100 * i, 0).buffer(10 + i) for i in range(10)]
    geom = shapely.MultiPolygon(discs)
    assert omit_pieces(geom, 0.0, rng).equals(geom)
    for _ in range(20):
        kept = omit_pieces(geom, 0.3, rng)
        assert len(polygons(kept)) == 7
        assert kept.contains(discs[-1].buffer(-0.5))


# --------------------------------------------------------------------------- coarse annotations


def test_noise_levels_are_the_issue_protocol_in_micrometres():
    m, mo, s = NOISE_LEVELS["mild"], NOISE_LEVELS["moderate"], NOISE_LEVELS["severe"]
    assert (m.close_um, m.dilate_um, m.simplify_um, m.omit_fraction, m.false_blobs) == (
        15,
        15,
        10,
        0,
        0,
    )
    assert (mo.close_um, mo.dilate_um, mo.simplify_um, mo.omit_fraction, mo.false_blobs) == (
        40,
        30,
        25,
        0.15,
        1,
    )
    assert (s.close_um, s.dilate_um, s.simplify_um, s.omit_fraction, s.false_blobs) == (
        80,
        60,
        50,
        0.30,
        1,
    )
    assert s.false_blob_um > mo.false_blob_um > 0
    assert m.as_dict()["close_um"] == 15


@pytest.mark.parametrize("mpp", [0.25, 0.62005])
def test_mild_coarse_covers_the_truth_within_its_reach_in_micrometres(mpp):
    """Parameters are µm: at any pixel size the mild outline holds the truth and stays within
    close + dilate + simplify of it."""
    rng = np.random.default_rng(3)
    px = 1 / mpp
    truth = shapely.union_all([smooth_blob((800 * px, 600 * px), 200 * px, rng) for _ in range(2)])
    tissue = shapely.box(0, 0, 1600 * px, 1200 * px)
    coarse = simulate_coarse(truth, tissue, "mild", 0, mpp)
    assert truth.difference(coarse).area <= 1e-4 * truth.area
    reach = (15 + 15 + 10) * px
    assert truth.buffer(reach * 1.01).contains(coarse)
    assert not truth.buffer(15 * px * 0.5).contains(coarse)  # it really is looser


def test_false_blob_lands_on_benign_tissue():
    rng = np.random.default_rng(4)
    truth = smooth_blob((500.0, 500.0), 150.0, rng)
    tissue = shapely.box(0, 0, 2000, 1000)
    level = NoiseSettings("blob-only", 0, 0, 0, false_blobs=1, false_blob_um=100)
    coarse = simulate_coarse(truth, tissue, level, 0, 1.0)
    extra = coarse.difference(truth.buffer(1))
    assert extra.area > 0.3 * np.pi * 100**2
    assert tissue.contains(extra.representative_point())
    assert extra.distance(truth) > 0  # centred at least one radius away, so it never touches


@pytest.mark.parametrize("kind", KINDS)
def test_coarse_dice_falls_as_noise_rises(built, kind):
    b = built[kind]
    tissue, ds = thumbnail_tissue(b.path, tissue_mpp=4.0)
    dice = {
        lvl: np.mean(
            [
                pixel_metrics(
                    simulate_coarse(b.truth, b.tissue, lvl, s, b.mpp, b.size), b.truth, tissue, ds
                )["dice"]
                for s in range(3)
            ]
        )
        for lvl in NOISE_LEVELS
    }
    assert 0.3 < dice["severe"] < dice["moderate"] < dice["mild"] < 0.995, dice


@pytest.mark.parametrize("kind", KINDS)
def test_coarse_reproduces_from_its_seed_and_is_written_as_qupath_geojson(built, kind, tmp_path):
    b = built[kind]
    a = simulate_coarse(b.truth, b.tissue, "moderate", 7, b.mpp, b.size)
    assert a.equals_exact(simulate_coarse(b.truth, b.tissue, "moderate", 7, b.mpp, b.size), 0)
    assert not a.equals(simulate_coarse(b.truth, b.tissue, "moderate", 8, b.mpp, b.size))
    geom, path = write_coarse(b, "moderate", 7, tmp_path)
    assert geom.equals_exact(a, 0)
    assert path.name == f"{b.name}.coarse-moderate-s7.geojson"
    read = select_geometry(read_objects(path), "Tumor", path.name)
    assert read.symmetric_difference(a).area <= 1e-6 * a.area
    assert shapely.box(0, 0, *b.size).contains(read)
