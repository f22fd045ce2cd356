"""Engine throughput on a slide of 10,000+ tissue patches: the figures the engine issue asks for.

    python -m benchmarks.bench_engine [--dir /tmp/qupath-refine-bench] [--repeats 3]
                                      [--json DIR/bench-engine.json]

(from the repository root, like ``python -m benchmarks.run``).

Needs ``pip install -e '.[bench]'`` (imagecodecs: tifffile's JPEG tile codec) unless run with
``--compression zlib``.

What it measures, with the default encoder and the default grid (0.5 µm/px, 128 µm patches,
256 px read and resized to the encoder's 224 px):

(a) encoder alone: patches/s of ``encoder.embed`` on patches read beforehand, in the encoder's
    own batch size (and, for diagnosis, patches/s of ``Slide.read_patches`` alone, one thread);
(b) end to end: patches/s of ``engine.refine`` with a cold feature cache (the ONNX export of
    the encoder is already cached: that is a once-per-machine cost), the ratio end-to-end /
    encoder-alone, and each stage's share of the wall time from ``RefineResult.timings``;
(c) a warm re-run (features cached): the wall time of ``refine`` alone, and of the whole fresh
    process (interpreter start and imports included);
(d) peak memory: the maximum RSS of the cold-run process.

Every measurement runs in a fresh process (this module re-invokes itself as
``python -m benchmarks.bench_engine --worker``, in the same working directory and environment),
so one run's memory or caches never flatter the next. Medians over ``--repeats`` rounds.

The slide is built once and cached in ``--dir``: a tiled pyramidal TIFF (JPEG/YCbCr tiles, as
in Aperio SVS files; ``--compression zlib`` for the demo's codec), written tile by tile from
a generator so the whole slide is never in memory. Its texture is real H&E: 256 px crops of
the GlaS training images (``../shared/data/glas-train``, resampled to 0.5 µm/px), randomly
offset, rotated and mirrored; malignant crops form a main tumour mass and a small focus,
benign crops the rest of a tissue section that fills most of the frame. Without GlaS, the
synthetic demo texture (``engine.synthetic``) is used instead. The coarse annotation is the
main mass dilated, simplified and given a lobe over normal tissue, missing the focus.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

T_START = time.perf_counter()

import numpy as np  # noqa: E402

from engine.files import replaced_atomically  # noqa: E402

if TYPE_CHECKING:
    import shapely

ROOT = Path(__file__).resolve().parents[1]

GLAS = ROOT.parent / "shared" / "data" / "glas-train"
TILE = 256  # TIFF tile side = patch side at the default grid, px
SLIDE_MPP = 0.5
GLAS_MPP = 0.62005
MAX_K = 6  # pyramid levels 0..6 (downsample 64): crop offsets are multiples of 2**MAX_K
SLIDE_VERSION = 1
TARGETS = {"e2e_pps": 150.0, "warm_s": 5.0, "peak_mib": 2048.0}


# --------------------------------------------------------------------------- slide


def _glas_sources() -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """GlaS images at 0.5 µm/px, cropped to multiples of 64 px: (malignant, benign)."""
    from PIL import Image

    grades = GLAS / "Grade.csv"
    if not grades.is_file():
        return None
    tumour: list[np.ndarray] = []
    normal: list[np.ndarray] = []
    for line in grades.read_text().splitlines()[1:]:
        parts = [p.strip() for p in line.split(",")]
        path = GLAS / "images" / f"{parts[0]}.png"
        if len(parts) < 3 or not path.is_file():
            continue
        im = Image.open(path).convert("RGB")
        scale = GLAS_MPP / SLIDE_MPP
        im = im.resize(
            (round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS
        )
        step = 1 << MAX_K
        a = np.asarray(im)[: im.height // step * step, : im.width // step * step]
        (tumour if parts[2] == "malignant" else normal).append(np.ascontiguousarray(a))
    return (tumour, normal) if tumour and normal else None


def _synthetic_sources(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fallback texture: tumour and normal windows of the demo slide."""
    import tifffile

    from engine.metrics import rasterize
    from engine.synthetic import make_demo_slide

    demo = make_demo_slide(folder / "texture-source.tiff", seed=7)
    with tifffile.TiffFile(demo.path) as tf:
        img = tf.pages[0].asarray()
    h, w = img.shape[:2]
    truth = rasterize(demo.truth, (h, w), 1.0)
    tissue = rasterize(demo.tissue, (h, w), 1.0)
    demo.path.unlink()
    side = 512
    tumour, normal = [], []
    for y in range(0, h - side + 1, 256):
        for x in range(0, w - side + 1, 256):
            t = truth[y : y + side, x : x + side].mean()
            s = tissue[y : y + side, x : x + side].mean()
            crop = np.ascontiguousarray(img[y : y + side, x : x + side])
            if t == 1.0:
                tumour.append(crop)
            elif t == 0.0 and s == 1.0:
                normal.append(crop)
    return tumour, normal


