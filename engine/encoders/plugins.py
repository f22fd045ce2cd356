"""Encoders for models a user holds on their own machine, addressed by local path only.

Nothing here downloads anything: every loader is given a file or folder, and a missing
package or file is an :class:`~engine.errors.EncoderError` saying what to install or fix
(the path is checked first: it is the more specific mistake).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.devices import is_cuda
from engine.encoders.base import Encoder, to_nchw
from engine.encoders.runtime import onnx_session
from engine.errors import EncoderError
from engine.slide import fingerprint_file

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711]) * 255


def _require_path(path: str, what: str, spec: str, folder: bool = False) -> Path:
    p = Path(path).expanduser()
    ok = p.is_dir() if folder else p.is_file()
    if not path or not ok:
        kind = "folder" if folder else "file"
        raise EncoderError(f"{spec}: {what} {kind} not found: {path or '(empty)'}")
    return p


def _require_module(name: str, pip_name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise EncoderError(
            f"{spec} needs the Python package {pip_name!r}: `pip install {pip_name}`."
        ) from None


def _pool(out: np.ndarray) -> np.ndarray:
    """Model outputs to one vector per image: CNN maps are averaged, ViT tokens give CLS."""
    if out.ndim == 4:
        return out.mean(axis=(2, 3))
    if out.ndim == 3:
        return out[:, 0]
    return out.reshape(len(out), -1)


class OnnxEncoder(Encoder):
    """``onnx:PATH``: an ONNX image model taking NCHW float32 with ImageNet normalisation."""

    def __init__(self, path: str, spec: str, device: str = "cpu") -> None:
        p = _require_path(path, "ONNX model", spec)
        _require_module("onnxruntime", "onnxruntime", spec)
        try:
            self._sess = onnx_session(p, device)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise EncoderError(f"{spec}: not a loadable ONNX model ({e})") from None
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        side = inp.shape[-1] if len(inp.shape) == 4 else None
        self.input_px = side if isinstance(side, int) and side > 0 else 224
        self.key = f"onnx-{fingerprint_file(p)}"

    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = to_nchw(images, IMAGENET_MEAN, IMAGENET_STD)
        out = self._sess.run(None, {self._input: x})[0]
        return _pool(np.asarray(out)).astype(np.float32)


class TorchEncoder(Encoder):
    """Runs a torch module in inference mode; subclasses set ``_forward`` and normalisation,
    then call :meth:`_place` with the model."""

    _forward: Callable
    _mean = IMAGENET_MEAN
    _std = IMAGENET_STD
    device = "cpu"
    _autocast = False

    def _place(self, model: torch.nn.Module, device: str, vit: bool) -> None:
        """Move ``model`` to ``device``. ViTs on CUDA run under bf16 autocast (about twice
        as fast on tensor cores); their features then differ from fp32 ones by more than the
        cache's float16 rounding, so the cache key says so."""
        self.device = device
        model.to(device)
        self._autocast = vit and is_cuda(device)
        if self._autocast:
            self.key += "-bf16"

    def embed(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        import torch

        x = torch.from_numpy(to_nchw(images, self._mean, self._std)).to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast),
        ):
            out = self._forward(x)
        return _pool(out.float().cpu().numpy()).astype(np.float32)

    @property
    def batch_size(self) -> int:
        return 16 if self.device == "cpu" else 64


