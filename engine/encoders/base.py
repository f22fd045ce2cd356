"""The encoder interface every feature extractor implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt


class Encoder(ABC):
    """Maps RGB patches to feature vectors.

    ``key`` identifies the encoder and its weights in feature caches, so two encoders with
    the same key must give the same features. ``input_px`` is the side patches are read at
    (None: the grid's own pixel size).
    """

    key: str
    input_px: int | None = None

    @abstractmethod
    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(n, h, w, 3) uint8 RGB -> (n, d) float32."""

    @property
    def batch_size(self) -> int:
        return 32


def to_nchw(images: npt.NDArray[np.uint8], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, the layout CNNs and ViTs expect."""
    # Transposed while uint8 (a quarter of the bytes to move), then normalised in place: the
    # same values as converting first, several times faster (BENCHMARKS.md, issue 11).
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
    x -= mean.astype(np.float32)[:, None, None]
    x /= std.astype(np.float32)[:, None, None]
    return x
