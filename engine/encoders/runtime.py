"""The one place onnxruntime sessions are built, for the builtin and the ``onnx:`` encoders."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.devices import cuda_index, is_cuda

if TYPE_CHECKING:
    # onnxruntime ships no type information: its session is Any to mypy, named for readers
    from onnxruntime import InferenceSession

log = logging.getLogger("qupath_refine")


def onnx_session(path: Path | str, device: str = "cpu") -> InferenceSession:
    """An inference session on ``path``: CUDA when ``device`` is a CUDA device and this
    onnxruntime offers it (the ``onnxruntime-gpu`` package), else the CPU with
    ``QUPATH_REFINE_THREADS`` threads (default: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("QUPATH_REFINE_THREADS", os.cpu_count() or 1))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle intra-op threads sleep instead of spin-waiting between runs: the spinning took
    # CPU from the patch-reading thread (BENCHMARKS.md, issue 11).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = ["CPUExecutionProvider"]
    if device != "cpu":
        if is_cuda(device) and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": cuda_index(device)}))
        else:
            _cpu_fallback_note(device)
    return ort.InferenceSession(str(path), opts, providers=providers)


@functools.cache
def _cpu_fallback_note(device: str) -> None:
    """Said once per process, however many encoders a run builds."""
    if is_cuda(device):
        log.info(
            "onnxruntime offers no CUDA provider: the ONNX encoder runs on the CPU "
            "(install onnxruntime-gpu instead of onnxruntime to run it on the GPU)"
        )
    else:
        log.info(f"ONNX encoders run on the CPU (device {device} is used by torch only)")
