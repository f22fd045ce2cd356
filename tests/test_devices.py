"""Devices (issue 11): resolution and its errors, and CPU results unchanged by device support.

The regression half compares with the classifier as it was before device support (commit
40b2c5c, read from git) on real features of a real slide; it skips where git history is absent.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from click.testing import CliRunner

from engine.classifier import ClassifierSettings, PatchClassifier, standardise
from engine.devices import resolve_device
from engine.encoders import runtime
from engine.errors import SettingsError
from engine.patches import GridSettings
from engine.pipeline import RefineSettings, SlideInput, refine, refine_one, slide_grid
from engine.prototype_slides import local_step
from qupath_bridge.cli import main

REPO = Path(__file__).resolve().parents[1]
BASE = "40b2c5c"  # the last commit before device support
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's 2 cores are shared
    yield
    torch.set_num_threads(n)


def test_resolve_device_spellings():
    assert resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "cpu:0", "mps:1", "cuda:x", ""):
        with pytest.raises(SettingsError, match="auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)


@no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_one_clear_error():
    if not torch.backends.mps.is_available():
        assert resolve_device("auto") == "cpu"
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(SettingsError, match="CUDA build of torch.*onnxruntime-gpu"):
            resolve_device(spec)


@no_cuda
def test_slide_tasks_resolve_the_device_where_they_run(demo_slide, tmp_path):
    """A Dask worker runs refine_one / local_step with the driver's settings: each resolves
    the device itself (before stop 17 both built a CPU encoder whatever the setting said, so
    a cluster of GPU workers never used a GPU); asking for CUDA where there is none fails
    before the slide is read."""
    item = SlideInput(demo_slide.path, demo_slide.coarse)
    mil = RefineSettings(cache_dir=tmp_path, device="cuda")
    with pytest.raises(SettingsError, match="device cuda"):
        refine_one(item, mil)
    proto = replace(RefineSettings.for_method("prototype", cache_dir=tmp_path), device="cuda")
    proto = replace(proto, grid=replace(proto.grid, patch_um=64.0))
    with pytest.raises(SettingsError, match="device cuda"):
        local_step(item, proto)


def test_cli_keeps_auto_for_each_process_to_resolve():
    """``--device auto`` reaches the engine as ``auto`` (a driver without a GPU must not
    decide for workers that have one); named devices are checked on the driver."""
    from qupath_bridge.cli import RefineOptions

    base = RefineOptions(
        class_name="Tumor", negative_class="Stroma", encoder="efficientnet-lite0", mpp=None,
        target_mpp=0.5, patch_um="auto", stride_um=None, max_patches=200_000, min_tissue=0.5,
        context=1.0, method="mil", outline="auto", tau=None, seed=0, cache_dir=None,
        device="auto", quiet=True, progress_lines=False,
    )  # fmt: skip
    assert base.settings().device == "auto"
    assert replace(base, device="cpu").settings().device == "cpu"


@no_cuda
def test_cli_device_cuda_without_cuda_is_one_error_line(tmp_path):
    r = CliRunner().invoke(
        main,
        ["slide", "s.svs", "--coarse", "c.geojson", "--out", str(tmp_path), "--device", "cuda"],
    )
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device cuda:"), r.output
    assert "onnxruntime-gpu" in lines[0]


def test_onnx_without_cuda_provider_runs_on_cpu_with_one_info_line(tmp_path, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    net = torch.nn.Conv2d(3, 4, 3)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), dynamo=False)
    runtime._cpu_fallback_note.cache_clear()
    with caplog.at_level(logging.INFO, logger="qupath_refine"):
        sessions = [runtime.onnx_session(path, "cuda:0") for _ in range(2)]
    assert all(s.get_providers() == ["CPUExecutionProvider"] for s in sessions)
    notes = [r for r in caplog.records if "onnxruntime-gpu" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    caplog.clear()
    runtime.onnx_session(path, "cpu")
    assert not caplog.records  # the CPU asked for: nothing to say


def test_torch_encoder_on_the_cpu_is_plain_fp32():
    """On the CPU a torch encoder runs the model as before: no autocast, the same key."""
    from engine.encoders.base import to_nchw
    from engine.encoders.plugins import TorchEncoder

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()

    class Tiny(TorchEncoder):
        def __init__(self) -> None:
            self._forward = net
            self.key = "tiny"
            self._place(net, "cpu", vit=True)

    enc = Tiny()
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with torch.inference_mode():
        maps = net(torch.from_numpy(to_nchw(images, enc._mean, enc._std))).numpy()
    np.testing.assert_array_equal(enc.embed(images), maps.mean(axis=(2, 3)))
    assert enc.key == "tiny" and enc.batch_size == 16


# --------------------------------------------------------------------------- CPU unchanged


def _base_classifier():
    """engine/classifier.py as of BASE, as a module; skips without git history."""
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BASE}:engine/classifier.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {BASE} is not available")
    name = f"classifier_{BASE}"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = mod  # dataclasses look their module up
    try:
        exec(compile(src, f"{BASE}:engine/classifier.py", "exec"), mod.__dict__)
    finally:
        del sys.modules[name]
    return mod


@pytest.fixture(scope="module")
def cmu_run(tmp_path_factory):
    """The real CMU slide (48 µm patches: 266, 95 inside a box over its left part), refined
    with the default device (auto: the CPU here) and then with device cpu from the cache."""
    svs = REPO.parent / "shared" / "data" / "slides" / "cmu_small_region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} not found")
    item = SlideInput(svs, shapely.box(0, 0, 1100, 2967))
    s = RefineSettings(grid=GridSettings(patch_um=48.0), cache_dir=tmp_path_factory.mktemp("cache"))
    default = refine([item], s, progress=False).slides[0]
    cpu = refine([item], replace(s, device="cpu"), progress=False).slides[0]
    return item, s, default, cpu


@no_cuda
def test_default_device_and_cpu_give_identical_results(cmu_run):
    _, _, default, cpu = cmu_run
    assert default.cached is False and cpu.cached is True  # the second read the first's cache
    np.testing.assert_array_equal(default.proba, cpu.proba)
    np.testing.assert_array_equal(default.refined, cpu.refined)
    assert shapely.to_wkb(default.regions) == shapely.to_wkb(cpu.regions)


def test_mil_scores_are_those_of_the_code_before_device_support(cmu_run):
    """Same seed, same features: the MIL scores refine gave are bit for bit those of the
    classifier at BASE (the regions follow from them by unchanged code)."""
    old = _base_classifier()
    item, s, _, cpu = cmu_run
    d = slide_grid(item, s, _lite0(s), dict.fromkeys(("read",), 0.0))
    assert d.features is not None
    labels = cpu.pseudo  # no hard negatives: the coarse labels
    before = old.mil_proba(standardise(d.features), labels, s.classifier, seed=0)
    np.testing.assert_array_equal(before, cpu.proba)


def test_patch_mlp_is_that_of_the_code_before_device_support():
    old = _base_classifier()
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    x = (rng.normal(0, 1, (400, 16)) + y[:, None]).astype(np.float32)
    s = ClassifierSettings(model="mlp", iterations=40, refinetune_epochs=1, device="cpu")
    new = PatchClassifier(s).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(old.PatchClassifier(s).fit(x, y).predict_proba(x), new)


def _lite0(s: RefineSettings):
    from engine.encoders import build_encoder

    return build_encoder(s.features.encoder, s.cache_dir)
