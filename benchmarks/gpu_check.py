"""GPU check: the demo slide refined on the CPU and on CUDA, side by side.

    python -m benchmarks.gpu_check [--out DIR] [--vit]

Each device gets a fresh feature cache, so each embeds the slide itself. Prints, per device,
the refined pixel Dice against the demo's truth, the encoder's patches/s (embedding time
only) and the whole demo's wall time, then the Dice difference. ``--vit`` also times a
ViT-S/16 from timm with random weights (speed only: fp32 on the CPU, bf16 autocast on CUDA)
and prints the largest feature difference. Without CUDA it says so and exits with 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _demo(out: Path, device: str) -> dict[str, float]:
    from qupath_bridge.jobs.demo import run_demo

    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{device.replace(':', '')}-") as cache:
        t0 = time.perf_counter()
        s = run_demo(
            out / device.replace(":", ""), progress=False, cache_dir=Path(cache), device=device
        )
        wall = time.perf_counter() - t0
    patches = s.rows[0].patches
    return {
        "dice": s.refined.pixel["dice"],
        "patches": patches,
        "patches_per_s": patches / max(s.timings["embed"], 1e-9),
        "wall_s": wall,
    }


def _vit(devices: list[str], n: int = 256) -> None:
    try:
        import timm
        import torch
    except ImportError:
        print("--vit: timm is not installed (pip install timm); skipped")
        return
    from engine.encoders.plugins import TimmEncoder

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vit_small.pth"
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
        torch.save(model.state_dict(), weights)
        images = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        feats = {}
        for device in devices:
            enc = TimmEncoder("vit_small_patch16_224", str(weights), "timm:vit-s16", device)
            bs = enc.batch_size
            enc.embed(images[:bs])  # warm-up: CUDA context, kernels
            t0 = time.perf_counter()
            feats[device] = np.concatenate([enc.embed(images[i : i + bs]) for i in range(0, n, bs)])
            print(f"ViT-S/16 {device:7s} {n / (time.perf_counter() - t0):8.1f} patches/s")
    a, b = feats.values()
    rel = np.abs(a - b).max() / np.abs(a).max()
    print(f"ViT-S/16 largest feature difference cpu vs cuda: {rel:.2e} of the largest feature")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="keep the demo outputs here")
    ap.add_argument("--vit", action="store_true", help="also time a ViT-S/16 (needs timm)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "without a visible GPU"
        print(f"no CUDA: torch {torch.__version__} is {why}; nothing to compare. See the README")
        print("(GPU users) for what to install.")
        return 0
    import onnxruntime as ort

    print(f"GPU: {torch.cuda.get_device_name(0)}; onnxruntime {ort.__version__} providers:")
    print(f"  {', '.join(ort.get_available_providers())}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = args.out or Path(tmp)
        res = {d: _demo(out, d) for d in ("cpu", "cuda:0")}
    for d, r in res.items():
        print(
            f"{d:7s} Dice {r['dice']:.4f}  embed {r['patches_per_s']:7.1f} patches/s "
            f"({r['patches']} patches)  demo {r['wall_s']:.1f} s"
        )
    diff = res["cuda:0"]["dice"] - res["cpu"]["dice"]
    print(f"Dice cuda - cpu: {diff:+.4f}")
    if args.vit:
        _vit(["cpu", "cuda:0"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