def _pyramids(images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Each source image box-downsampled by 2**k for k = 0..MAX_K."""
    from PIL import Image

    out = []
    for a in images:
        levels = [a]
        for _ in range(MAX_K):
            levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
        out.append(levels)
    return out


def _layout(
    cols: int, rows: int, seed: int
) -> tuple[np.ndarray, shapely.Geometry, shapely.Geometry]:
    """Per level-0 tile: kind (0 glass, 1 normal, 2 tumour); plus truth and coarse geometry."""
    import shapely

    rng = np.random.default_rng(seed)
    # Tile centres in units of the frame's half-size, origin at the centre.
    v, u = np.mgrid[0:rows, 0:cols]
    u = (u + 0.5) / cols * 2 - 1
    v = (v + 0.5) / rows * 2 - 1
    theta = np.arctan2(v, u)
    # A rounded-square tissue section with a wavy outline, filling most of the frame.
    radius = 0.95 * (1 + 0.03 * np.sin(5 * theta + rng.uniform(0, 6.3)))
    tissue = np.abs(u) ** 4 + np.abs(v) ** 4 < radius**4

    def blob(cx: float, cy: float, r: float) -> np.ndarray:
        x, y = (np.arange(cols) + 0.5)[None, :], (np.arange(rows) + 0.5)[:, None]
        ang = np.arctan2(y - cy, x - cx)
        wobble = 1 + 0.18 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.1 * np.sin(7 * ang)
        return np.hypot(x - cx, y - cy) < r * wobble

    main = blob(cols * 0.42, rows * 0.5, min(cols, rows) * 0.14) & tissue
    focus = blob(cols * 0.76, rows * 0.3, min(cols, rows) * 0.045) & tissue
    kind = np.where(tissue, 1, 0)
    kind[main | focus] = 2

    def cells(mask: np.ndarray) -> shapely.Geometry:
        r, c = np.nonzero(mask)
        return shapely.union_all(shapely.box(c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE))

    truth = cells(main | focus)
    main_geom = cells(main)
    lobe_c = (
        (cols * 0.42 - min(cols, rows) * 0.15) * TILE,
        (rows * 0.5 + min(cols, rows) * 0.12) * TILE,
    )
    lobe = shapely.Point(*lobe_c).buffer(min(cols, rows) * 0.06 * TILE)
    coarse = (
        shapely.union_all([main_geom.buffer(2.5 * TILE), lobe])
        .simplify(1.5 * TILE)
        .intersection(cells(tissue).buffer(TILE))
    )
    return kind, truth, coarse


def build_slide(folder: Path, cols: int, rows: int, compression: str, seed: int = 0) -> dict:
    """Write (or reuse) the benchmark slide; returns its metadata (paths, geometry as WKT)."""
    import shapely

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"bench-slide-{cols}x{rows}-{compression}-s{seed}-v{SLIDE_VERSION}"
    path, meta_path = folder / f"{stem}.tiff", folder / f"{stem}.json"
    if path.is_file() and meta_path.is_file():
        return json.loads(meta_path.read_text())

    t0 = time.perf_counter()
    sources = _glas_sources()
    texture = "glas-train (real H&E)" if sources else "engine.synthetic demo texture"
    if sources is None:
        sources = _synthetic_sources(folder)
    pyr = {2: _pyramids(sources[0]), 1: _pyramids(sources[1])}
    kind, truth, coarse = _layout(cols, rows, seed)
    _write_slide(path, _Mosaic(kind, pyr, seed), compression)
    meta = {
        "path": str(path),
        "width": cols * TILE,
        "height": rows * TILE,
        "mpp": SLIDE_MPP,
        "tiles": {"glass": int((kind == 0).sum()), "normal": int((kind == 1).sum()),
                  "tumour": int((kind == 2).sum())},
        "texture": texture,
        "compression": compression,
        "bytes": path.stat().st_size,
        "build_s": round(time.perf_counter() - t0, 1),
        "truth_wkt": shapely.to_wkt(truth, rounding_precision=1),
        "coarse_wkt": shapely.to_wkt(coarse, rounding_precision=1),
    }  # fmt: skip
    meta_path.write_text(json.dumps(meta))
    return meta


class _Mosaic:
    """The slide's pixels, tile by tile: glass where ``kind`` is 0, else a crop of a tissue
    pyramid of that kind (2 tumour, 1 normal)."""

    def __init__(self, kind: np.ndarray, pyr: dict[int, list], seed: int) -> None:
        from PIL import Image

        self.kind, self.pyr = kind, pyr
        self.rows, self.cols = kind.shape
        # Each tissue tile: a source image, an offset (multiple of 64 so every pyramid level
        # crops the same tissue) and one of 8 rotations/mirrors.
        rng = np.random.default_rng(seed + 1)
        self.src = np.zeros(kind.shape, dtype=np.int64)
        self.offs = np.zeros((*kind.shape, 2), dtype=np.int64)
        self.trans = rng.integers(0, 8, kind.shape)
        step = 1 << MAX_K
        for k in (1, 2):
            rr, cc = np.nonzero(kind == k)
            idx = rng.integers(0, len(pyr[k]), len(rr))
            self.src[rr, cc] = idx
            hw = np.array([pyr[k][i][0].shape[:2] for i in idx])
            self.offs[rr, cc, 0] = rng.integers(0, (hw[:, 0] - TILE) // step + 1) * step
            self.offs[rr, cc, 1] = rng.integers(0, (hw[:, 1] - TILE) // step + 1) * step
        glass_rng = np.random.default_rng(seed + 2)
        glass0 = np.clip(
            np.array([243, 241, 244]) + glass_rng.normal(0, 1.5, (TILE, TILE, 3)), 0, 255
        ).astype(np.uint8)
        self.glass = [glass0]
        for _ in range(MAX_K):
            self.glass.append(np.asarray(Image.fromarray(self.glass[-1]).reduce(2)))

    def block(self, k: int, r: int, c: int) -> np.ndarray:
        """Layout cell (r, c) at pyramid level ``k``."""
        kd = self.kind[r, c]
        if kd == 0:
            return self.glass[k]
        b = TILE >> k
        y, x = self.offs[r, c] >> k
        a = self.pyr[kd][self.src[r, c]][k][y : y + b, x : x + b]
        t = self.trans[r, c]
        a = np.rot90(a, t % 4)
        return a[:, ::-1] if t >= 4 else a

    def tiles(self, k: int, lw: int, lh: int) -> Iterator[np.ndarray]:
        """The TIFF tiles of level ``k`` (``lw`` x ``lh`` px), row by row."""
        n, b = 1 << k, TILE >> k
        for ty in range(math.ceil(lh / TILE)):
            for tx in range(math.ceil(lw / TILE)):
                tile = np.full((TILE, TILE, 3), 255, dtype=np.uint8)
                for dy in range(n):
                    r = ty * n + dy
                    if r >= self.rows:
                        break
                    for dx in range(n):
                        c = tx * n + dx
                        if c >= self.cols:
                            break
                        tile[dy * b : (dy + 1) * b, dx * b : (dx + 1) * b] = self.block(k, r, c)
                yield tile


def _write_slide(path: Path, mosaic: _Mosaic, compression: str) -> None:
    """The mosaic as a pyramidal tiled TIFF, written beside ``path`` and renamed into place."""
    import tifffile

    width, height = mosaic.cols * TILE, mosaic.rows * TILE
    if compression == "jpeg":
        # RGB in, stored as YCbCr 4:2:0 JPEG (tifffile's default for photometric="rgb").
        codec = dict(
            compression="jpeg", compressionargs={"level": 85}, photometric="rgb",
            subsampling=(2, 2),
        )  # fmt: skip
    else:
        codec = dict(compression="zlib", photometric="rgb")
    with (
        replaced_atomically(path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=True) as tw,
    ):
        for k in range(MAX_K + 1):
            lw, lh = width >> k, height >> k
            res = 1e4 / (SLIDE_MPP * (1 << k))  # pixels per cm: OpenSlide's mpp
            tw.write(
                mosaic.tiles(k, lw, lh),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1,
                maxworkers=os.cpu_count(),
                **codec,
            )
            if max(lw, lh) <= 512:
                break


# --------------------------------------------------------------------------- workers


def _busy_cpu_s() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def add_wait_quiet(ap: argparse.ArgumentParser, note: str = "") -> None:
    """``--wait-quiet`` (:func:`_wait_quiet`), as every timed benchmark takes it."""
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=300,
        help="before each measurement wait up to this many seconds for other processes to "
        "use under 0.2 cores (0: don't wait)" + note,
    )


def _wait_quiet(max_s: float, threshold: float = 0.2, window: float = 5.0) -> float:
    """Wait (up to ``max_s``) until other processes use under ``threshold`` cores; returns
    the last measured load. On a shared machine this keeps other jobs out of the figures."""
    t_end = time.perf_counter() + max_s
    while True:
        b0 = _busy_cpu_s()
        time.sleep(window)
        load = (_busy_cpu_s() - b0) / window
        if not load >= threshold or time.perf_counter() > t_end:  # nan: no /proc, go on
            return load


def _rusage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "peak_rss_mib": ru.ru_maxrss / 1024,  # Linux: KiB
        "cpu_user_s": ru.ru_utime,
        "cpu_sys_s": ru.ru_stime,
    }


def _patch_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = int(np.sum(pred & truth))
    denom = int(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else 1.0


def worker_refine(meta: dict, cache: Path, encoder: str, expect_cached: bool) -> dict:
    import shapely

    from engine.features import FeatureSettings
    from engine.patches import GridSettings, overlap_fraction
    from engine.pipeline import RefineSettings, SlideInput, refine

    t_imports = time.perf_counter() - T_START
    item = SlideInput(Path(meta["path"]), coarse=shapely.from_wkt(meta["coarse_wkt"]))
    # 128 µm, not the 'auto' default: the figures stay comparable with earlier runs (11,268
    # patches on this slide).
    settings = RefineSettings(
        grid=GridSettings(patch_um=128.0),
        features=FeatureSettings(encoder=encoder),
        cache_dir=cache,
    )
    load = os.getloadavg()[0]
    cpu0, busy0 = os.times(), _busy_cpu_s()
    t0 = time.perf_counter()
    result = refine([item], settings, progress=False)
    wall = time.perf_counter() - t0
    cpu1, busy1 = os.times(), _busy_cpu_s()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    s = result.slides[0]
    if s.cached != expect_cached:
        raise SystemExit(f"expected cached={expect_cached}, got {s.cached}")
    truth = overlap_fraction(s.grid, shapely.from_wkt(meta["truth_wkt"])) >= 0.5
    n = len(s.grid)
    return {
        "patches": n,
        "refine_s": wall,
        "patches_per_s": n / wall,
        "timings": result.timings,
        "refine_cpu_s": own,
        # CPU other processes used during the run, in cores: the benchmark needs a quiet
        # machine, and this says whether it had one.
        "other_load_cores": max(0.0, (busy1 - busy0) - own) / wall,
        "imports_s": t_imports,
        "loadavg_1min_before": load,
        "patch_dice_coarse": _patch_dice(s.coarse.astype(bool), truth),
        "patch_dice_refined": _patch_dice(s.refined.astype(bool), truth),
        **_rusage(),
    }


def sample_patches(path: Path, enc: Any, n: int) -> tuple[np.ndarray, int, float]:
    """``n`` patches spread evenly over the slide's 128 µm tissue grid, read at the encoder's
    input side: the images, the grid's size and the seconds the read took (one thread)."""
    from engine.patches import GridSettings, make_grid, tissue_mask
    from engine.slide import Slide

    g = GridSettings(patch_um=128.0)
    with Slide(path) as slide:
        thumb, ds = slide.thumbnail(g.tissue_mpp)
        size = g.side_um / slide.mpp
        grid = make_grid(
            slide.width, slide.height, tissue_mask(thumb), ds, size, g.step_um / slide.mpp,
            g.min_tissue,
        )  # fmt: skip
        pick = np.linspace(0, len(grid) - 1, min(n, len(grid))).round().astype(int)
        t0 = time.perf_counter()
        images = slide.read_patches(grid.xy[pick], size, enc.input_px or g.patch_px)
        return images, len(grid), time.perf_counter() - t0


def worker_encoder(meta: dict, cache: Path, encoder: str, n: int) -> dict:
    from engine.encoders import build_encoder

    enc = build_encoder(encoder, cache)
    load = os.getloadavg()[0]
    images, n_grid, read_s = sample_patches(Path(meta["path"]), enc, n)
    bs = enc.batch_size
    enc.embed(images[:bs])  # warm-up: onnxruntime allocates its buffers on the first run
    cpu0, busy0 = os.times(), _busy_cpu_s()
    t0 = time.perf_counter()
    for i0 in range(0, len(images), bs):
        enc.embed(images[i0 : i0 + bs])
    embed_s = time.perf_counter() - t0
    cpu1, busy1 = os.times(), _busy_cpu_s()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "patches": len(images),
        "batch_size": bs,
        "encoder_key": enc.key,
        "encoder_patches_per_s": len(images) / embed_s,
        "read_patches_per_s_1thread": len(images) / read_s,
        "grid_patches": n_grid,
        "other_load_cores": max(0.0, (busy1 - busy0) - own) / embed_s,
        "loadavg_1min_before": load,
        **_rusage(),
    }


