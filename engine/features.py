"""Patch features: read patches in batches, embed them, cache the result on disk.

A re-run after the pathologist edits the annotations must read and embed nothing, so the
grid and its features are cached together (float16) under a key made of the slide's content
fingerprint, the encoder and every grid setting; the annotations are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from engine.encoders import DEFAULT_ENCODER, Encoder
from engine.errors import SettingsError
from engine.files import read_entry, write_entry
from engine.patches import GridSettings, PatchGrid
from engine.slide import Slide, SlideInfo

log = logging.getLogger("qupath_refine")

#: 2: the key holds pixel size and QuPath frame; entries carry a checksum
CACHE_VERSION = 2

#: ``(description, total) -> context manager with .update(n)``, e.g. ``tqdm`` itself; lets a
#: caller show progress its own way (the QuPath script wants plain lines, not bars).
ProgressFactory = Callable[[str, int], Any]


def make_progress(progress: bool | ProgressFactory, desc: str, total: int) -> Any:
    if callable(progress):
        return progress(desc, total)
    return tqdm(total=total, desc=desc, unit="patch", disable=not progress, leave=False)


@dataclass(frozen=True)
class FeatureSettings:
    """How patches are embedded.

    ``context`` > 1 also embeds a window of that many times the patch's field of view around
    it (read at the same pixel count, so at lower resolution) and appends its features: the
    surroundings tell a gland in tumour from a gland in normal mucosa.
    """

    encoder: str = DEFAULT_ENCODER
    context: float = 1.0

    def validate(self) -> None:
        if self.context < 1:
            raise SettingsError(
                "FeatureSettings.context is a field-of-view multiple >= 1 (1 = no context window)"
            )


def default_cache_dir() -> Path:
    env = os.environ.get("QUPATH_REFINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qupath-refine"


def cache_key(info: SlideInfo, encoder_key: str, grid: GridSettings, feat: FeatureSettings) -> str:
    """What the cached grid and features depend on: the slide's content, the pixel size and
    QuPath frame (offset and size) the grid was laid in, the encoder and every grid setting.
    A corrected ``--mpp`` or a recalibrated QuPath image is a new key, not a stale grid."""
    payload = {
        "v": CACHE_VERSION,
        "slide": info.fingerprint,
        "mpp": repr(float(info.mpp)),
        "frame": [*map(int, info.offset), int(info.width), int(info.height)],
        "encoder": encoder_key,
        "grid": asdict(grid),
        "context": feat.context,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


#: Arrays of a cache entry, with the dtype kind each must have.
_ENTRY = {"xy": "f", "ij": "iu", "size": "f", "stride": "f", "tissue": "f", "shape": "iu"}


def _entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "features" / f"{key}.npz"


def load_cached(cache_dir: Path, key: str) -> tuple[PatchGrid, npt.NDArray[np.float32]] | None:
    """The cached grid and features, or None. An entry that fails any check (unreadable,
    truncated, wrong arrays, shapes or dtypes, checksum) is deleted with one warning and
    recomputed (:func:`engine.files.read_entry`)."""
    arrays = read_entry(
        _entry_path(cache_dir, key), (*_ENTRY, "features"), _check_entry, "feature cache"
    )
    if arrays is None:
        return None
    grid = PatchGrid(
        xy=arrays["xy"],
        ij=arrays["ij"],
        size=float(arrays["size"]),
        stride=float(arrays["stride"]),
        tissue=arrays["tissue"],
        shape=(int(arrays["shape"][0]), int(arrays["shape"][1])),
    )
    return grid, arrays["features"].astype(np.float32)


def _check_entry(arrays: dict[str, np.ndarray]) -> None:
    for name, kinds in _ENTRY.items():
        if arrays[name].dtype.kind not in kinds:
            raise ValueError(f"{name} has dtype {arrays[name].dtype}")
    feats, n = arrays["features"], len(arrays["xy"])
    if feats.dtype != np.float16 or feats.ndim != 2 or len(feats) != n:
        raise ValueError(f"features {feats.dtype} {feats.shape} for {n} patches")
    if arrays["xy"].shape != (n, 2) or arrays["ij"].shape != (n, 2):
        raise ValueError("grid coordinates do not match the patch count")
    if arrays["tissue"].shape != (n,) or arrays["shape"].shape != (2,):
        raise ValueError("grid tissue or lattice shape is wrong")


def store_cached(cache_dir: Path, key: str, grid: PatchGrid, feats: npt.NDArray) -> Path | None:
    """Store a slide's grid and features; None (with a warning) when the cache cannot be
    written (:func:`engine.files.write_entry`)."""
    arrays = {
        "xy": grid.xy,
        "ij": grid.ij,
        "size": np.float64(grid.size),
        "stride": np.float64(grid.stride),
        "tissue": grid.tissue,
        "shape": np.array(grid.shape, dtype=np.int64),
        "features": feats.astype(np.float16),
    }
    return write_entry(
        _entry_path(cache_dir, key),
        {k: np.asarray(v) for k, v in arrays.items()},
        "feature cache",
        "the next run will embed this slide again",
    )


def embed_grid(
    slide: Slide,
    grid: PatchGrid,
    encoder: Encoder,
    patch_px: int,
    context: float = 1.0,
    progress: bool | ProgressFactory = True,
    desc: str = "embed",
    timings: dict[str, float] | None = None,
) -> npt.NDArray[np.float32]:
    """Features of every patch of ``grid`` (plus its context window when ``context`` > 1).

    Reading runs one batch ahead in a thread (OpenSlide releases the GIL) so that the disk and
    the encoder work at the same time. ``timings`` accumulates seconds spent in "read" (in
    the thread) and "embed".
    """
    n = len(grid)
    starts = list(range(0, n, encoder.batch_size))
    clock = timings if timings is not None else {}
    clock.setdefault("read", 0.0)
    clock.setdefault("embed", 0.0)
    reader = _AheadReader(slide, grid, encoder.input_px or patch_px, encoder.batch_size, context)
    out: npt.NDArray[np.float32] | None = None
    try:
        with make_progress(progress, desc, n) as bar:
            pending = reader.submit(starts[0], clock) if starts else None
            for k, i0 in enumerate(starts):
                assert pending is not None
                imgs, ctx = pending.result()
                if k + 1 < len(starts):
                    pending = reader.submit(starts[k + 1], clock)
                t0 = time.perf_counter()
                f = encoder.embed(imgs)
                if ctx is not None:
                    f = np.concatenate([f, encoder.embed(ctx)], axis=1)
                clock["embed"] += time.perf_counter() - t0
                if out is None:
                    out = np.empty((n, f.shape[1]), dtype=np.float32)
                out[i0 : i0 + len(f)] = f
                bar.update(len(f))
    finally:
        reader.close()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class _AheadReader:
    """Batches of patches (and their context windows) read in one thread, ahead of the encoder.

    The reader works on the caller's open slide, and OpenSlide aborts the whole process when a
    slide is closed under a running read (seen on Ctrl-C during embedding). Reads hold
    ``_reading``; :meth:`close` takes it and sets ``_stop``, so no read runs, or starts, once
    it has returned."""

    def __init__(self, slide: Slide, grid: PatchGrid, px: int, batch: int, context: float):
        self.slide, self.grid, self.px, self.batch, self.context = slide, grid, px, batch, context
        self._reading = threading.Lock()
        self._stop = False
        self._pool = ThreadPoolExecutor(max_workers=1)

    def submit(
        self, i0: int, clock: dict[str, float]
    ) -> Future[tuple[np.ndarray, np.ndarray | None]]:
        return self._pool.submit(self._read, i0, clock)

    def _read(self, i0: int, clock: dict[str, float]) -> tuple[np.ndarray, np.ndarray | None]:
        with self._reading:
            if self._stop:
                raise CancelledError
            t0 = time.perf_counter()
            g = self.grid
            xy = g.xy[i0 : i0 + self.batch]
            imgs = self.slide.read_patches(xy, g.size, self.px)
            ctx = None
            if self.context > 1:
                ctx_size = g.size * self.context
                shift = (ctx_size - g.size) / 2
                ctx = self.slide.read_patches(xy - shift, ctx_size, self.px)
            clock["read"] += time.perf_counter() - t0
            return imgs, ctx

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        _acquire(self._reading)  # waits for a running read, through further Ctrl-Cs
        self._stop = True
        self._reading.release()


def _acquire(lock: threading.Lock) -> None:
    """Take ``lock``, whatever interrupts the wait."""
    while True:
        try:
            if lock.acquire():
                return
        except KeyboardInterrupt:
            continue
