"""Write an RGB array as a tiled pyramidal TIFF that OpenSlide and QuPath open."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Fast deflate: these files are test and demo slides, written once and read a few times.
    opts = dict(
        tile=(tile, tile), compression=compression, compressionargs={"level": 1}, photometric="rgb"
    )
    level = np.ascontiguousarray(rgb)
    ds = 1
    with tifffile.TiffWriter(tmp, bigtiff=level.nbytes > 2**31) as tw:
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
    tmp.replace(path)
    return path