# --------------------------------------------------------------------------- driver


def _run_worker(args: argparse.Namespace, mode: str, meta_path: Path) -> tuple[dict, float]:
    if args.wait_quiet > 0:
        _wait_quiet(args.wait_quiet)
    cmd = [
        sys.executable, "-m", "benchmarks.bench_engine", "--worker", mode, "--meta", str(meta_path),
        "--dir", str(args.dir), "--encoder", args.encoder,
        "--encoder-patches", str(args.encoder_patches),
    ]  # fmt: skip
    proc, wall = timed_run(cmd, f"worker {mode}", env=dict(os.environ, PYTHONHASHSEED="0"))
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def timed_run(
    cmd: list[str], what: str, **kw: Any
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd`` as a fresh process: its result and wall seconds; its stderr and an exit
    naming ``what`` if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{what} failed ({proc.returncode})")
    return proc, wall


def _machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import onnxruntime
    import openslide

    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "openslide": openslide.__library_version__,
        "threads_env": os.environ.get("QUPATH_REFINE_THREADS"),
    }


def _git_state() -> str:
    """The engine code measured: commit, and whether engine/ had uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "engine"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev or 'unknown'}{' + uncommitted engine changes' if dirty else ''}"


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _quiet(runs: list[dict], limit: float) -> tuple[list[dict], bool]:
    """The measurements during which other processes used under ``limit`` cores; all of them
    (flagged False) when none was quiet."""
    quiet = [r for r in runs if r["other_load_cores"] < limit]
    return (quiet, True) if quiet else (runs, False)


def summarise(enc: list[dict], cold: list[dict], warm: list[dict], limit: float) -> dict:
    """Medians over each kind's quiet measurements (each measurement is judged on its own)."""
    all_runs = {"encoder": enc, "cold": cold, "warm": warm}
    enc, enc_q = _quiet(enc, limit)
    cold, cold_q = _quiet(cold, limit)
    warm, warm_q = _quiet(warm, limit)
    stages = ("read", "embed", "prototypes", "train", "regions")
    cold_wall = _median(cold, "refine_s")
    stage_s = {s: statistics.median(r["timings"][s] for r in cold) for s in stages}
    main_thread = sum(stage_s[s] for s in stages if s != "read")
    s = {
        "patches": cold[0]["patches"],
        "encoder_pps": _median(enc, "encoder_patches_per_s"),
        "read_pps_1thread": _median(enc, "read_patches_per_s_1thread"),
        "e2e_pps": _median(cold, "patches_per_s"),
        "ratio_e2e_over_encoder": _median(cold, "patches_per_s")
        / _median(enc, "encoder_patches_per_s"),
        "cold_refine_s": cold_wall,
        "cold_cpu_s": _median(cold, "refine_cpu_s"),
        "stage_s": stage_s,
        "stage_share": {k: v / cold_wall for k, v in stage_s.items()},
        "unattributed_s": cold_wall - main_thread,
        "warm_refine_s": _median(warm, "refine_s"),
        "warm_process_s": _median(warm, "process_s"),
        "warm_imports_s": _median(warm, "imports_s"),
        "warm_stage_s": {s: statistics.median(r["timings"][s] for r in warm) for s in stages},
        # Memory does not depend on what else runs: every cold run counts.
        "peak_rss_mib_cold": _median(all_runs["cold"], "peak_rss_mib"),
        "peak_rss_mib_cold_max": max(r["peak_rss_mib"] for r in all_runs["cold"]),
        "peak_rss_mib_warm": _median(warm, "peak_rss_mib"),
        "patch_dice_coarse": _median(cold, "patch_dice_coarse"),
        "patch_dice_refined": _median(cold, "patch_dice_refined"),
        "code": sorted({r["code"] for r in (*enc, *cold, *warm)}),
        "used": {"encoder": len(enc), "cold": len(cold), "warm": len(warm)},
        "quiet": {"encoder": enc_q, "cold": cold_q, "warm": warm_q},
        "other_load_cores": {
            k: [round(r["other_load_cores"], 2) for r in v] for k, v in all_runs.items()
        },
        "quiet_cores": limit,
    }
    s["pass"] = {
        "e2e_pps>=150": s["e2e_pps"] >= TARGETS["e2e_pps"],
        "warm_refine<5s": s["warm_refine_s"] < TARGETS["warm_s"],
        "warm_process<5s": s["warm_process_s"] < TARGETS["warm_s"],
        "peak_rss<2GiB": s["peak_rss_mib_cold_max"] < TARGETS["peak_mib"],
    }
    return s


