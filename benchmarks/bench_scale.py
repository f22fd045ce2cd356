"""Many slides: one process vs a Dask LocalCluster, and the cached re-run (issue 11).

    python -m benchmarks.bench_scale [--dir /tmp/qupath-refine-scale] [--rounds 3] [--quick]
    python -m benchmarks.bench_scale --cached-rerun [--dir /tmp/qupath-refine-bench] [--runs 5]
    PAQUO_QUPATH_DIR=/path/to/QuPath python -m benchmarks.bench_scale --paquo-write [--runs 3]

(from the repository root). Measure on a quiet machine: other load changes the figures far
more than anything measured here (each measurement records the cores other processes used).

Default mode: 8 real-tissue region slides (GlaS texture, the report part's crops, built like the
benchmark's by :func:`benchmarks.cohorts.build_cohort`, a moderately coarse outline each)
refined by the ``slide`` job three ways, in rounds, the order rotated each round:

* ``in-process``: :func:`qupath_bridge.jobs.slide.refine_slides` (``qupath-refine slide``);
* ``workers-1`` and ``workers-2``: :func:`qupath_bridge.dask_runner.refine_slides_dask` on a
  LocalCluster of 1 and 2 processes (``--workers N``; cluster start-up included).

Each run is a fresh process (``--worker``) on a fresh feature cache (the encoder's ONNX
export copied in), so every run reads, embeds, trains and writes. Reported per mode (medians
over rounds): slides/min, patches/s, the driver's peak RSS and each worker's (VmHWM), Dask's
overhead (``workers-1`` time / ``in-process`` time - 1, pairwise within a round) and the
speed-up of ``workers-2``, and whether every mode wrote the in-process run's outputs (overlay
PNGs byte for byte, GeoJSON without its random feature ids).

``--cached-rerun``: the whole ``qupath-refine slide`` command as fresh processes
(``python -m qupath_bridge.cli``, interpreter start and imports included) on the engine
benchmark's 11k-patch slide (:func:`benchmarks.bench_engine.build_slide`, shared with
``bench_engine`` through ``--dir``), per round: the encoder alone (``bench_engine``'s own
measurement), a cold run (features, scores and self-tests removed from the cache; the ONNX
export kept), a cached re-run, and a re-run after an outline edit (the coarse outline pulled
in by one patch: features from the cache, the slide's model trained again, as after a
pathologist's edit in QuPath). Reported: medians of cold, cached and edited wall time, the
cold run's patches/s over the encoder alone's (same rounds), whether each re-run's classifier
came from the cache, and whether its outputs equal the cold run's.

``--paquo-write``: what the driver of a project run does per image, alone: 20,000 tiles (each
with its ``p_Tumor`` measurement, like the engine's patches) and a refined region written into
one image of a fresh QuPath project (the demo slide, its coarse outline as an annotation)
through :func:`qupath_bridge.project.write_refined` (backup, replace, ``entry.save()``), then
the project file saved. Each run is a fresh process on a fresh project. Reported: median
seconds per image (``write_refined``), the project save and the JVM start beside it, and the
object count QuPath recorded. Needs QuPath (``PAQUO_QUPATH_DIR``); exits with one line when
none is found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_engine import add_wait_quiet, timed_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODES = ("in-process", "workers-1", "workers-2")
PAQUO_WRITE = "paquo-write"


# --------------------------------------------------------------------------- measuring


class Memory:
    """Peak resident memory of this process (sampled RSS) and of each child process (its
    VmHWM, the kernel's own peak), sampled every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil  # type: ignore[import-untyped]  # types-psutil not installed

        self.interval = interval
        self.me = psutil.Process()
        self.driver = 0
        self.children: dict[int, int] = {}

    def _sample(self) -> None:
        import psutil

        self.driver = max(self.driver, self.me.memory_info().rss)
        for child in self.me.children(recursive=True):
            try:
                hwm = _vm_hwm(child.pid)
                if hwm is None:
                    hwm = child.memory_info().rss
            except psutil.Error:
                continue
            self.children[child.pid] = max(self.children.get(child.pid, 0), hwm)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Memory:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, Any]:
        mib = 2**20
        workers = sorted(v / mib for v in self.children.values() if v > 64 * mib)
        return {"driver_peak_mib": self.driver / mib, "worker_peak_mib": workers}


def _vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _busy() -> float:
    from benchmarks.bench_engine import _busy_cpu_s

    return _busy_cpu_s()


