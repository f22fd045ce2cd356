"""Shared fixtures: real data by path, a synthetic slide, a feature cache per session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CMU_SVS = SHARED_DATA / "slides" / "cmu_small_region.svs"
GLAS = SHARED_DATA / "glas-train"


def need(path: Path) -> Path:
    """Skip (saying how to enable the test) when shared test data is absent."""
    if not path.exists():
        pytest.skip(f"{path} not found: check out the project beside ../shared/data to run this")
    return path


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    return need(CMU_SVS)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature/ONNX cache for the session, so the encoder is exported once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def demo_slide(tmp_path_factory):
    """A small synthetic slide with known truth and a coarse outline (see engine.synthetic)."""
    from engine.synthetic import make_demo_slide

    return make_demo_slide(tmp_path_factory.mktemp("demo") / "demo.tif", seed=1)


def default_sigint() -> None:
    """A shell that starts the suite in the background ignores SIGINT in its children, and
    an ignored SIGINT is inherited: give the run under test Ctrl-C as a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def small_disk_at(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``folder`` (a real full disk: ENOSPC from the
    kernel); mounting needs root, elsewhere the test is skipped."""
    folder.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small disk")
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {p.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def leave_free(folder: Path, free: int) -> Path:
    """Fill the disk under ``folder`` until ``free`` bytes are left (to the page); the filler
    file, to delete when the test gives the space back."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
    return filler