def markdown(s: dict) -> str:
    ok = {True: "pass", False: "**miss**"}
    p = s["pass"]
    lines = [
        f"Slide: {s['patches']:,} tissue patches (128 µm = 256 px at 0.5 µm/px, encoder input "
        f"224 px). Every measurement runs in a fresh process; medians over the measurements "
        f"during which other processes used under {s['quiet_cores']} cores: "
        + ", ".join(
            f"{k} {s['used'][k]} of {len(s['other_load_cores'][k])}"
            + ("" if s["quiet"][k] else " (none quiet: pessimistic)")
            for k in ("encoder", "cold", "warm")
        )
        + ".",
        "",
        "| measure | median | target | |",
        "|---|---|---|---|",
        f"| end to end, cold feature cache (`refine`) | {s['e2e_pps']:.0f} patches/s "
        f"({s['cold_refine_s']:.1f} s) | ≥ 150 patches/s | {ok[p['e2e_pps>=150']]} |",
        f"| encoder alone (pre-read patches, batch as in the pipeline) | "
        f"{s['encoder_pps']:.0f} patches/s | | |",
        f"| ratio end to end / encoder alone | {s['ratio_e2e_over_encoder']:.2f} | | |",
        f"| reading alone (`Slide.read_patches`, one thread) | "
        f"{s['read_pps_1thread']:.0f} patches/s | | |",
        f"| re-run, cached features: `refine` wall time | {s['warm_refine_s']:.2f} s | < 5 s | "
        f"{ok[p['warm_refine<5s']]} |",
        f"| re-run, cached features: whole fresh process (imports {s['warm_imports_s']:.1f} s) | "
        f"{s['warm_process_s']:.2f} s | < 5 s | {ok[p['warm_process<5s']]} |",
        f"| peak memory (max RSS), cold run | {s['peak_rss_mib_cold']:.0f} MiB "
        f"(max {s['peak_rss_mib_cold_max']:.0f}) | < 2 GiB | {ok[p['peak_rss<2GiB']]} |",
        "",
        "| stage (cold run) | seconds | share of wall time |",
        "|---|---|---|",
    ]
    notes = {
        "read": " (background thread, overlaps embed; includes thumbnail + grid)",
        "embed": "",
        "prototypes": "",
        "train": "",
        "regions": "",
    }
    for k, v in s["stage_s"].items():
        lines.append(f"| {k}{notes[k]} | {v:.1f} | {s['stage_share'][k]:.0%} |")
    lines.append(
        f"| main thread outside embed/prototypes/train/regions (waiting for reads, "
        f"thumbnail, grid, cache write) | {s['unattributed_s']:.1f} | "
        f"{s['unattributed_s'] / s['cold_refine_s']:.0%} |"
    )
    lines += [
        "",
        "Cores other processes used during each measurement (all rounds): "
        + "; ".join(
            f"{k} " + ", ".join(f"{v:.2f}" for v in s["other_load_cores"][k])
            for k in ("encoder", "cold", "warm")
        )
        + ".",
        "",
        f"Sanity: patch-level Dice against the mosaic's truth, coarse "
        f"{s['patch_dice_coarse']:.3f} → refined {s['patch_dice_refined']:.3f}.",
    ]
    return "\n".join(lines)


