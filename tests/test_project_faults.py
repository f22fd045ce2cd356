"""Faults and bad input around QuPath projects, without QuPath: damaged data files, the project
lock (two real processes), manifest ids, signals reaching Python, kills at each phase of a
``--from-export --geojson-only`` run, and deleted refined regions being remembered.

What needs QuPath (paquo writing data files while killed) is in test_project_paquo.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner

from qupath_bridge.classes import ClassNames, class_matches, probability_key, refined_class
from qupath_bridge.cli import main
from qupath_bridge.errors import ProjectError
from qupath_bridge.export import read_export
from qupath_bridge.geojson_io import (
    QuPathObject,
    annotation_features,
    classification,
    feature,
    read_objects,
    write_features,
)
from qupath_bridge.memory import (
    Memory,
    annotation_keys,
    read_memory,
    remembered_negative,
    vanished_regions,
    write_memory,
)
from qupath_bridge.project import (
    QPDATA_END,
    backup_image_data,
    jvm_options,
    project_lock,
    qpdata_complete,
    repair_image_data,
    restore_image_data,
)
from tests.conftest import REPO, default_sigint, leave_free, small_disk_at
from tests.test_project import demo_image, export_folder, qpproj

REFINED = "Tumor: refined"
# The head of a real data.qpdata: Java stream magic, then writeUTF("Data file version 3") in a
# block-data record; QuPath then writes its objects and ends with writeObject("EOF").
QPDATA_HEAD = b"\xac\xed\x00\x05w\x15\x00\x13Data file version 3"


def qpdata(payload: bytes) -> bytes:
    return QPDATA_HEAD + payload + QPDATA_END


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("QUPATH_REFINE_DEBUG", None)
    e.update(extra)
    return e


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- naming rules ------------------------------------------------------------------------


def test_one_home_for_the_class_rules():
    c = ClassNames("Carcinoma")
    assert c.refined == refined_class("Carcinoma") == "Carcinoma: refined"
    assert c.probability == probability_key("Carcinoma") == "p_Carcinoma"
    assert class_matches("Carcinoma: grade 2", "Carcinoma")
    assert not class_matches("Carcinoma: refined", "Carcinoma")
    assert not class_matches("Carcinomas", "Carcinoma")
    from qupath_bridge.jobs.slide import ClassNames as FromJob

    assert FromJob is ClassNames


def test_groovy_script_never_derives_the_refined_class():
    """The menu script takes the refined class from Python (memory file, results manifest)."""
    script = (REPO / "groovy" / "refine_coarse_annotations.groovy").read_text(encoding="utf-8")
    assert ": refined" not in script
    assert "refined_class" in script and "detection_classes" in script


# --- signals reach Python ----------------------------------------------------------------


def test_jvm_options_keep_the_users_and_add_ours():
    assert jvm_options(None) == ["-Xss8m", "-Xrs"]
    assert jvm_options("-Xss16m -XX:MaxRAMPercentage=50") == [
        "-Xss16m",
        "-XX:MaxRAMPercentage=50",
        "-Xrs",
    ]
    assert jvm_options(["-Xrs", "-Xmx4g"]) == ["-Xrs", "-Xmx4g", "-Xss8m"]


def test_jvm_options_reach_paquos_jvm_arguments():
    """In a fresh process (as a run starts): what paquo.java will hand to the JVM includes -Xrs
    and keeps the user's PAQUO_JAVA_OPTS."""
    code = (
        "import json; from qupath_bridge.project import configure_jvm; configure_jvm(); "
        "from paquo._config import settings, to_kwargs; "
        "print(json.dumps(to_kwargs(settings)['java_opts']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env(PAQUO_JAVA_OPTS="['-Xmx3g']"),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    opts = json.loads(r.stdout.strip().splitlines()[-1])
    assert opts == ["-Xmx3g", "-Xss8m", "-Xrs"]


# --- damaged data files --------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    p = qpproj(
        tmp_path / "proj",
        [{"name": "slide A", "slide": tmp_path / "a.svs", "width": 10, "height": 10, "mpp": 0.5}],
    )
    (p.parent / "data" / "1").mkdir(parents=True)
    return p


