"""Slides on a real Dask LocalCluster (2 processes x 1 thread): the same results as one
process, real worker deaths, and the one-line errors a user gets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely

pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402

from engine.classifier import ClassifierSettings, MilSettings  # noqa: E402
from engine.cluster import (  # noqa: E402
    DaskSettings,
    check_shared_cache,
    dask_client,
    prototypes_on_cluster,
    refine_on_cluster,
)
from engine.encoders import DEFAULT_ENCODER, build_encoder  # noqa: E402
from engine.errors import ClusterError  # noqa: E402
from engine.patches import GridSettings  # noqa: E402
from engine.pipeline import RefineSettings, refine, refine_one, slide_grid_settings  # noqa: E402
from engine.prototype_slides import SlideLocal, local_step, refine_per_slide  # noqa: E402
from engine.tiff import write_pyramidal_tiff  # noqa: E402
from qupath_bridge.classes import ClassNames  # noqa: E402
from qupath_bridge.cli import main  # noqa: E402
from qupath_bridge.dask_runner import refine_slides_dask  # noqa: E402
from qupath_bridge.geojson_io import annotation_features, write_features  # noqa: E402
from qupath_bridge.slide_io import load_inputs, render_outputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: 96 µm patches: ~460 on the demo slide and ~150 on the CMU slide, enough for each slide's
#: own model, few enough to embed in seconds; one MIL epoch (of 5): equality is what is
#: tested here, not quality
SETTINGS = RefineSettings(
    grid=GridSettings(patch_um=96.0), classifier=ClassifierSettings(mil=MilSettings(epochs=1))
)
#: --method prototype on the same grid (so on the same cached features), the command's defaults
PROTOTYPE = RefineSettings.for_method("prototype", grid=GridSettings(patch_um=96.0))


@pytest.fixture(scope="module")
def inputs(demo_slide, cmu_svs, tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Two real slides: the synthetic demo slide and a real Aperio SVS with a coarse ellipse
    over part of its tissue."""
    d = tmp_path_factory.mktemp("cluster-inputs")
    demo = write_features(d / "demo.geojson", annotation_features(demo_slide.coarse, "Tumor"))
    ellipse = shapely.affinity.scale(shapely.Point(1100, 1500).buffer(1), 600, 800)
    cmu = write_features(d / "cmu.geojson", annotation_features(ellipse, "Tumor"))
    return [demo_slide.path, cmu_svs], [demo, cmu]


@pytest.fixture(scope="module")
def items(inputs):
    return load_inputs(*inputs, ClassNames(), None)


@pytest.fixture(scope="module")
def encoder_cache(cache_dir) -> Path:
    build_encoder(DEFAULT_ENCODER, cache_dir)  # exported once for the session
    return cache_dir


def fresh_cache(path: Path, encoder_cache: Path) -> Path:
    """An empty feature cache holding the session's encoder export (no re-export)."""
    shutil.copytree(encoder_cache / "encoders", path / "encoders")
    return path


@pytest.fixture(scope="module")
def single(items, encoder_cache, tmp_path_factory):
    """The single-process run, embedded from scratch."""
    cache = fresh_cache(tmp_path_factory.mktemp("single") / "cache", encoder_cache)
    settings = replace(SETTINGS, cache_dir=cache)
    return refine(items, settings, progress=False), settings


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskSettings(workers=2)) as c:
        yield c


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.grid.xy, b.grid.xy)
    np.testing.assert_array_equal(a.proba, b.proba)
    np.testing.assert_array_equal(a.refined, b.refined)
    assert shapely.to_wkb(a.regions) == shapely.to_wkb(b.regions)
    assert a.outline == b.outline


def test_cluster_gives_the_single_process_results(client, items, single, encoder_cache, tmp_path):
    expected, _ = single
    cache = fresh_cache(tmp_path / "cache", encoder_cache)  # the workers embed too
    check_shared_cache(client, cache)
    outcomes = list(refine_on_cluster(client, items, replace(SETTINGS, cache_dir=cache)))
    assert sorted(o.index for o in outcomes) == [0, 1]
    for o in outcomes:
        assert o.error is None and o.result is not None and not o.result.cached
        assert o.timings["embed"] > 0
        assert_same(o.result, expected.slides[o.index])


