"""Write an RGB array as a tiled pyramidal TIFF that OpenSlide and QuPath open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image

from engine.files import replaced_atomically


def write_pyramidal_tiff(
    path: str | Path,
    rgb: npt.NDArray[np.uint8],
    mpp: float,
    tile: int = 256,
    min_level_px: int = 512,
    compression: str = "zlib",
) -> Path:
    """Level 0 plus 2x-downsampled levels until the image is under ``min_level_px``.

    Pixel size goes into the TIFF resolution tags (pixels per cm), which is where OpenSlide's
    generic-TIFF reader finds ``openslide.mpp-x``. Written to a temporary file and renamed,
    so a crash never leaves a truncated slide. Deflate, because JPEG would need an extra
    codec package.
    """
    path = Path(path)
    # Fast deflate: these files are test and demo slides, written once and read a few times.
    opts: dict[str, Any] = dict(
        tile=(tile, tile), compression=compression, compressionargs={"level": 1}, photometric="rgb"
    )
    level = np.ascontiguousarray(rgb)
    ds = 1
    big = level.nbytes > 2**31
    with replaced_atomically(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tw:
        while True:
            res = 1e4 / (mpp * ds)  # pixels per centimetre
            tw.write(
                level,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if ds == 1 else 1,
                **opts,
            )
            if max(level.shape[:2]) <= min_level_px:
                break
            h, w = level.shape[:2]
            level = np.asarray(
                Image.fromarray(level).resize(
                    (max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX
                )
            )
            ds *= 2
    return path
