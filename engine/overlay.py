"""A picture of the result: outlines and patch probabilities over a slide thumbnail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image, ImageDraw, ImageFont

from engine.files import replaced_atomically
from engine.geometry import polygons
from engine.patches import PatchGrid

COARSE = (255, 190, 0)  # amber: the pathologist's coarse outline
REFINED = (0, 170, 60)  # green: our result
TRUTH = (30, 90, 255)  # blue: ground truth, when known


def _rings(geom: shapely.Geometry | None) -> list[npt.NDArray[np.float64]]:
    rings = []
    for p in polygons(geom):
        rings.append(np.asarray(p.exterior.coords))
        rings.extend(np.asarray(h.coords) for h in p.interiors)
    return rings


def render_overlay(
    thumb: npt.NDArray[np.uint8],
    downsample: float,
    coarse: shapely.Geometry | None = None,
    refined: shapely.Geometry | None = None,
    truth: shapely.Geometry | None = None,
    grid: PatchGrid | None = None,
    proba: npt.NDArray[np.floating] | None = None,
) -> Image.Image:
    """Thumbnail with a translucent probability heat map (red = tumour) under the outlines
    of coarse (amber), refined (green) and truth (blue), plus a legend."""
    base = Image.fromarray(thumb).convert("RGBA")
    if grid is not None and proba is not None and len(grid):
        heat = Image.new("RGBA", base.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(heat)
        s = grid.stride / downsample
        for (x, y), p in zip(grid.xy / downsample, proba, strict=True):
            if not np.isfinite(p):  # a slide no model scored
                continue
            a = int(110 * float(p))
            d.rectangle((x, y, x + s, y + s), fill=(220, 0, 0, a))
        base = Image.alpha_composite(base, heat)
    draw = ImageDraw.Draw(base)
    width = max(2, round(min(base.size) / 250))
    for geom, color in ((truth, TRUTH), (coarse, COARSE), (refined, REFINED)):
        for ring in _rings(geom):
            pts = [tuple(p) for p in ring / downsample]
            if len(pts) > 1:
                draw.line(pts, fill=(*color, 255), width=width, joint="curve")
    legend = [("coarse", COARSE, coarse), ("refined", REFINED, refined), ("truth", TRUTH, truth)]
    size = max(12, min(base.size) // 40)
    font = ImageFont.load_default(size=size)
    y = size // 2
    for label, color, geom in legend:
        if geom is None:
            continue
        draw.rectangle((size // 2, y, size * 2, y + size), fill=(*color, 255))
        draw.text((size * 5 // 2, y - size // 8), label, fill=(0, 0, 0, 255), font=font)
        y += size * 3 // 2
    return base.convert("RGB")


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Atomic PNG write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        img.save(tmp, format="PNG")
    return path