def _dies(slide: int, markers: Path | None, step=refine_one):
    """A slide task (``step``: :func:`refine_one`, or a phase of ``--method prototype``)
    whose worker process kills itself (SIGKILL) on slide ``slide``: once, after the first
    batch of patches is embedded, if ``markers`` is a folder to remember it in; else on every
    try, at the start."""

    def task(item, settings, index):
        if index == slide and markers is None:
            os.kill(os.getpid(), signal.SIGKILL)
        marker = markers / f"died-{index}" if index == slide and markers else None

        class KillOnce:
            def __init__(self, desc: str, total: int) -> None:
                pass

            def __enter__(self):
                return self

            def update(self, n: int) -> None:
                if marker is not None and not marker.exists():
                    marker.touch()
                    os.kill(os.getpid(), signal.SIGKILL)

            def __exit__(self, *exc) -> None:
                pass

        return step(item, settings, index, progress=KillOnce)

    return task


def test_a_dead_worker_is_retried_once_then_its_slide_fails(
    client, items, single, encoder_cache, tmp_path
):
    expected, _ = single
    client.wait_for_workers(2, timeout=180)  # back from earlier tests' deaths (slow under load)
    cache = fresh_cache(tmp_path / "cache", encoder_cache)
    settings = replace(SETTINGS, cache_dir=cache)
    # Slide 1's worker dies once mid-embedding: the retry gives the same result.
    got = {o.index: o for o in refine_on_cluster(client, items, settings, _dies(1, tmp_path))}
    assert (tmp_path / "died-1").exists()
    for k in (0, 1):
        assert got[k].error is None
        assert_same(got[k].result, expected.slides[k])
    # Nothing half-written in the cache by the killed embedding: one entry per slide.
    assert len(list((cache / "features").glob("*.npz"))) == 2
    # Slide 1's worker dies on every try: it is tried twice, then reported; slide 0 completes.
    # (Two deaths in one run, not three: a slide queued on a worker that dies counts that
    # death too, and two would fail it.)
    client.wait_for_workers(2, timeout=180)
    got = {o.index: o for o in refine_on_cluster(client, items, settings, _dies(1, None))}
    assert got[1].result is None and "worker died" in got[1].error
    assert got[0].error is None
    assert_same(got[0].result, expected.slides[0])


def without_ids(geojson: bytes) -> dict:
    """A GeoJSON's content without its feature ids (random UUIDs, new on every run)."""
    d = json.loads(geojson)
    for f in d["features"]:
        f.pop("id", None)
    return d


def test_slide_command_on_the_cluster_writes_what_one_process_writes(
    client, inputs, items, single, tmp_path
):
    slides, coarse = inputs
    # The command's defaults (5 MIL epochs), from the features the fixture cached.
    settings = replace(single[1], classifier=ClassifierSettings())
    expected = refine(items, settings, progress=False)
    out = tmp_path / "out"
    args = ["slide", *slides, *sum((["--coarse", c] for c in coarse), [])]
    args += ["--out", out, "--patch-um", "96", "--cache-dir", settings.cache_dir, "--quiet"]
    address = client.scheduler.address
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--dask", address]])
    assert r.exit_code == 0, r.output
    files, _ = render_outputs(expected, items, out, ClassNames())
    for path, data in files.items():
        if path.suffix == ".png":
            assert path.read_bytes() == data, path.name  # byte for byte
        else:
            assert without_ids(path.read_bytes()) == without_ids(data), path.name
    summary = json.loads((out / "summary.json").read_text())
    assert [s["slide"] for s in summary["slides"]] == ["demo.tif", "cmu_small_region.svs"]
    assert summary["failed"] == [] and summary["dask"]["address"] == address