def _load_state_dict(path: Path, spec: str) -> dict:
    """Tensors from a weights file. ``weights_only=True``: a pickle that would build other
    objects (and so could run code) is refused, whatever the torch version."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderError(f"{spec}: cannot read weights {path} ({e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"{spec}: {path} holds no state dict (a {type(state).__name__})")
    return state


class TimmEncoder(TorchEncoder):
    """``timm:ARCH:WEIGHTS``: a timm architecture with a local weights file (e.g. UNI)."""

    def __init__(self, arch: str, weights: str, spec: str, device: str = "cpu") -> None:
        p = _require_path(weights, "weights", spec)
        timm = _require_module("timm", "timm", spec)
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        except Exception as e:
            raise EncoderError(f"{spec}: timm cannot build architecture {arch!r} ({e})") from None
        missing, _ = model.load_state_dict(_load_state_dict(p, spec), strict=False)
        if len(missing) > 0.5 * len(model.state_dict()):
            raise EncoderError(f"{spec}: weights do not match {arch!r} ({len(missing)} missing)")
        model.eval()
        cfg = timm.data.resolve_data_config({}, model=model)
        self._mean = np.array(cfg["mean"]) * 255
        self._std = np.array(cfg["std"]) * 255
        self.input_px = int(cfg["input_size"][-1])
        self._forward = model
        self.key = f"timm-{arch}-{fingerprint_file(p)}"
        # every timm ViT (vit, deit, eva, beit, swin) embeds patches in ``patch_embed``
        self._place(model, device, vit=hasattr(model, "patch_embed"))


class ConchEncoder(TorchEncoder):
    """``conch:CHECKPOINT``: CONCH (the paper's encoder) through its own package."""

    _mean = CLIP_MEAN
    _std = CLIP_STD
    input_px = 448

    def __init__(self, checkpoint: str, spec: str, device: str = "cpu") -> None:
        p = _require_path(checkpoint, "checkpoint", spec)
        factory = _require_module(
            "conch.open_clip_custom.factory",
            "conch (git+https://github.com/mahmoodlab/CONCH)",
            spec,
        )
        # CONCH's own loader calls torch.load without weights_only, which on torch < 2.6
        # unpickles (runs) whatever the checkpoint holds: read the tensors ourselves, safely,
        # and build the model from CONCH's config and classes.
        state = _load_state_dict(p, spec)
        try:
            cfg = json.loads((factory.CFG_DIR / "conch_ViT-B-16.json").read_text())
            cfg.pop("custom_text", None)
            model = factory.CoCa(**cfg)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            factory.resize_pos_embed(state, model)
            missing, _ = model.load_state_dict(state, strict=False)
        except Exception as e:
            raise EncoderError(f"{spec}: cannot load CONCH checkpoint {p} ({e})") from None
        if len(missing) > 0.5 * len(model.state_dict()):
            raise EncoderError(f"{spec}: {p} is not a CONCH checkpoint ({len(missing)} missing)")
        model.eval()
        self._forward = lambda x: model.encode_image(x, proj_contrast=False, normalize=False)
        self.key = f"conch-{fingerprint_file(p)}"
        self._place(model, device, vit=True)  # CONCH's image tower is a ViT-B/16


class HuggingFaceEncoder(TorchEncoder):
    """``hf:DIR``: a transformers vision model saved in a local folder (offline only)."""

    def __init__(self, folder: str, spec: str, device: str = "cpu") -> None:
        p = _require_path(folder, "model", spec, folder=True)
        transformers = _require_module("transformers", "transformers", spec)
        try:
            model = transformers.AutoModel.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            raise EncoderError(f"{spec}: cannot load a transformers model from {p} ({e})") from None
        model.eval()
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(str(p), local_files_only=True)
            self._mean = np.array(proc.image_mean) * 255
            self._std = np.array(proc.image_std) * 255
            size = proc.size
            self.input_px = int(size.get("shortest_edge") or size.get("height") or 224)
        except Exception:  # no processor saved: ImageNet conventions
            self.input_px = int(getattr(model.config, "image_size", 224))

        def forward(x: torch.Tensor) -> torch.Tensor:
            out = model(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            return pooled if pooled is not None else out.last_hidden_state

        self._forward = forward
        files = sorted(f for f in p.iterdir() if f.suffix in {".safetensors", ".bin"})
        if not files:
            raise EncoderError(f"{spec}: no weights (.safetensors or .bin) in {p}")
        self.key = "hf-" + "-".join(fingerprint_file(f)[:16] for f in files)
        # ViT, DeiT, BEiT, DINOv2, Swin: patch embeddings under ``embeddings``
        vit = hasattr(getattr(model, "embeddings", None), "patch_embeddings")
        self._place(model, device, vit=vit)
