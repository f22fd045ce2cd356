"""Where torch and onnxruntime run: ``device`` settings resolved to one concrete device.

``auto`` is CUDA when torch sees a GPU, else Apple's MPS when available, else the CPU. The
result is a torch device string (``"cpu"``, ``"cuda:0"``, ``"mps"``) that the encoders and the
classifiers take as it is.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from types import ModuleType

from engine.errors import SettingsError

log = logging.getLogger("qupath_refine")

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

CUDA_INSTALL = (
    "install a CUDA build of torch (pytorch.org lists them; on Linux PyPI's default torch "
    "wheel is one) and, for ONNX encoders, onnxruntime-gpu in place of onnxruntime; "
    "or use device cpu"
)


def resolve_device(spec: str = "auto") -> str:
    """The device ``spec`` names, checked against what this torch can use; a
    :class:`SettingsError` naming what to install when it cannot."""
    spec = str(spec).strip().lower()
    if spec == "cpu":
        return "cpu"  # no torch import: ``--help`` and CPU-only checks stay fast
    m = re.fullmatch(r"(auto|cuda|mps)(?::(\d+))?", spec)
    if m is None or (m[2] is not None and m[1] != "cuda"):
        raise SettingsError(f"device is one of {', '.join(DEVICES)}, not {spec!r}")
    if m[1] == "auto" and not _gpu_driver():
        return "cpu"  # no torch import (1-1.4 s): a re-run from the caches may need none
    import torch

    if m[1] == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        return "mps" if _mps_available(torch) else "cpu"
    if m[1] == "mps":
        if not _mps_available(torch):
            raise SettingsError(
                "device mps needs macOS on Apple silicon and a torch build with MPS; use device cpu"
            )
        return "mps"
    if not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else f"torch {torch.__version__} sees no CUDA GPU (driver or CUDA_VISIBLE_DEVICES?)"
        )
        raise SettingsError(f"device {spec}: {why}; {CUDA_INSTALL}")
    index = int(m[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise SettingsError(f"device {spec}: torch sees {count} CUDA GPU(s), cuda:0 to {count - 1}")
    return f"cuda:{index}"


#: what a loaded GPU driver shows on Linux: NVIDIA's, AMD's ROCm (kfd) and WSL2's (dxg)
GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def _gpu_driver() -> bool:
    """Whether torch could see a GPU here. False only on Linux with no GPU driver loaded,
    where CUDA and ROCm cannot run; elsewhere (macOS's MPS, any doubt) torch is asked."""
    if not sys.platform.startswith("linux"):
        return True
    return any(Path(p).exists() for p in GPU_DRIVER_FILES)


def _mps_available(torch: ModuleType) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def cuda_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)