def data_dir(project: Path) -> Path:
    return project.parent / "data" / "1"


def test_complete_or_never_saved_data_is_left_alone(project):
    d = data_dir(project)
    assert repair_image_data(project, "1", "slide A") is None  # never saved
    good = qpdata(b"objects" * 100)
    (d / "data.qpdata").write_bytes(good)
    assert qpdata_complete(d / "data.qpdata")
    assert repair_image_data(project, "1", "slide A") is None
    assert (d / "data.qpdata").read_bytes() == good
    assert not (project.parent / "qupath-refine").exists()


@pytest.mark.parametrize("damage", [b"", QPDATA_HEAD + b"objects" * 50, b"not java at all" * 9])
def test_truncated_data_is_restored_from_qupaths_bkp(project, damage):
    d = data_dir(project)
    before = qpdata(b"the state before the save")
    (d / "data.qpdata").write_bytes(damage)
    (d / "data.qpdata.bkp").write_bytes(before)
    said = repair_image_data(project, "1", "slide A")
    assert "'slide A' (ID 1)" in said and "data.qpdata.bkp" in said
    assert ("is empty" if not damage else "cut short") in said
    assert (d / "data.qpdata").read_bytes() == before
    assert not (d / "data.qpdata.bkp").exists()
    (kept,) = (project.parent / "qupath-refine" / "damaged").glob("*/1/data.qpdata")
    assert kept.read_bytes() == damage  # nothing lost, not even the damaged file


def project_on(disk: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A one-image project on ``disk``, and its image's data folder."""
    project = qpproj(
        disk / "proj",
        [{"name": "A", "slide": tmp_path / "a.svs", "width": 10, "height": 10, "mpp": 0.5}],
    )
    d = project.parent / "data" / "1"
    d.mkdir(parents=True)
    return project, d


def test_a_repair_on_a_full_disk_is_one_error_and_moves_nothing(tmp_path):
    with small_disk_at(tmp_path / "disk", 1 << 20) as disk:
        project, d = project_on(disk, tmp_path)
        whole = qpdata(os.urandom(200 << 10))
        (d / "data.qpdata.bkp").write_bytes(whole)
        (d / "data.qpdata").write_bytes(whole[:1000])  # a save killed early
        filler = leave_free(disk, 64 << 10)
        with pytest.raises(ProjectError, match="disk is full") as e:
            repair_image_data(project, "1", "A")
        assert "'A' (ID 1)" in str(e.value) and "run again" in str(e.value)
        assert (d / "data.qpdata").read_bytes() == whole[:1000]  # as it was, for the next try
        assert (d / "data.qpdata.bkp").read_bytes() == whole
        assert not [p for p in disk.rglob("*") if p.is_file() and p.suffix == ".tmp"]
        filler.unlink()
        assert "restored from QuPath's data.qpdata.bkp" in repair_image_data(project, "1", "A")
        assert (d / "data.qpdata").read_bytes() == whole


def test_missing_data_beside_a_bkp_is_restored(project):
    """Killed between QuPath's move to .bkp and the new file's creation."""
    d = data_dir(project)
    (d / "data.qpdata.bkp").write_bytes(qpdata(b"x"))
    assert "is empty" in repair_image_data(project, "1")
    assert qpdata_complete(d / "data.qpdata")


def test_truncated_data_is_restored_from_our_backup(project):
    d = data_dir(project)
    older, newer = qpdata(b"older"), qpdata(b"newer")
    for stamp, content in (("20260101-000000", older), ("20260102-000000", newer)):
        (d / "data.qpdata").write_bytes(content)
        (d / "summary.json").write_text(json.dumps({"hierarchy": {"nObjects": len(content)}}))
        backup_image_data(project, "1", stamp)
    (d / "data.qpdata").write_bytes(newer[:-3])
    (d / "data.qpdata.bkp").write_bytes(b"")  # QuPath's copy is damaged too
    said = repair_image_data(project, "1", "slide A")
    assert "qupath-refine's backup of 20260102-000000" in said
    assert (d / "data.qpdata").read_bytes() == newer
    assert json.loads((d / "summary.json").read_text())["hierarchy"]["nObjects"] == len(newer)


def test_no_complete_copy_is_one_error_naming_the_image(project):
    d = data_dir(project)
    (d / "data.qpdata").write_bytes(QPDATA_HEAD)
    with pytest.raises(ProjectError, match=r"Image 'slide A' \(ID 1\).*no complete copy"):
        repair_image_data(project, "1", "slide A")
    assert (d / "data.qpdata").read_bytes() == QPDATA_HEAD  # untouched


def test_dry_run_says_what_it_would_restore_and_changes_nothing(project):
    d = data_dir(project)
    (d / "data.qpdata").write_bytes(b"")
    (d / "data.qpdata.bkp").write_bytes(qpdata(b"x"))
    with pytest.raises(ProjectError, match="without --dry-run to restore it from QuPath's"):
        repair_image_data(project, "1", "slide A", fix=False)
    assert (d / "data.qpdata").read_bytes() == b""


def test_cli_repairs_before_opening_the_project(project, tmp_path):
    """The paquo path (no QuPath here): the warning comes before paquo is even started, and an
    unrecoverable file is one error line naming the image."""
    (tmp_path / "noqupath").mkdir()
    d = data_dir(project)
    (d / "data.qpdata").write_bytes(b"")
    (d / "data.qpdata.bkp").write_bytes(qpdata(b"x"))
    e = env(PAQUO_QUPATH_DIR=str(tmp_path / "noqupath"))
    cmd = [sys.executable, "-m", "qupath_bridge.cli", str(project)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=e, timeout=300)
    assert r.returncode == 2
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "restored from QuPath's data.qpdata.bkp" in warn[0]
    assert "PAQUO_QUPATH_DIR" in one_error(r.stderr)
    assert qpdata_complete(d / "data.qpdata")
    (d / "data.qpdata").write_bytes(b"")  # now with no copy at all
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=e, timeout=300)
    assert r.returncode == 2
    assert "Image 'slide A' (ID 1)" in one_error(r.stderr)