def _other_load(wall: float, busy0: float, cpu0: os.times_result) -> float:
    """Cores other processes used during a measurement of ``wall`` seconds (this process and
    its waited-for children excluded)."""
    cpu1 = os.times()
    own = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system"))
    own += sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("children_user", "children_system"))
    return max(0.0, (_busy() - busy0) - own) / max(wall, 1e-9)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _wait_quiet(max_s: float) -> None:
    if max_s > 0:
        from benchmarks.bench_engine import _wait_quiet as wait

        wait(max_s)


# --------------------------------------------------------------------------- outputs


def _without_ids(path: Path) -> Any:
    d = json.loads(path.read_bytes())
    for f in d.get("features", []):
        f.pop("id", None)
    return d


def same_outputs(a: Path, b: Path) -> list[str]:
    """What differs between two ``slide`` output folders (empty: the same): overlays byte
    for byte, GeoJSON without feature ids, summary rows without timings and cache flags."""
    diffs = []
    names = sorted(p.name for p in a.iterdir() if p.suffix in (".png", ".geojson"))
    if names != sorted(p.name for p in b.iterdir() if p.suffix in (".png", ".geojson")):
        return ["different files"]
    for name in names:
        if name.endswith(".png"):
            same = (a / name).read_bytes() == (b / name).read_bytes()
        else:
            same = _without_ids(a / name) == _without_ids(b / name)
        if not same:
            diffs.append(name)
    skip = {"seconds", "cached", "classifier"}
    rows = [
        [{k: v for k, v in r.items() if k not in skip} for r in _summary(d)["slides"]]
        for d in (a, b)
    ]
    if rows[0] != rows[1]:
        diffs.append("summary.json rows")
    return diffs


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


# --------------------------------------------------------------------------- slides mode


def build_slides(work: Path, n: int, quick: bool) -> dict[str, Any]:
    """``n`` region slides (the report part's crops, a geometry each: with 8 slides some
    GlaS patient folds hold no benign crop) and a moderate coarse outline each; reused from
    ``work`` when built before."""
    from benchmarks.cohorts import BenchmarkSpec, build_cohort
    from benchmarks.slides import write_coarse

    spec = BenchmarkSpec("scale", "region", 80.0, n_slides=n, small=quick, part="report")
    slides = build_cohort(DATA, work, spec)
    coarse = [write_coarse(s, "moderate", j)[1] for j, s in enumerate(slides)]
    return {"slides": [str(s.path) for s in slides], "coarse": [str(c) for c in coarse]}


def worker_slides(manifest: dict[str, Any], mode: str, out: Path, cache: Path) -> dict:
    """One run of ``mode`` in this (fresh) process: the ``slide`` job on every slide."""
    from engine.encoders import DEFAULT_ENCODER
    from engine.features import FeatureSettings
    from engine.patches import GridSettings
    from engine.pipeline import RefineSettings
    from qupath_bridge.cli import _setup_logging

    _setup_logging(quiet=True)
    settings = RefineSettings(
        grid=GridSettings(patch_um=manifest["patch_um"]),
        features=FeatureSettings(encoder=manifest.get("encoder", DEFAULT_ENCODER)),
        cache_dir=cache,
        device="cpu",
    )
    slides = [Path(p) for p in manifest["slides"]]
    coarse = [Path(p) for p in manifest["coarse"]]
    busy0, cpu0 = _busy(), os.times()
    with Memory() as mem:
        t0 = time.perf_counter()
        if mode == "in-process":
            from qupath_bridge.jobs.slide import refine_slides

            run = refine_slides(slides, coarse, out, settings, progress=False)
        else:
            from engine.cluster import DaskSettings
            from qupath_bridge.dask_runner import refine_slides_dask

            workers = int(mode.split("-")[1])
            dask = DaskSettings(workers=workers)
            run = refine_slides_dask(slides, coarse, out, settings, dask, progress=False)
        wall = time.perf_counter() - t0
    patches = sum(r.patches for r in run.slides)
    return {
        "mode": mode,
        "wall_s": wall,
        "slides": len(run.slides),
        "failed": len(run.failed),
        "patches": patches,
        "slides_per_min": 60 * len(run.slides) / wall,
        "patches_per_s": patches / wall,
        "timings": run.timings,
        "other_load_cores": _other_load(wall, busy0, cpu0),
        **mem.report(),
    }