def _write_json(
    path: Path,
    command: str,
    meta: dict,
    enc: list[dict],
    cold: list[dict],
    warm: list[dict],
    limit: float,
) -> dict:
    """Results so far (written after every round, so an interrupted run keeps its data)."""
    result = {
        "command": command.strip(),
        "machine": _machine(),
        "slide": {k: v for k, v in meta.items() if not k.endswith("_wkt")},
        "summary": summarise(enc, cold, warm, limit),
        "runs": {"encoder": enc, "cold": cold, "warm": warm},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def _report(paths: list[Path], limit: float) -> None:
    enc: list[dict] = []
    cold: list[dict] = []
    warm: list[dict] = []
    for p in paths:
        runs = json.loads(p.read_text())["runs"]
        for w, secs in zip(runs["warm"], runs.get("warm_process_s", []), strict=False):
            w.setdefault("process_s", secs)  # results files of the first version
        enc += runs["encoder"]
        cold += runs["cold"]
        warm += runs["warm"]
    first = json.loads(paths[0].read_text())
    summary = summarise(enc, cold, warm, limit)
    m = first["machine"]
    print(f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; "
          f"onnxruntime {m['onnxruntime']}, OpenSlide {m['openslide']}.")  # fmt: skip
    print(f"Commands: {'; '.join(json.loads(p.read_text())['command'] for p in paths)}")
    print(f"Code: {', '.join(summary['code'])}.")
    print()
    print(markdown(summary))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_engine", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path("/tmp/qupath-refine-bench"),
        help="where the slide and the caches live (reused between runs)",
    )
    ap.add_argument(
        "--json", type=Path, default=None, help="results file (default: DIR/bench-engine.json)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="quiet rounds to take medians of")
    ap.add_argument(
        "--max-runs", type=int, default=0, help="give up after this many rounds (0: 3 x repeats)"
    )
    ap.add_argument(
        "--quiet-cores",
        type=float,
        default=0.2,
        help="a round counts when other processes used fewer cores than this throughout",
    )
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--cols", type=int, default=136, help="slide width in 256 px tiles")
    ap.add_argument("--rows", type=int, default=124, help="slide height in 256 px tiles")
    ap.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg")
    ap.add_argument(
        "--encoder-patches",
        type=int,
        default=1024,
        help="patches pre-read for the encoder-alone measurement",
    )
    ap.add_argument("--min-patches", type=int, default=10_000)
    add_wait_quiet(ap, "; each run records the load it saw")
    ap.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="no measuring: pool the runs of these results files and print the summary",
    )
    ap.add_argument("--worker", choices=("encoder", "cold", "warm"), help=argparse.SUPPRESS)
    ap.add_argument("--meta", type=Path, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    cache = args.dir / "cache"
    if args.json is None:
        args.json = args.dir / "bench-engine.json"
    if args.worker:
        meta = json.loads(args.meta.read_text())
        if args.worker == "encoder":
            out = worker_encoder(meta, cache, args.encoder, args.encoder_patches)
        else:
            out = worker_refine(meta, cache, args.encoder, expect_cached=args.worker == "warm")
        out["code"] = _git_state()  # what this process imported, in case engine/ is edited live
        print(json.dumps(out))
        return

    if args.report:
        _report(args.report, args.quiet_cores)
        return
    _measure(args, argv, cache)


def _measure(args: argparse.Namespace, argv: list[str] | None, cache: Path) -> None:
    """Build the slide, then measure rounds until ``args.repeats`` quiet ones of each kind."""
    print(f"slide in {args.dir} ...", flush=True)
    meta = build_slide(args.dir, args.cols, args.rows, args.compression)
    meta_path = args.dir / (Path(meta["path"]).stem + ".json")
    print(f"  {meta['path']} ({meta['bytes'] / 2**20:.0f} MiB, {meta['texture']})", flush=True)
    # The one-time ONNX export, outside every measurement.
    from engine.encoders import build_encoder

    build_encoder(args.encoder, cache)

    enc: list[dict] = []
    cold: list[dict] = []
    warm: list[dict] = []
    max_runs = args.max_runs or 3 * args.repeats
    command = "python -m benchmarks.bench_engine " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )

    def quiet_count(runs: list[dict]) -> int:
        return sum(r["other_load_cores"] < args.quiet_cores for r in runs)

    for i in range(max_runs):
        if min(quiet_count(enc), quiet_count(cold), quiet_count(warm)) >= args.repeats:
            break
        e, c, w = _round(args, meta_path, cache, i)
        enc.append(e)
        cold.append(c)
        warm.append(w)
        _write_json(args.json, command, meta, enc, cold, warm, args.quiet_cores)

    result = _write_json(args.json, command, meta, enc, cold, warm, args.quiet_cores)
    summary = result["summary"]
    m = result["machine"]
    print()
    print(f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; "
          f"onnxruntime {m['onnxruntime']}, OpenSlide {m['openslide']}.")  # fmt: skip
    print(f"Command: `{result['command']}`; code: {', '.join(summary['code'])}.")
    print()
    print(markdown(summary))
    print(f"\nresults: {args.json}")


