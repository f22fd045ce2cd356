"""Patch features: read patches in batches, embed them, cache the result on disk.

A re-run after the pathologist edits the annotations must read and embed nothing, so the
grid and its features are cached together (float16) under a key made of the slide's content
fingerprint, the encoder and every grid setting; the annotations are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from engine.encoders import DEFAULT_ENCODER, Encoder
from engine.patches import GridSettings, PatchGrid
from engine.slide import Slide

CACHE_VERSION = 1

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
            raise ValueError("context is a field-of-view multiple >= 1 (1 = no context window)")


def default_cache_dir() -> Path:
    env = os.environ.get("QUPATH_REFINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qupath-refine"


def cache_key(fingerprint: str, encoder_key: str, grid: GridSettings, feat: FeatureSettings) -> str:
    payload = {
        "v": CACHE_VERSION,
        "slide": fingerprint,
        "encoder": encoder_key,
        "grid": asdict(grid),
        "context": feat.context,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def load_cached(cache_dir: Path, key: str) -> tuple[PatchGrid, npt.NDArray[np.float32]] | None:
    path = Path(cache_dir) / "features" / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            grid = PatchGrid(
                xy=z["xy"],
                ij=z["ij"],
                size=float(z["size"]),
                stride=float(z["stride"]),
                tissue=z["tissue"],
                shape=(int(z["shape"][0]), int(z["shape"][1])),
            )
            feats = z["features"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache entry is recomputed, not trusted
    return grid, feats


def store_cached(cache_dir: Path, key: str, grid: PatchGrid, feats: npt.NDArray) -> Path:
    folder = Path(cache_dir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.npz"
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(
        tmp,
        xy=grid.xy,
        ij=grid.ij,
        size=grid.size,
        stride=grid.stride,
        tissue=grid.tissue,
        shape=np.array(grid.shape),
        features=feats.astype(np.float16),
    )
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry
    return path


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
    px = encoder.input_px or patch_px
    bs = encoder.batch_size
    starts = list(range(0, n, bs))
    ctx_size = grid.size * context
    shift = (ctx_size - grid.size) / 2

    clock = timings if timings is not None else {}
    clock.setdefault("read", 0.0)
    clock.setdefault("embed", 0.0)

    def read(i0: int) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        xy = grid.xy[i0 : i0 + bs]
        imgs = slide.read_patches(xy, grid.size, px)
        ctx = slide.read_patches(xy - shift, ctx_size, px) if context > 1 else None
        clock["read"] += time.perf_counter() - t0
        return imgs, ctx

    out: npt.NDArray[np.float32] | None = None
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        make_progress(progress, desc, n) as bar,
    ):
        pending = pool.submit(read, starts[0]) if starts else None
        for k, i0 in enumerate(starts):
            imgs, ctx = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(read, starts[k + 1])
            t0 = time.perf_counter()
            f = encoder.embed(imgs)
            if ctx is not None:
                f = np.concatenate([f, encoder.embed(ctx)], axis=1)
            clock["embed"] += time.perf_counter() - t0
            if out is None:
                out = np.empty((n, f.shape[1]), dtype=np.float32)
            out[i0 : i0 + len(f)] = f
            bar.update(len(f))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