def _fresh_cache(path: Path, encoders: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(encoders, path / "encoders")
    return path


def _run_worker(argv: list[str]) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", *argv]
    p, wall = timed_run(cmd, f"worker {argv}", cwd=ROOT)
    return json.loads(p.stdout.strip().splitlines()[-1]), wall


def slides_mode(args: argparse.Namespace) -> dict[str, Any]:
    from engine.encoders import build_encoder

    work = args.dir
    n = args.slides or (2 if args.quick else 8)
    print(f"building {n} slides in {work / 'slides'} ...", flush=True)
    manifest = build_slides(work, n, args.quick)
    manifest["patch_um"] = args.patch_um
    manifest["encoder"] = args.encoder
    mpath = work / "scale-manifest.json"
    mpath.write_text(json.dumps(manifest))
    encoders = work / "encoder-export"
    build_encoder(args.encoder, encoders)  # the one-time ONNX export, outside every run
    encoders = encoders / "encoders"
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES[r % 3 :] + MODES[: r % 3]  # rotated: drift hits every mode alike
        for mode in order:
            _wait_quiet(args.wait_quiet)
            out = work / "out" / mode
            shutil.rmtree(out, ignore_errors=True)
            cache = _fresh_cache(work / "cache" / mode, encoders)
            argv = ["--worker", mode, "--manifest", str(mpath), "--out", str(out)]
            res, process_s = _run_worker([*argv, "--cache", str(cache)])
            res["process_s"] = process_s
            res["round"] = r
            runs[mode].append(res)
            print(
                f"round {r + 1} {mode}: {res['wall_s']:.1f} s, {res['patches']} patches, "
                f"{res['patches_per_s']:.0f} patches/s, driver {res['driver_peak_mib']:.0f} "
                f"MiB, workers {[round(w) for w in res['worker_peak_mib']]} MiB, other load "
                f"{res['other_load_cores']:.2f} cores",
                flush=True,
            )
        for mode in MODES[1:]:  # this round's outputs against this round's in-process ones
            runs[mode][-1]["differs_from_in_process"] = same_outputs(
                work / "out" / "in-process", work / "out" / mode
            )
    return {"manifest": manifest, "runs": runs, "summary": summarise_slides(runs)}


def summarise_slides(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for mode, rs in runs.items():
        s[mode] = {
            "wall_s": _median([r["wall_s"] for r in rs]),
            "slides_per_min": _median([r["slides_per_min"] for r in rs]),
            "patches_per_s": _median([r["patches_per_s"] for r in rs]),
            "driver_peak_mib": max(r["driver_peak_mib"] for r in rs),
            "worker_peak_mib": max(max(r["worker_peak_mib"], default=0) for r in rs),
            "max_other_load_cores": max(r["other_load_cores"] for r in rs),
            "outputs_identical": all(not r.get("differs_from_in_process") for r in rs),
        }
    pairs = list(zip(runs["in-process"], runs["workers-1"], runs["workers-2"], strict=True))
    s["dask_overhead"] = _median([w1["wall_s"] / ip["wall_s"] - 1 for ip, w1, _ in pairs])
    s["workers_2_speedup"] = _median([ip["wall_s"] / w2["wall_s"] for ip, _, w2 in pairs])
    return s


# --------------------------------------------------------------------------- cached re-run


#: the cached re-run's grid (bench_engine's), and the depth of its outline edit
RERUN_PATCH_UM = 128.0


def cli_run(meta: dict[str, Any], coarse: Path, out: Path, cache: Path) -> dict[str, Any]:
    """``python -m qupath_bridge.cli slide`` as a fresh process, timed from outside."""
    cmd = [
        sys.executable, "-m", "qupath_bridge.cli", "slide", meta["path"], "--coarse", str(coarse),
        "--out", str(out), "--cache-dir", str(cache), "--patch-um", f"{RERUN_PATCH_UM:g}", "-q",
    ]  # fmt: skip
    busy0, cpu0 = _busy(), os.times()
    _, wall = timed_run(cmd, "qupath-refine slide", cwd=ROOT)
    row = _summary(out)["slides"][0]
    return {
        "process_s": wall,
        "patches": row["patches"],
        "cached": row["cached"],
        "classifier": row["classifier"],
        "timings": _summary(out)["timings"],
        "other_load_cores": _other_load(wall, busy0, cpu0),
    }


def cached_rerun_mode(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_engine import build_slide
    from engine.encoders import build_encoder
    from qupath_bridge.geojson_io import annotation_features, write_features

    cols, rows = (24, 20) if args.quick else (args.cols, args.rows)
    print(f"slide in {args.dir} ...", flush=True)
    meta = build_slide(args.dir, cols, rows, args.compression)
    import shapely

    drawn = shapely.from_wkt(meta["coarse_wkt"])
    stem = Path(meta["path"]).stem
    coarse = write_features(
        args.dir / f"{stem}.coarse.geojson", annotation_features(drawn, "Tumor")
    )
    # The pathologist's edit: the outline pulled in by one patch all round.
    edited = write_features(
        args.dir / f"{stem}.edited.geojson",
        annotation_features(drawn.buffer(-RERUN_PATCH_UM / meta["mpp"]), "Tumor"),
    )
    build_encoder(args.encoder, args.dir / "cache")  # bench_engine's cache (encoder alone)
    runs = [
        _cached_rerun_round(args, r, meta, (coarse, edited))
        for r in range(1 if args.quick else args.runs)
    ]
    return {"slide": meta["path"], "runs": runs, "summary": summarise_cached_reruns(runs)}


def _cached_rerun_round(
    args: argparse.Namespace, r: int, meta: dict[str, Any], outlines: tuple[Path, Path]
) -> dict[str, Any]:
    """One round: the encoder alone, then a cold run, a cached re-run and a re-run with the
    edited outline of the CLI (its scores are not cached: the cold run emptied the cache)."""
    coarse, edited = outlines
    engine_cache = args.dir / "cache"  # bench_engine's: the encoder-alone worker uses it
    cache = args.dir / "cache-scale"
    meta_path = args.dir / (Path(meta["path"]).stem + ".json")
    _wait_quiet(args.wait_quiet)
    enc_argv = [
        sys.executable, "-m", "benchmarks.bench_engine", "--worker", "encoder",
        "--meta", str(meta_path), "--dir", str(args.dir), "--encoder", args.encoder,
        "--encoder-patches", str(128 if args.quick else args.encoder_patches),
    ]  # fmt: skip
    p, _ = timed_run(enc_argv, "the encoder-alone measurement", cwd=ROOT)
    enc = json.loads(p.stdout.strip().splitlines()[-1])
    _wait_quiet(args.wait_quiet)
    for sub in ("features", "scores", "self-tests"):
        shutil.rmtree(cache / sub, ignore_errors=True)
    shutil.copytree(engine_cache / "encoders", cache / "encoders", dirs_exist_ok=True)
    cold_out, warm_out = args.dir / "out-cold", args.dir / "out-cached"
    cold = cli_run(meta, coarse, cold_out, cache)
    _wait_quiet(args.wait_quiet)
    warm = cli_run(meta, coarse, warm_out, cache)
    _wait_quiet(args.wait_quiet)
    edit = cli_run(meta, edited, args.dir / "out-edited", cache)
    res = {
        "round": r,
        "encoder_patches_per_s": enc["encoder_patches_per_s"],
        "encoder_other_load_cores": enc["other_load_cores"],
        "cold": cold,
        "cached": warm,
        "edited": edit,
        "e2e_patches_per_s": cold["patches"] / cold["process_s"],
        "outputs_differ": same_outputs(cold_out, warm_out),
    }
    res["e2e_over_encoder"] = res["e2e_patches_per_s"] / res["encoder_patches_per_s"]
    print(
        f"round {r + 1}: encoder {enc['encoder_patches_per_s']:.0f}/s; cold "
        f"{cold['process_s']:.1f} s ({res['e2e_patches_per_s']:.0f} patches/s, "
        f"{res['e2e_over_encoder']:.2f} of the encoder); cached re-run "
        f"{warm['process_s']:.2f} s (classifier {warm['classifier']}); after an edit "
        f"{edit['process_s']:.2f} s (classifier {edit['classifier']}); other load "
        f"{cold['other_load_cores']:.2f}/{warm['other_load_cores']:.2f}/"
        f"{edit['other_load_cores']:.2f} cores",
        flush=True,
    )
    return res


def summarise_cached_reruns(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "patches": runs[0]["cold"]["patches"],
        "cold_process_s": _median([r["cold"]["process_s"] for r in runs]),
        "cached_process_s": _median([r["cached"]["process_s"] for r in runs]),
        "cached_runs_s": [round(r["cached"]["process_s"], 2) for r in runs],
        "edited_process_s": _median([r["edited"]["process_s"] for r in runs]),
        "edited_runs_s": [round(r["edited"]["process_s"], 2) for r in runs],
        "edited_features_cached": all(r["edited"]["cached"] for r in runs),
        "edited_classifier_trained": all(r["edited"]["classifier"] == "trained" for r in runs),
        "encoder_patches_per_s": _median([r["encoder_patches_per_s"] for r in runs]),
        "e2e_patches_per_s": _median([r["e2e_patches_per_s"] for r in runs]),
        "e2e_over_encoder": _median([r["e2e_over_encoder"] for r in runs]),
        "rerun_classifier_cached": all(r["cached"]["classifier"] == "cached" for r in runs),
        "rerun_outputs_identical": all(not r["outputs_differ"] for r in runs),
        "max_other_load_cores": max(
            max(r[k]["other_load_cores"] for k in ("cold", "cached", "edited")) for r in runs
        ),
    }


# --------------------------------------------------------------------------- paquo write


def tile_boxes(width: int, height: int, n: int) -> list[Any]:
    """``n`` square-ish tiles (a full grid, row by row) covering a ``width`` x ``height`` image."""
    import math

    import shapely

    cols = math.ceil(math.sqrt(n * width / height))
    rows = math.ceil(n / cols)
    w, h = width / cols, height / rows
    return [
        shapely.box(c * w, r * h, (c + 1) * w, (r + 1) * h)
        for r in range(rows)
        for c in range(cols)
    ][:n]


def _user_project(project_dir: Path, meta: dict[str, Any]) -> str:
    """A user's project: the slide, a Tumor class and the coarse outline as an annotation;
    the image's entry id."""
    import shapely
    from paquo.classes import QuPathPathClass
    from paquo.projects import QuPathProject

    with QuPathProject(project_dir, mode="x") as qp:
        tumor = QuPathPathClass("Tumor", color="#c80000")
        qp.path_classes = [tumor]
        entry = qp.add_image(meta["path"])
        entry.hierarchy.add_annotation(roi=shapely.from_wkt(meta["coarse_wkt"]), path_class=tumor)
        return str(entry.entry_id)


def worker_paquo_write(slide_meta: Path, project_dir: Path, n_tiles: int) -> dict[str, Any]:
    """One run in this (fresh) process: a fresh project with the slide, then one image's
    refined objects written by the project's own writer, timed."""
    import numpy as np
    import shapely

    from engine.errors import RefineError
    from qupath_bridge.classes import probability_key
    from qupath_bridge.project import (
        open_project,
        qupath_version,
        save_project,
        summary_object_count,
        timestamp,
        write_refined,
    )

    meta = json.loads(slide_meta.read_text())
    t0 = time.perf_counter()
    try:
        version = qupath_version()  # starts the JVM, with the options a run gives it
    except RefineError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    jvm_s = time.perf_counter() - t0
    entry_id = _user_project(project_dir, meta)
    boxes = tile_boxes(meta["width"], meta["height"], n_tiles)
    proba = np.random.default_rng(0).random(len(boxes)).tolist()
    region = shapely.from_wkt(meta["truth_wkt"])
    regions = list(getattr(region, "geoms", [region]))
    busy0, cpu0 = _busy(), os.times()
    t1 = time.perf_counter()
    with open_project(project_dir, write=True) as qp:
        t2 = time.perf_counter()
        rep = write_refined(
            qp, project_dir, entry_id, regions, list(zip(boxes, proba, strict=True)),
            "Tumor", (255, 136, 0), timestamp(),
        )  # fmt: skip
        t3 = time.perf_counter()
        save_project(qp)
        t4 = time.perf_counter()
    return {
        "qupath": version,
        "tiles": len(boxes),
        "regions": len(regions),
        "measurement": probability_key("Tumor"),
        "added": rep.added,
        "objects_saved": summary_object_count(project_dir, entry_id),
        "jvm_start_s": jvm_s,
        "open_project_s": t2 - t1,
        "write_image_s": t3 - t2,
        "save_project_s": t4 - t3,
        "other_load_cores": _other_load(t4 - t1, busy0, cpu0),
    }


def paquo_write_mode(args: argparse.Namespace) -> dict[str, Any]:
    from engine.synthetic import make_demo_slide

    meta_path = args.dir / "demo.json"
    if not meta_path.exists():
        demo = make_demo_slide(args.dir / "demo.tif", seed=1)
        meta = {
            "path": str(demo.path),
            "width": demo.size[0],
            "height": demo.size[1],
            "coarse_wkt": demo.coarse.wkt,
            "truth_wkt": demo.truth.wkt,
        }
        meta_path.write_text(json.dumps(meta))
    runs: list[dict[str, Any]] = []
    for r in range(args.runs):
        _wait_quiet(args.wait_quiet)
        project = args.dir / "project"
        shutil.rmtree(project, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "benchmarks.bench_scale", "--worker", PAQUO_WRITE,
            "--manifest", str(meta_path), "--out", str(project), "--tiles", str(args.tiles),
        ]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode == 2 and "paquo found no QuPath" in p.stderr:
            raise SystemExit(p.stderr.strip().splitlines()[-1])
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            raise SystemExit(f"the paquo write run failed ({p.returncode})")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["run"] = r
        runs.append(res)
        print(
            f"run {r + 1}: {res['tiles']} tiles written in {res['write_image_s']:.1f} s per "
            f"image (project save {res['save_project_s']:.2f} s, JVM start "
            f"{res['jvm_start_s']:.1f} s), {res['objects_saved']} objects saved; other load "
            f"{res['other_load_cores']:.2f} cores",
            flush=True,
        )
    summary = {
        "tiles": runs[0]["tiles"],
        "write_image_s": _median([r["write_image_s"] for r in runs]),
        "write_image_runs_s": [round(r["write_image_s"], 2) for r in runs],
        "save_project_s": _median([r["save_project_s"] for r in runs]),
        "jvm_start_s": _median([r["jvm_start_s"] for r in runs]),
        # QuPath's count: ours, the coarse annotation and the hierarchy's root object
        "all_objects_saved": all(r["objects_saved"] == r["tiles"] + r["regions"] + 2 for r in runs),
        "max_other_load_cores": max(r["other_load_cores"] for r in runs),
    }
    return {"runs": runs, "summary": summary}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--dir", type=Path, default=None, help="slides, caches and outputs")
    ap.add_argument("--json", type=Path, default=None, help="results (default: DIR/...json)")
    ap.add_argument("--quick", action="store_true", help="small: proves the bench runs")
    ap.add_argument("--cached-rerun", action="store_true", help="the cached re-run mode")
    ap.add_argument(
        "--paquo-write", action="store_true", help="paquo write time per image (needs QuPath)"
    )
    ap.add_argument("--tiles", type=int, default=20000, help="--paquo-write tiles per image")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three modes")
    ap.add_argument("--slides", type=int, default=0, help="slides (default 8; quick 2)")
    ap.add_argument("--patch-um", type=float, default=80.0, help="the region benchmark's")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--runs", type=int, default=5, help="--cached-rerun/--paquo-write runs")
    ap.add_argument("--cols", type=int, default=136, help="--cached-rerun slide, 256 px tiles")
    ap.add_argument("--rows", type=int, default=124)
    ap.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg")
    ap.add_argument("--encoder-patches", type=int, default=1024)
    add_wait_quiet(ap)
    ap.add_argument("--worker", choices=(*MODES, PAQUO_WRITE), help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == PAQUO_WRITE:
        print(json.dumps(worker_paquo_write(args.manifest, args.out, args.tiles)))
        return
    if args.worker:
        manifest = json.loads(args.manifest.read_text())
        print(json.dumps(worker_slides(manifest, args.worker, args.out, args.cache)))
        return
    if args.dir is None:
        name = "qupath-refine-bench" if args.cached_rerun else "qupath-refine-scale"
        name = "qupath-refine-paquo" if args.paquo_write else name
        args.dir = Path("/tmp") / (name + ("-quick" if args.quick else ""))
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.paquo_write:
        result = paquo_write_mode(args)
    elif args.cached_rerun:
        result = cached_rerun_mode(args)
    else:
        result = slides_mode(args)
    result["command"] = "python -m benchmarks.bench_scale " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    from benchmarks.bench_engine import _git_state, _machine

    result["machine"] = _machine()
    result["code"] = _git_state()
    default = "bench-rerun.json" if args.cached_rerun else "bench-scale.json"
    path = args.json or args.dir / ("bench-paquo-write.json" if args.paquo_write else default)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["summary"], indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
