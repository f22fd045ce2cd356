"""Weight-free H&E features: stain statistics from colour deconvolution plus texture.

The fallback with the fewest dependencies and no weights: fast, deterministic and often
enough to tell dense nuclear tumour from stroma or fat.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage.color import rgb2hed
from skimage.feature import local_binary_pattern

from engine.encoders.base import Encoder

_PCTS = (10, 50, 90)
_LBP = ((8, 1.0), (8, 3.0))  # (points, radius) pairs: fine and coarser texture


def _lbp_hist(channel: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    # LBP wants integers; a stain channel scaled to 0..255 keeps enough levels.
    lo, hi = np.percentile(channel, (1, 99))
    img = np.clip((channel - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    hists = []
    for p, r in _LBP:
        codes = local_binary_pattern(img, p, r, method="uniform")
        h, _ = np.histogram(codes, bins=p + 2, range=(0, p + 2))
        hists.append(h / max(1, codes.size))
    return np.concatenate(hists).astype(np.float32)


class StainTexture(Encoder):
    """Per-patch H, E and DAB statistics, RGB statistics and LBP texture of haematoxylin."""

    key = "stain-texture-v1"
    input_px = 128  # texture at a fixed scale, and fast

    def __init__(self) -> None:
        self.dim = 3 * (2 + len(_PCTS)) + 6 + 2 + sum(p + 2 for p, _ in _LBP)

    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        hed = rgb2hed(images)  # works on (n, h, w, 3)
        n = len(images)
        flat = hed.reshape(n, -1, 3)
        stats = [flat.mean(1), flat.std(1)]
        stats += [np.percentile(flat, q, axis=1) for q in _PCTS]
        rgb = images.reshape(n, -1, 3).astype(np.float32) / 255.0
        stats += [rgb.mean(1), rgb.std(1)]
        h = hed[..., 0]
        gy, gx = np.gradient(h, axis=(1, 2))
        grad = np.hypot(gx, gy).reshape(n, -1)
        stats.append(np.stack([grad.mean(1), grad.std(1)], axis=1))
        texture = np.stack([_lbp_hist(h[i]) for i in range(n)])
        return np.concatenate([*stats, texture], axis=1).astype(np.float32)

    @property
    def batch_size(self) -> int:
        return 64