# --- the project lock: two real processes --------------------------------------------------

HOLD = (
    "import sys, time; from pathlib import Path; from qupath_bridge.project import project_lock\n"
    "with project_lock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True); time.sleep(120)\n"
)


def hold_lock(project: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env(),
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_is_refused_while_the_first_holds_the_lock(project, tmp_path):
    holder = hold_lock(project)
    try:
        d = export_folder(project, [])
        r = subprocess.run(
            [sys.executable, "-m", "qupath_bridge.cli", str(project), "--from-export", str(d)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env(),
            timeout=300,
        )
        assert r.returncode == 2
        line = one_error(r.stderr)
        assert f"PID {holder.pid}" in line and "Another qupath-refine run" in line
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the OS freed the lock; the next run takes over and says so
    info = project.parent / "qupath-refine" / "lock.json"
    assert json.loads(info.read_text())["pid"] == holder.pid
    code = (
        "import logging, sys; from pathlib import Path; "
        "from qupath_bridge.project import project_lock; logging.basicConfig(); "
        "ctx = project_lock(Path(sys.argv[1])); ctx.__enter__(); print('locked')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(project)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env(),
        timeout=120,
    )
    assert r.returncode == 0 and "locked" in r.stdout, r.stderr
    assert "took over the project lock" in r.stderr and f"PID {holder.pid}" in r.stderr


def test_lock_is_released_after_a_run_and_after_an_error(project):
    with project_lock(project):
        pass
    with pytest.raises(RuntimeError), project_lock(project):
        raise RuntimeError("boom")
    assert not (project.parent / "qupath-refine" / "lock.json").exists()
    assert not (project.parent / "qupath-refine" / "lock").exists()  # nothing left in the project
    holder = hold_lock(project)  # another process can take it at once
    holder.kill()
    holder.wait()


# --- manifest ids ----------------------------------------------------------------------------


def _export_with(project: Path, tmp_path: Path, **entry) -> Path:
    d = export_folder(
        project,
        [
            {
                "name": "A",
                "slide": tmp_path / "a.svs",
                "mpp": 0.5,
                "width": 9,
                "height": 9,
                "features": [],
            }
        ],
    )
    m = json.loads((d / "manifest.json").read_text())
    m["images"][0].update(entry)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("bad_id", ["../x", "/tmp/x", "1/../../x", "1a", " 1", "1\n", "-1", "١"])
def test_manifest_id_must_be_an_entry_number(project, tmp_path, bad_id):
    d = _export_with(project, tmp_path, id=bad_id)
    with pytest.raises(ProjectError, match="is not a QuPath entry number"):
        read_export(d)


def test_manifest_geojson_must_stay_in_the_export(project, tmp_path):
    outside = tmp_path / "outside.geojson"
    write_features(outside, [])
    d = _export_with(project, tmp_path, geojson="../../../outside.geojson")
    with pytest.raises(ProjectError, match="outside the export folder"):
        read_export(d)


def test_from_export_never_writes_outside_the_project(project, tmp_path, demo_slide):
    d = export_folder(
        project, [demo_image(demo_slide, annotation_features(demo_slide.coarse, "Tumor"))]
    )
    m = json.loads((d / "manifest.json").read_text())
    m["images"][0]["id"] = str(tmp_path / "evil")
    (d / "manifest.json").write_text(json.dumps(m))
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    r = CliRunner().invoke(main, [str(project), "--from-export", str(d), "--geojson-only", "-q"])
    assert r.exit_code == 2 and "is not a QuPath entry number" in one_error(r.stderr)
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert new <= {project.parent / "qupath-refine" / "lock"}  # at most the (released) lock


# --- deleted regions are remembered: the pure rule on real GeoJSON ---------------------------


def _roundtrip(tmp_path: Path, feats: list) -> list[QuPathObject]:
    """Objects as the export carries them: written and read back as QuPath GeoJSON."""
    return read_objects(write_features(tmp_path / "objects.geojson", feats))


def test_vanished_regions(tmp_path):
    cls = classification(REFINED, (0, 170, 60))
    a, b, c, d, e, f = (shapely.box(x, 0, x + 100, 100) for x in (0, 200, 400, 600, 800, 1000))
    written = [a, b, c, d, e, f]
    coarse = annotation_features(shapely.box(-50, -50, 1200, 150), "Tumor")
    known = annotation_keys(_roundtrip(tmp_path, coarse))  # the annotations at that run
    locked = feature(d, "detection", cls)
    locked["properties"]["isLocked"] = True
    objects = _roundtrip(
        tmp_path,
        [
            *coarse,  # the coarse outline, unchanged: it converts nothing
            feature(a, "detection", cls),  # a: still there
            *annotation_features(b.buffer(-2), REFINED),  # b: converted
            *annotation_features(c.buffer(3), "Tumor"),  # c: converted, then re-classified
            locked,  # d: locked
            # e: deleted (only the coarse outline covers it)
            *annotation_features(shapely.box(1000, 0, 1030, 100), REFINED),  # f: converted part
        ],
    )
    assert vanished_regions(written, objects, REFINED, known) == [e]
    # without knowing the annotations of that run, the outline itself could be an edit: nothing
    assert vanished_regions(written, objects, REFINED) == []
    # half of e's area still covered by a refined detection: present
    half = _roundtrip(tmp_path, [feature(shapely.box(800, 0, 860, 100), "detection", cls)])
    assert vanished_regions([e], half, REFINED) == []
    # another class's detections do not count
    other = _roundtrip(tmp_path, [feature(e, "detection", classification("Stroma", (1, 2, 3)))])
    assert vanished_regions([e], other, REFINED) == [e]


@pytest.fixture
def logs(caplog):
    """The CLI's logger does not propagate (it prints its own lines): listen to it directly."""
    logger = logging.getLogger("qupath_refine")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


def test_memory_round_trip_and_rules(project, logs):
    caplog = logs
    a, b = shapely.box(0, 0, 100, 100), shapely.box(200, 0, 300, 100)
    write_memory(project, "1", Memory(REFINED, "project", [a, b], None))
    mem = read_memory(project, "1")
    assert mem.state == "project" and len(mem.regions) == 2
    assert mem.regions[0].equals(a) and mem.regions[1].equals(b)
    only_a = [QuPathObject(a, "detection", REFINED)]
    rejected = remembered_negative("img", mem, only_a, True, 1.0)
    assert rejected.equals(b)
    assert "1 refined region(s) of the last run were deleted (0.010 mm²)" in caplog.text
    # remembered in later runs although the region stays gone from the results
    write_memory(project, "1", Memory(REFINED, "project", [a], rejected))
    assert remembered_negative("img", read_memory(project, "1"), only_a, True, 0.5).equals(b)
    # every region gone: taken as never imported, not rejected
    caplog.clear()
    assert remembered_negative("img", mem, [], True, 0.5) is None
    assert "taking them as never imported" in caplog.text
    # a write that may not have finished, or an export without the detections: no comparison
    assert remembered_negative("img", Memory(REFINED, "pending", [a, b]), only_a, True, 1) is None
    assert remembered_negative("img", mem, only_a, False, 1) is None
    # a damaged memory file is a warning, not a failure
    (project.parent / "qupath-refine" / "memory" / "1.json").write_text("{ half")
    caplog.clear()
    assert read_memory(project, "1") is None
    assert "ignoring damaged" in caplog.text


def _live_export(project: Path, demo_slide, feats: list, detection_classes: list) -> Path:
    d = export_folder(project, [demo_image(demo_slide, feats, live=True)])
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = 2
    m["images"][0]["detection_classes"] = detection_classes
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_deleted_region_is_negative_in_the_next_run(demo_slide, tmp_path, cache_dir):
    """The menu script's round trip without QuPath: run, the user deletes the largest refined
    region in the open image, run again: that tissue is not tumour now, and the run says so."""
    project = qpproj(tmp_path / "proj", [])
    coarse = annotation_features(demo_slide.coarse, "Tumor")
    args = ["--geojson-only", "--patch-um", "64", "--cache-dir", str(cache_dir), "-q"]
    d = _live_export(project, demo_slide, coarse, [])
    r = CliRunner().invoke(main, [str(project), "--from-export", str(d), *args])
    assert r.exit_code == 0, r.stderr
    results = project.parent / "qupath-refine" / "results"
    shown = json.loads((results / "1.geojson").read_text())["features"]
    regions = [f for f in shown if f["properties"]["objectType"] == "detection"]
    assert len(regions) >= 2, "set-up: the first run found one region only"
    assert read_memory(project, "1").state == "live"
    # the user deletes the largest region; the script's next export carries the others
    regions.sort(key=lambda f: shapely.geometry.shape(f["geometry"]).area)
    deleted, kept = shapely.geometry.shape(regions[-1]["geometry"]), regions[:-1]
    d = _live_export(project, demo_slide, coarse + kept, [REFINED])
    r = CliRunner().invoke(main, [str(project), "--from-export", str(d), *args[:-1]])
    assert r.exit_code == 0, r.stderr
    assert "1 refined region(s) of the last run were deleted" in r.stderr
    second = read_objects(results / "1.geojson")
    dets = [o.geometry for o in second if o.object_type == "detection"]
    inside = deleted.buffer(-1)
    assert sum(g.intersection(inside).area for g in dets) < 1e-3 * inside.area
    tiles = [o for o in second if o.object_type == "tile" and inside.contains(o.geometry)]
    assert tiles and all(t.measurements["p_Tumor"] == 0 for t in tiles)
    assert (
        read_memory(project, "1").rejected.symmetric_difference(deleted).area < 1e-6 * deleted.area
    )


# --- kills at each phase of a run without QuPath ---------------------------------------------


class Run:
    """A ``--from-export --geojson-only`` run in a child process, stopped at a given stage."""

    def __init__(self, project: Path, export: Path, cache: Path, patch_um: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "qupath_bridge.cli",
            str(project),
            "--from-export",
            str(export),
            "--geojson-only",
            "--patch-um",
            patch_um,
            "--cache-dir",
            str(cache),
            "--progress-lines",
        ]
        self.p = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env(),
            preexec_fn=default_sigint,
        )
        self.lines: list[str] = []

    def stop_at(self, stage: str, sig: int) -> tuple[int, str]:
        t0 = time.monotonic()
        for line in self.p.stderr:
            self.lines.append(line)
            if stage in line:
                self.p.send_signal(sig)
                break
            assert time.monotonic() - t0 < 600, "".join(self.lines)
        else:
            pytest.fail(f"the run ended before {stage!r}:\n{''.join(self.lines)}")
        rest = self.p.stderr.read()
        self.p.stdout.read()
        return self.p.wait(timeout=300), "".join(self.lines) + rest


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def finished(demo_slide, tmp_path, cache_dir):
    """A project with one complete run's results (not a live image: the project is the record)."""
    project = qpproj(tmp_path / "proj", [])
    img = demo_image(demo_slide, annotation_features(demo_slide.coarse, "Tumor"))
    d = export_folder(project, [img])
    args = ["--geojson-only", "--patch-um", "64", "--cache-dir", str(cache_dir), "-q"]
    r = CliRunner().invoke(main, [str(project), "--from-export", str(d), *args])
    assert r.exit_code == 0, r.stderr
    return project, d


@pytest.mark.parametrize(
    "stage, sig, patch_um",
    [
        ("embedding", signal.SIGTERM, "48"),  # a new grid: embedding happens
        ("classifier", signal.SIGINT, "64"),  # features cached: straight to training
        ("regions", signal.SIGINT, "64"),  # just before the results are written
    ],
)
def test_interrupt_at_each_phase_leaves_the_last_results(finished, cache_dir, stage, sig, patch_um):
    project, export = finished
    work = project.parent / "qupath-refine"
    before = folder_state(work / "results")
    code, err = Run(project, export, cache_dir, patch_um).stop_at(stage, sig)
    if stage == "regions" and code == 0:
        pytest.skip("the run finished before the signal arrived")  # writing takes milliseconds
    assert code == 130, err
    assert "interrupted" in one_error(err)
    assert folder_state(work / "results") == before  # the previous run's results, untouched
    assert not (work / "lock.json").exists()  # released on the way out
    assert not list(work.rglob("*.tmp"))


def test_sigkill_mid_run_then_the_next_run_takes_over(finished, cache_dir):
    project, export = finished
    work = project.parent / "qupath-refine"
    before = folder_state(work / "results")
    code, err = Run(project, export, cache_dir, "48").stop_at("embedding", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert folder_state(work / "results") == before
    assert (work / "lock.json").exists()  # a dead run's record ...
    r = CliRunner().invoke(
        main,
        [
            str(project),
            "--from-export",
            str(export),
            "--geojson-only",
            "--patch-um",
            "64",
            "--cache-dir",
            str(cache_dir),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert "took over the project lock" in r.stderr  # ... which the next run replaces
    assert not (work / "lock.json").exists()
    manifest = json.loads((work / "results" / "manifest.json").read_text())
    for e in manifest["images"]:
        assert (work / "results" / e["geojson"]).is_file()
    assert json.loads((work / "results" / "summary.json").read_text())["images"][0]["image"] == (
        "demo"
    )


# --- a full disk under the project -------------------------------------------------------


def test_a_backup_on_a_full_disk_leaves_no_partial_copy_and_a_restore_needs_no_space(tmp_path):
    """Our backup of a data file is whole or absent (repairs take the newest whole one); and
    putting one back after a failed save works on a full disk (it is moved back)."""
    with small_disk_at(tmp_path / "disk", 1 << 20) as disk:
        project, d = project_on(disk, tmp_path)
        whole = qpdata(os.urandom(300 << 10))
        (d / "data.qpdata").write_bytes(whole)
        filler = leave_free(disk, 100 << 10)  # less than one more copy
        with pytest.raises(OSError) as e:
            backup_image_data(project, "1", "20261208-000000")
        assert e.value.errno == errno.ENOSPC
        backups = project.parent / "qupath-refine" / "backup"
        assert not [p for p in backups.rglob("*") if p.is_file()]
        assert not (backups / "20261208-000000").exists()
        filler.unlink()
        saved = backup_image_data(project, "1", "20261208-000001")
        assert saved is not None and (saved / "data.qpdata").read_bytes() == whole
        # a save that died half-way on a full disk, QuPath's .bkp beside it
        (d / "data.qpdata.bkp").write_bytes(whole)
        (d / "data.qpdata").write_bytes(whole[: len(whole) // 3])
        leave_free(disk, 0)
        restore_image_data(project, "1", saved)
        assert (d / "data.qpdata").read_bytes() == whole
        assert not (d / "data.qpdata.bkp").exists()
        assert not (saved / "data.qpdata").exists()  # moved back: no room for a copy


def test_a_full_disk_is_told_through_paquos_wrapping():
    """paquo raises a save's Java IOException as an OSError without an errno, from the Java
    one: the OS's words anywhere in the chain tell a full disk; other errors are not one."""
    from qupath_bridge.project import disk_full

    def chained(inner: BaseException, outer: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as e:
                raise outer from e
        except BaseException as e:
            return e

    java = RuntimeError("java.io.IOException: No space left on device")
    assert disk_full(chained(java, OSError("occurred when trying to save the project")))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(chained(RuntimeError("java.io.IOException: Stream closed"), OSError("x")))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


@pytest.mark.parametrize("free, said", [(0, "Cannot write to"), (48 << 10, "could not write")])
def test_a_full_disk_under_the_project_is_one_line_and_the_next_run_works(
    demo_slide, tmp_path, cache_dir, free, said
):
    """The project's disk full at the lock (nothing free) or at the results (room for the lock
    only): exit 2 with one line saying the disk is full, the previous results untouched, no
    temporaries, the lock released; with space again the next run succeeds."""
    with small_disk_at(tmp_path / "disk", 16 << 20) as disk:
        project = qpproj(disk / "proj", [])
        img = demo_image(demo_slide, annotation_features(demo_slide.coarse, "Tumor"))
        export = export_folder(project, [img])
        args = [str(project), "--from-export", str(export), "--geojson-only", "--patch-um", "64"]
        args += ["--cache-dir", str(cache_dir), "-q"]
        assert CliRunner().invoke(main, args).exit_code == 0
        work = project.parent / "qupath-refine"
        before = folder_state(work / "results")
        filler = leave_free(disk, free)
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.stderr
        line = one_error(r.stderr)
        assert said in line and "disk is full" in line.lower() and "run again" in line, line
        assert folder_state(work / "results") == before
        assert not list(work.rglob("*.tmp")) and not (work / "lock.json").exists()
        filler.unlink()
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.stderr


def test_a_read_only_results_folder_is_one_line_that_names_no_out(finished, tmp_path, cache_dir):
    """A results folder that cannot be written (a read-only mount) after the lock was taken:
    one line in the project command's words (it has no --out), the last results kept."""
    project, export = finished
    results = project.parent / "qupath-refine" / "results"
    before = folder_state(results)
    saved = tmp_path / "saved"
    results.rename(saved)
    with small_disk_at(results, 8 << 20):
        for f in saved.iterdir():
            (results / f.name).write_bytes(f.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
        args = [str(project), "--from-export", str(export), "--geojson-only", "--patch-um", "64"]
        r = CliRunner().invoke(main, [*args, "--cache-dir", str(cache_dir), "-q"])
        assert r.exit_code == 2, r.stderr
        line = one_error(r.stderr)
        assert "read-only" in line and "--out" not in line and "run again" in line, line
        assert folder_state(results) == before
        assert not (project.parent / "qupath-refine" / "lock.json").exists()
