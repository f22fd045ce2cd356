"""Slide reading: levels, resolution and QuPath's frame, on a real Aperio slide and on
pyramidal TIFFs written here."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from engine.errors import SlideError
from engine.slide import Slide
from engine.tiff import write_pyramidal_tiff


@pytest.fixture
def gradient_tiff(tmp_path):
    """A pyramidal TIFF whose pixel values encode their own coordinates."""
    h, w = 1500, 2100
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], axis=-1).astype(np.uint8)
    path = write_pyramidal_tiff(tmp_path / "grad.tif", rgb, mpp=0.25, min_level_px=400)
    return path, rgb


def test_reads_aperio_svs(cmu_svs):
    with Slide(cmu_svs) as s:
        assert (s.width, s.height) == (2220, 2967)
        assert s.mpp == pytest.approx(0.499)
        assert s.offset == (0, 0)
        assert s.info.fingerprint.startswith("qh1-")
        patches = s.read_patches(np.array([[100.0, 200.0], [1000.0, 1500.0]]), 256, 256)
    direct = np.asarray(openslide.OpenSlide(str(cmu_svs)).read_region((1000, 1500), 0, (256, 256)))
    assert patches.shape == (2, 256, 256, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[1], direct[..., :3])
    # Real tissue, not glass: H&E is far from white somewhere in the patch.
    assert patches[1].min() < 150


def test_pyramid_levels_and_resize(gradient_tiff):
    path, rgb = gradient_tiff
    with Slide(path) as s:
        assert s.mpp == pytest.approx(0.25)
        assert len(s.level_downsamples) == 4  # 2100, 1050, 525, 262 px wide
        # 512 level-0 px into 128 px: downsample 4, served from the 4x level.
        assert s.best_level(4.0) == 2
        assert s.best_level(1.0) == 0
        assert s.best_level(3.0) == 1
        assert s.best_level(100.0) == 3
        full = s.read_patches(np.array([[256.0, 128.0]]), 64, 64)
        np.testing.assert_array_equal(full[0], rgb[128:192, 256:320])
        small = s.read_patches(np.array([[0.0, 0.0]]), 512, 128)
        assert small.shape == (1, 128, 128, 3)


def test_reads_past_the_edge_as_glass(gradient_tiff):
    path, _ = gradient_tiff
    with Slide(path) as s:
        p = s.read_patches(np.array([[2000.0, 1400.0]]), 200, 200)[0]
    assert (p[150:, 150:] == 255).all()  # outside the 2100 x 1500 frame


def test_bounds_offset_maps_qupath_frame(gradient_tiff):
    """QuPath's OpenSlide server crops to openslide.bounds-*: QuPath (0, 0) is OpenSlide
    (bounds-x, bounds-y). The offset is applied on every read."""
    path, rgb = gradient_tiff
    with Slide(path) as s:
        s.offset = (300, 100)  # as read from bounds-x/-y on an MRXS or NDPI
        p = s.read_patches(np.array([[10.0, 20.0]]), 32, 32)[0]
    np.testing.assert_array_equal(p, rgb[120:152, 310:342])


def test_thumbnail(cmu_svs):
    with Slide(cmu_svs) as s:
        thumb, ds = s.thumbnail(8.0)
    assert ds == pytest.approx(8.0 / 0.499, rel=0.02)
    assert thumb.shape[1] == round(2220 / ds)
    assert abs(thumb.shape[0] - 2967 / ds) <= 1


def test_missing_slide(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        Slide(tmp_path / "nope.svs")


def test_unsupported_format(tmp_path):
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    with pytest.raises(SlideError, match="Unsupported slide format"):
        Slide(bad)


def test_no_resolution_needs_mpp(tmp_path):
    import tifffile

    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideError, match=r"pass SlideInput\.mpp"):
        Slide(path)
    with Slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5
    with pytest.raises(SlideError, match="is not a slide.s pixel size"):
        Slide(path, mpp=-1)


def test_patches_match_openslides_pixels_composited_on_white(cmu_svs):
    """Opaque patches skip the compositing; patches reaching past the slide's edge are
    composited over white. Either way the pixels are OpenSlide's premultiplied RGBA over
    white, to the bit."""
    xy = np.array([[600.0, 900.0], [2220.0 - 100.0, 2967.0 - 80.0]])  # inside; over the corner
    with Slide(cmu_svs) as s:
        got = s.read_patches(xy, 256.0, 256)
    osr = openslide.OpenSlide(str(cmu_svs))
    for (x, y), patch in zip(xy.astype(int), got, strict=True):
        a = np.asarray(osr.read_region((int(x), int(y)), 0, (256, 256))).astype(np.uint16)
        want = (a[..., :3] + (255 - a[..., 3:4])).clip(0, 255).astype(np.uint8)
        np.testing.assert_array_equal(patch, want)
    assert (got[1][-10:, -10:] == 255).all() and got[0].std() > 5  # glass past the corner
