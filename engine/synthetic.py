"""A small synthetic H&E-like slide with a known tumour outline, for the demo.

Two textures: normal tissue is pink stroma with sparse small elongated nuclei; tumour is
purple with dense, large, round, dark nuclei. The fine truth is a main tumour mass plus a
small separate focus; the simulated coarse annotation is the main mass drawn loosely (dilated,
simplified, with a lobe over normal tissue) and misses the focus, the two faults METHOD.md
describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter, zoom

from engine.metrics import rasterize
from engine.tiff import write_pyramidal_tiff


@dataclass
class DemoSlide:
    path: Path
    mpp: float
    truth: shapely.Geometry  # level-0 px
    coarse: shapely.Geometry
    tissue: shapely.Geometry
    size: tuple[int, int]  # (width, height) px


def _blob(
    center: tuple[float, float], radius: float, rng: np.random.Generator, lobes: int = 5
) -> shapely.Geometry:
    """A smooth irregular blob: a disc with a few overlapping discs around its rim."""
    cx, cy = center
    parts = [shapely.Point(cx, cy).buffer(radius, quad_segs=16)]
    for a in rng.uniform(0, 2 * np.pi, lobes):
        r = radius * rng.uniform(0.4, 0.75)
        d = radius * rng.uniform(0.5, 0.9)
        parts.append(shapely.Point(cx + d * np.cos(a), cy + d * np.sin(a)).buffer(r, quad_segs=16))
    return shapely.unary_union(parts).buffer(radius * 0.1).buffer(-radius * 0.1)


def _nuclei(
    draw: ImageDraw.ImageDraw,
    allowed: npt.NDArray[np.bool_],
    density: float,
    radius: tuple[float, float],
    elongation: float,
    color: tuple[int, int, int],
    rng: np.random.Generator,
) -> None:
    """Scatter ellipses (nuclei) over the pixels where ``allowed`` is true."""
    h, w = allowed.shape
    n = rng.poisson(density * allowed.sum())
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    keep = allowed[ys, xs]
    for x, y in zip(xs[keep], ys[keep], strict=True):
        r = rng.uniform(*radius)
        a = r * elongation
        j = rng.integers(-25, 26)
        c = tuple(min(255, max(0, v + int(j))) for v in color)
        if rng.random() < 0.5:
            draw.ellipse((x - a, y - r, x + a, y + r), fill=c)
        else:
            draw.ellipse((x - r, y - a, x + r, y + a), fill=c)


def make_demo_slide(
    path: str | Path, seed: int = 0, mpp: float = 0.5, size_um: tuple[float, float] = (3072, 2048)
) -> DemoSlide:
    """Write the demo slide to ``path`` and return it with its truth and coarse outlines."""
    rng = np.random.default_rng(seed)
    w, h = round(size_um[0] / mpp), round(size_um[1] / mpp)
    um = 1 / mpp  # px per µm

    tissue = _blob((w * 0.5, h * 0.5), min(w, h) * 0.42, rng, lobes=7)
    tissue = shapely.affinity.scale(tissue, xfact=1.35, yfact=1.0)
    tissue = tissue.intersection(shapely.box(20, 20, w - 20, h - 20))
    main = _blob((w * 0.42, h * 0.48), 330 * um, rng, lobes=6).intersection(tissue)
    focus = _blob((w * 0.8, h * 0.35), 150 * um, rng, lobes=3).intersection(tissue)
    truth = shapely.unary_union([main, focus])
    lobe = _blob((w * 0.42 - 300 * um, h * 0.48 + 350 * um), 170 * um, rng, lobes=3)
    coarse = (
        shapely.unary_union([main.buffer(90 * um), lobe])
        .simplify(60 * um)
        .intersection(tissue.buffer(40 * um))
    )

    tissue_px = rasterize(tissue, (h, w), 1.0)
    tumour_px = rasterize(truth, (h, w), 1.0)
    normal_px = tissue_px & ~tumour_px

    # Stain fields: low-frequency variation of colour so textures are not flat.
    def field(scale: float) -> npt.NDArray[np.float32]:
        small = rng.standard_normal((h // 32 + 2, w // 32 + 2))
        f = zoom(gaussian_filter(small, scale), 32, order=1)[:h, :w]
        return (f / (np.abs(f).max() + 1e-6)).astype(np.float32)

    stroma = np.array([236, 160, 196], dtype=np.float32)
    tumour = np.array([196, 132, 196], dtype=np.float32)
    glass = np.array([243, 241, 244], dtype=np.float32)
    base = np.where(tumour_px[..., None], tumour, np.where(normal_px[..., None], stroma, glass))
    fibres = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (0.8, 6.0))
    texture = field(3.0) * 14 + fibres * np.where(tumour_px, 18.0, 60.0).astype(np.float32)
    base += np.where(tissue_px, texture, 0)[..., None]
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    _nuclei(draw, normal_px, 1 / 900, (2.0, 3.0), 2.2, (95, 60, 140), rng)
    _nuclei(draw, tumour_px, 1 / 140, (4.0, 6.0), 1.15, (70, 35, 115), rng)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(canvas).astype(np.int16)
    arr = np.clip(arr + rng.integers(-6, 7, arr.shape), 0, 255).astype(np.uint8)
    out = write_pyramidal_tiff(path, arr, mpp)
    return DemoSlide(out, mpp, truth, coarse, tissue, (w, h))