def test_a_slide_that_cannot_be_refined_is_reported_and_the_command_exits_1(
    client, single, tmp_path
):
    # A slide with no tissue under a valid outline: found on the worker, reported, exit 1.
    # (An outline with nothing outside it is no failure: its slide is kept, as in one process.)
    blank = tmp_path / "blank.tif"
    write_pyramidal_tiff(blank, np.full((1024, 1024, 3), 246, np.uint8), mpp=0.5)
    coarse = write_features(
        tmp_path / "box.geojson", annotation_features(shapely.box(0, 0, 500, 500), "Tumor")
    )
    out = tmp_path / "out"
    args = ["slide", blank, "--coarse", coarse, "--out", out, "--patch-um", "96"]
    args += ["--cache-dir", single[1].cache_dir, "-q", "--dask", client.scheduler.address]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1, r.output
    assert "warning: not refined: No tissue found on blank.tif" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 slides not refined")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slides"] == [] and "No tissue found" in summary["failed"][0]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_workers_that_cannot_see_the_cache_are_one_named_error(client, tmp_path, monkeypatch):
    # /proc/self/cwd names each process's own working folder: a real path that is another
    # folder on the workers once they work elsewhere, like a cache on a local disk.
    (tmp_path / "driver").mkdir()
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "driver")
    before = client.run(os.getcwd)
    client.run(os.chdir, str(tmp_path / "worker"))
    try:
        with pytest.raises(ClusterError, match=r"cannot use the feature cache /proc/self/cwd/c"):
            check_shared_cache(client, Path("/proc/self/cwd/cache"))
    finally:
        for worker, cwd in before.items():
            client.run(os.chdir, cwd, workers=[worker])
    assert not list((tmp_path / "driver" / "cache").iterdir())  # the probe is removed


def test_unreachable_scheduler_is_one_error_line(inputs, tmp_path):
    slides, coarse = inputs
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "qupath_bridge.cli", "slide", str(slides[0])]
    cmd += ["--coarse", str(coarse[0]), "--out", str(tmp_path / "out"), "-q"]
    r = subprocess.run(
        [*cmd, "--dask", "tcp://127.0.0.1:9"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: Cannot reach the Dask scheduler at tcp://127.0.0.1:9: "
    ), r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "2", "--dask", "tcp://127.0.0.1:9"], "not both"),
    ],
)
def test_cluster_options_that_cannot_work_fail_at_once(inputs, tmp_path, extra, message):
    slides, coarse = inputs
    args = ["slide", slides[0], "--coarse", coarse[0], "--out", tmp_path / "o", "-q", *extra]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and message in r.output, r.output


# --method prototype: phase 1 (local prototypes) on the workers, the global ones on the
# driver, phase 2 (pseudo-labels, a classifier per slide, regions) on the workers.


@pytest.fixture(scope="module")
def per_slide(items, single):
    """What the cluster computes for --method prototype, computed in this process (the
    features the ``single`` fixture cached): the result and the global prototypes."""
    settings = replace(PROTOTYPE, cache_dir=single[1].cache_dir)
    result, g = refine_per_slide(items, settings)
    return result, g, settings


def test_prototype_phase_one_gives_the_global_prototypes_of_one_process(client, items, single):
    # One process, the prototype route as it always ran (a short classifier: the prototypes
    # come before it and do not depend on it).
    short = replace(PROTOTYPE.classifier, iterations=20, refinetune_epochs=0)
    settings = replace(PROTOTYPE, cache_dir=single[1].cache_dir, classifier=short)
    pooled = refine(items, settings, progress=False).prototypes
    one = prototypes_on_cluster(client, items, settings)
    assert one.failed == [] and sorted(one.local) == [0, 1]
    np.testing.assert_array_equal(one.global_prototypes, pooled.global_prototypes_)
    for k in (0, 1):
        np.testing.assert_array_equal(one.local[k][0].prototypes, pooled.local_prototypes_[k])
        assert one.local[k][0].cached  # from the cache: phase 1 sends back no features


def test_prototype_phase_one_resolves_an_auto_grid_as_one_process(client, items, single):
    # patch_um "auto": the median of each slide's own choice, as one process takes it. The
    # phase-1 task here returns at once (a real task on the workers; nothing embedded).
    def no_embedding(item, settings, index):
        return SlideLocal(np.eye(2, 8, 2 * index, dtype=np.float32), True, 0.0), {}

    auto = replace(PROTOTYPE, grid=GridSettings(), cache_dir=single[1].cache_dir)
    one = prototypes_on_cluster(client, items, auto, no_embedding)
    sides = [slide_grid_settings(i, auto).side_um for i in items]
    assert one.settings.grid.patch_um == sorted(sides)[1]
    assert len(one.global_prototypes) == 4