def _round(
    args: argparse.Namespace, meta_path: Path, cache: Path, i: int
) -> tuple[dict, dict, dict]:
    """One round: the encoder alone, a cold refine (no feature cache) and a warm one."""
    flag = {True: "quiet", False: "busy"}
    e, _ = _run_worker(args, "encoder", meta_path)
    if e["grid_patches"] < args.min_patches:
        raise SystemExit(f"only {e['grid_patches']} tissue patches (< {args.min_patches})")
    shutil.rmtree(cache / "features", ignore_errors=True)
    c, _ = _run_worker(args, "cold", meta_path)
    w, w_wall = _run_worker(args, "warm", meta_path)
    w["process_s"] = w_wall
    print(
        f"run {i + 1}: encoder {e['encoder_patches_per_s']:.0f}/s, "
        f"read {e['read_patches_per_s_1thread']:.0f}/s "
        f"({flag[e['other_load_cores'] < args.quiet_cores]}); end to end "
        f"{c['patches_per_s']:.0f}/s ({c['refine_s']:.1f} s, {c['patches']} patches, "
        f"peak {c['peak_rss_mib']:.0f} MiB; {flag[c['other_load_cores'] < args.quiet_cores]}"
        f"); warm {w['refine_s']:.2f} s, process {w_wall:.2f} s "
        f"({flag[w['other_load_cores'] < args.quiet_cores]})",
        flush=True,
    )
    return e, c, w


if __name__ == "__main__":
    main()
