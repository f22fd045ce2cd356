"""Encoders' cost per patch as a ratio to Lite0, robust to a busy machine (issue 9 item 6).

    python -m benchmarks.encoder_cpu --slide SLIDE [--rounds 5] [--patches 96] [--json OUT]

Wall-clock patches/s are meaningless on a machine other processes load; the CPU seconds a
process spends embedding a patch are much less affected. Each round runs every encoder in a
fresh process, in a rotated order (interleaved A/B), on the same real patches of ``SLIDE``
(128 µm, read at each encoder's own side), after one warm-up batch, in the encoder's own batch
size; it records the embedding's CPU seconds (all of the process's threads) and wall seconds.
The summary gives, per encoder, the median CPU ms per patch and its ratio to the first
encoder's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(slide_path: Path, encoder: str, cache: Path, n: int) -> dict:
    from benchmarks.bench_engine import sample_patches
    from engine.encoders import build_encoder

    enc = build_encoder(encoder, cache)
    images, _, _ = sample_patches(slide_path, enc, n)
    bs = enc.batch_size
    enc.embed(images[:bs])  # onnxruntime allocates its buffers on the first run
    cpu0, t0 = os.times(), time.perf_counter()
    for i0 in range(0, len(images), bs):
        enc.embed(images[i0 : i0 + bs])
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "encoder": encoder,
        "input_px": enc.input_px,
        "patches": len(images),
        "cpu_ms_per_patch": 1000 * cpu / len(images),
        "wall_ms_per_patch": 1000 * wall / len(images),
        "loadavg_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.encoder_cpu", description=__doc__)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument(
        "--encoders",
        nargs="+",
        default=[
            "efficientnet-lite0",
            "efficientnet-lite1",
            "efficientnet-lite2",
            "efficientnet-lite0-blocks",
        ],
        help="the first is the reference",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--patches", type=int, default=96)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qupath-refine-encoder-cpu"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.slide, args.worker, args.cache, args.patches)))
        return 0

    runs: list[dict] = []
    encs = list(args.encoders)
    for r in range(args.rounds):
        order = encs[r % len(encs) :] + encs[: r % len(encs)]  # rotate: no encoder always first
        for e in order:
            cmd = [sys.executable, "-m", "benchmarks.encoder_cpu", "--worker", e]
            cmd += ["--slide", str(args.slide), "--cache", str(args.cache)]
            cmd += ["--patches", str(args.patches)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            run = {"round": r, **json.loads(out.strip().splitlines()[-1])}
            runs.append(run)
            print(
                f"round {r} {e}: {run['cpu_ms_per_patch']:.1f} CPU ms/patch, "
                f"{run['wall_ms_per_patch']:.1f} wall ms/patch (load {run['loadavg_1min']:.1f})",
                flush=True,
            )
    med = {
        e: statistics.median(x["cpu_ms_per_patch"] for x in runs if x["encoder"] == e) for e in encs
    }
    summary = {e: {"cpu_ms_per_patch": med[e], "ratio_to_ref": med[e] / med[encs[0]]} for e in encs}
    print("\n| encoder | median CPU ms / patch | cost ÷ " + encs[0] + " |\n|---|---|---|")
    for e, s in summary.items():
        print(f"| {e} | {s['cpu_ms_per_patch']:.1f} | {s['ratio_to_ref']:.2f} |")
    if args.json:
        command = "python -m benchmarks.encoder_cpu " + " ".join(argv or sys.argv[1:])
        args.json.write_text(
            json.dumps({"command": command, "runs": runs, "summary": summary}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