def test_prototype_slide_command_on_a_local_cluster(inputs, items, per_slide, tmp_path):
    expected, _, settings = per_slide
    slides, coarse = inputs
    out = tmp_path / "out"
    args = ["slide", *slides, *sum((["--coarse", c] for c in coarse), [])]
    args += ["--out", out, "--patch-um", "96", "--cache-dir", settings.cache_dir, "--quiet"]
    args += ["--method", "prototype", "--workers", "2"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    # Both slides refined by their own classifiers: what this process computes that way.
    assert [s.outline for s in expected.slides] == ["edited", "edited"]
    files, _ = render_outputs(expected, items, out, ClassNames())
    assert len(files) == 4
    for path, data in files.items():
        if path.suffix == ".png":
            assert path.read_bytes() == data, path.name
        else:
            assert without_ids(path.read_bytes()) == without_ids(data), path.name
    summary = json.loads((out / "summary.json").read_text())
    assert [s["slide"] for s in summary["slides"]] == ["demo.tif", "cmu_small_region.svs"]
    assert summary["failed"] == []
    assert summary["dask"] == {"address": None, "workers": 2, "classifier": "per slide"}
    assert summary["settings"]["classifier"]["model"] == "mlp"


class Bars:
    """A progress factory that records what the driver's bars are told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __call__(self, desc: str, total: int) -> Bars.Bar:
        self.events.append(("open", desc, total))
        return Bars.Bar(self, desc)

    class Bar:
        def __init__(self, bars: Bars, desc: str) -> None:
            self.bars, self.desc = bars, desc

        def __enter__(self) -> Bars.Bar:
            return self

        def __exit__(self, *exc) -> None:
            self.bars.events.append(("close", self.desc))

        def update(self, n: int) -> None:
            self.bars.events.append(("update", self.desc, n))

        def set_postfix_str(self, s: str, refresh: bool = True) -> None:
            self.bars.events.append(("rate", self.desc, s))


def test_the_driver_bar_counts_slides_in_both_prototype_phases(client, inputs, per_slide, tmp_path):
    # --method prototype: phase 1 (local prototypes, from the cache here) feeds a bar of its
    # own, one step per slide, then phase 2 the slides' bar; each step with patches/s.
    _, _, settings = per_slide
    short = replace(settings.classifier, iterations=20, refinetune_epochs=0)
    bars = Bars()
    run = refine_slides_dask(
        *inputs,
        tmp_path / "out",
        replace(settings, classifier=short),
        DaskSettings(address=client.scheduler.address),
        progress=bars,
    )
    assert len(run.slides) == 2
    steps = [e for e in bars.events if e[0] != "rate"]
    assert steps == [
        ("open", "local prototypes", 2),
        ("update", "local prototypes", 1),
        ("update", "local prototypes", 1),
        ("close", "local prototypes"),
        ("open", "slides", 2),
        ("update", "slides", 1),
        ("update", "slides", 1),
        ("close", "slides"),
    ]
    rates = [e for e in bars.events if e[0] == "rate"]
    assert [desc for _, desc, _ in rates] == ["local prototypes"] * 2 + ["slides"] * 2
    for _, desc, rate in rates:
        # The slides' bar opens when phase 1 ends, not when the first slide is done: its
        # clock includes phase 2's training (a bar opened late showed millions of patches/s).
        assert 0 < int(re.fullmatch(r"(\d+) patches/s", rate)[1]) < 100_000, (desc, rate)


def test_a_worker_killed_in_prototype_phase_one_still_yields_every_slide(
    client, items, per_slide, encoder_cache, tmp_path
):
    expected, _, settings = per_slide
    client.wait_for_workers(2, timeout=180)  # back from earlier tests' deaths (slow under load)
    cache = fresh_cache(tmp_path / "cache", encoder_cache)  # phase 1 embeds on the workers
    settings = replace(settings, cache_dir=cache)
    dies = _dies(1, tmp_path, step=local_step)
    got = {o.index: o for o in refine_on_cluster(client, items, settings, local_task=dies)}
    assert (tmp_path / "died-1").exists()
    for k in (0, 1):
        assert got[k].error is None and not got[k].result.cached
        assert got[k].timings["embed"] > 0 and got[k].timings["train"] > 0
        assert_same(got[k].result, expected.slides[k])
    assert len(list((cache / "features").glob("*.npz"))) == 2  # nothing half-written
