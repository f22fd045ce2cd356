"""``qupath-refine PROJECT.qpproj`` against a real QuPath, through paquo.

These tests run when paquo finds a QuPath (``PAQUO_QUPATH_DIR`` or a ``.paquo.toml``) and are
skipped otherwise, saying how to enable them. paquo starts one JVM per process and cannot
switch QuPath afterwards, so everything that needs the JVM runs in child processes: the CLI
itself, and a small paquo helper (``tests/paquo_helper.py``, run with ``python -m``) that builds
projects, edits them the way a pathologist would in QuPath, and snapshots their hierarchies as
JSON.

The main project holds the synthetic slide (known tumour) and, when the shared data is there,
the real Aperio slide, each with coarse ``Tumor`` annotations and user objects that must never
change: an annotation and a detection of other classes, a ``Tumor`` detection, a locked
``Tumor: refined`` detection, an ``Ignore*`` annotation over part of the tumour, and an
unlocked ``Tumor: refined`` detection from an "earlier run" that must be replaced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import shapely

from tests.conftest import CMU_SVS, REPO, default_sigint, leave_free, small_disk_at

REFINED = "Tumor: refined"
DEMO = "demo.tif"  # the synthetic slide's image name
P_KEY = "p_Tumor"
PATCH_UM = "64"
MIN_REGION_PX2 = 0.45 * 128**2  # the engine drops regions under half a patch (64 µm = 128 px)
TOL_PX2 = 4.0  # overlap allowed between objects that must not overlap (float32 ROIs in QuPath)
SKIP_HOW = (
    "paquo finds no QuPath: set PAQUO_QUPATH_DIR=/path/to/QuPath (the folder with QuPath's "
    "lib/ or app/) or run `paquo get_qupath --install-path DIR 0.6.0` to run these tests"
)

# --- processes ---------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("QUPATH_REFINE_DEBUG", None)
    env.update(extra)
    return env


@functools.lru_cache(maxsize=1)
def _find_qupath() -> tuple[str | None, str]:
    """The QuPath version paquo finds in a child process (once per session), or why not."""
    code = "import paquo.java as j; print('QUPATH', j.qupath_version)"
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        return None, "starting paquo timed out"
    for line in r.stdout.splitlines():
        if line.startswith("QUPATH "):
            return line.split(" ", 1)[1].strip(), ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return None, lines[-1] if lines else f"exit code {r.returncode}"


@pytest.fixture(scope="session")
def qupath() -> str:
    version, why = _find_qupath()
    if version is None:
        pytest.skip(f"{SKIP_HOW} ({why})")
    return version


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qupath_bridge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env or _env(),
        timeout=900,
    )


def refine(project: Path, cache: Path, *extra: object) -> subprocess.CompletedProcess:
    r = cli(project, "--patch-um", PATCH_UM, "--cache-dir", cache, "--progress-lines", *extra)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def error_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one ``error:`` line of a failed run (JVM warnings may surround it)."""
    assert r.returncode == code, r.stderr[-4000:]
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-4000:]
    return errors[0]


class Paquo:
    """Runs ``tests/paquo_helper.py`` in a child process (the JVM lives there)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.n = 0

    def __call__(self, cmd: str, spec: dict) -> dict:
        self.n += 1
        spec_file = self.folder / f"spec{self.n}.json"
        out_file = self.folder / f"out{self.n}.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        r = subprocess.run(
            [sys.executable, "-m", "tests.paquo_helper", cmd, str(spec_file), str(out_file)],
            capture_output=True,
            text=True,
            cwd=self.folder,
            env=_env(),
            timeout=600,
        )
        assert r.returncode == 0, f"paquo helper {cmd} failed:\n{r.stderr[-4000:]}"
        return json.loads(out_file.read_text(encoding="utf-8"))

    def snapshot(self, project: Path) -> dict:
        return self("snapshot", {"project": str(project)})


# --- objects and snapshots ---------------------------------------------------------------


def wkb(geom: shapely.Geometry) -> str:
    return shapely.to_wkb(geom, hex=True)


def geom(o: dict) -> shapely.Geometry:
    return shapely.from_wkb(bytes.fromhex(o["wkb"]))


def shape_key(o: dict) -> bytes:
    """A geometry's identity whatever ring QuPath lists first (0.5 reorders holes)."""
    return shapely.to_wkb(shapely.normalize(geom(o)))


def same_shape(o: dict, g: shapely.Geometry) -> bool:
    """QuPath keeps coordinates to about 0.01 px and may start rings elsewhere."""
    return shapely.hausdorff_distance(geom(o), g) <= 0.05


def held(im: dict, kind: str, cls: str | None, like: shapely.Geometry) -> shapely.Geometry:
    """The geometry QuPath holds for an object we gave it (to compare results against)."""
    hits = [
        o for o in im["objects"] if o["type"] == kind and o["cls"] == cls and same_shape(o, like)
    ]
    assert len(hits) == 1, (kind, cls, len(hits))
    return geom(hits[0])


def obj(kind: str, cls: str | None, g: shapely.Geometry, **kw) -> dict:
    return {"type": kind, "cls": cls, "wkb": wkb(g), **kw}


def image(snap: dict, name: str) -> dict:
    (im,) = [i for i in snap["images"] if i["name"] == name]
    return im


def ours(im: dict, kind: str) -> list[dict]:
    """Refined objects a run may replace: unlocked ``Tumor: refined`` detections or tiles."""
    return [
        o for o in im["objects"] if o["type"] == kind and o["cls"] == REFINED and not o["locked"]
    ]


def others(snap: dict) -> dict[str, list[tuple]]:
    """Everything a run must leave exactly as it was, per image, in a stable order."""
    out = {}
    for im in snap["images"]:
        keep = [
            o
            for o in im["objects"]
            if not (o["type"] in ("detection", "tile") and o["cls"] == REFINED and not o["locked"])
        ]
        rows = [
            (
                o["type"],
                o["cls"],
                o["locked"],
                o["name"],
                o["uid"],
                o["wkb"],
                sorted(o["meas"].items()),
            )
            for o in keep
        ]
        out[im["id"]] = sorted(rows, key=repr)
    return out


def overlap(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return shapely.intersection(shapely.make_valid(a), shapely.make_valid(b)).area


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def project_bytes(project: Path) -> dict[str, bytes]:
    """What 'unchanged' means: project.qpproj and every image's data file, byte for byte."""
    files = [project / "project.qpproj", *sorted(project.glob("data/*/data.qpdata"))]
    return {str(f.relative_to(project)): f.read_bytes() for f in files}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- the main project: two runs ----------------------------------------------------------


@dataclass
class Runs:
    project: Path
    ids: dict[str, str]  # image name -> entry id
    ignore: shapely.Geometry  # the user's Ignore* region on the demo image
    locked: shapely.Geometry  # the user's locked refined detection on the demo image
    stale: shapely.Geometry  # the unlocked refined detection of an "earlier run"
    before: dict
    after1: dict
    after2: dict
    bytes_before: dict[str, bytes]
    bytes_after1: dict[str, bytes]
    summary1: dict
    summary2: dict
    manifest1: dict
    stdout1: str
    backups: list[Path]  # backup folders after run 2, oldest first
    seconds: tuple[float, float]


def demo_objects(demo) -> tuple[list[dict], shapely.Geometry, shapely.Geometry, shapely.Geometry]:
    """Coarse annotation and user objects for the synthetic slide."""
    core = shapely.make_valid(demo.truth).buffer(-250)
    core = max(getattr(core, "geoms", [core]), key=lambda g: g.area)  # the main mass
    c = core.representative_point()
    ignore = shapely.box(c.x - 300, c.y - 300, c.x + 300, c.y + 300).intersection(core.buffer(200))
    far = max(
        (shapely.Point(x, y) for x, y in shapely.get_coordinates(core.buffer(-100))),
        key=lambda p: p.distance(c),
    )
    locked = far.buffer(90)
    w, h = demo.size
    stale = shapely.box(w - 700, 200, w - 600, 300)
    objects = [
        obj("annotation", "Tumor", demo.coarse, name="coarse outline"),
        obj(
            "annotation", "Stroma", shapely.box(w * 0.75, h * 0.62, w * 0.75 + 300, h * 0.62 + 250)
        ),
        obj("annotation", None, shapely.box(100, 100, 300, 250), name="unclassified note"),
        obj("annotation", "Ignore*", ignore, name="not tumour"),
        obj("detection", "Immune cells", c.buffer(40).union(c.buffer(30)), meas={"score": 0.25}),
        obj("detection", "Tumor", shapely.box(c.x + 350, c.y, c.x + 420, c.y + 60)),
        obj("detection", REFINED, locked, locked=True, name="kept by the user"),
        obj("detection", REFINED, stale),
    ]
    return objects, ignore, locked, stale


CMU_COARSE = shapely.Polygon([(880, 720), (1600, 720), (1700, 1800), (1200, 2400), (720, 2400)])


@pytest.fixture(scope="module")
def paquo_helper(qupath, tmp_path_factory) -> Paquo:
    return Paquo(tmp_path_factory.mktemp("paquo"))


@pytest.fixture(scope="module")
def runs(qupath, paquo_helper, demo_slide, cache_dir, tmp_path_factory) -> Runs:
    import time

    root = tmp_path_factory.mktemp("main")
    project = root / "project"
    objects, ignore, locked, stale = demo_objects(demo_slide)
    images = [{"slide": str(demo_slide.path), "objects": objects}]
    if CMU_SVS.is_file():
        images.append(
            {
                "slide": str(CMU_SVS),
                "objects": [
                    obj("annotation", "Tumor", CMU_COARSE),
                    obj("detection", "Stroma", shapely.box(300, 2600, 420, 2700)),
                ],
            }
        )
    classes = ["Tumor", "Stroma", "Immune cells", "Ignore*"]  # no "Tumor: refined" yet
    paquo_helper(
        "build", {"projects": [{"project": str(project), "classes": classes, "images": images}]}
    )
    before = paquo_helper.snapshot(project)
    ignore = held(image(before, DEMO), "annotation", "Ignore*", ignore)
    locked = held(image(before, DEMO), "detection", REFINED, locked)
    bytes_before = project_bytes(project)
    t0 = time.perf_counter()
    r1 = refine(project, cache_dir)
    t1 = time.perf_counter()
    after1 = paquo_helper.snapshot(project)
    bytes_after1 = project_bytes(project)
    results = project / "qupath-refine" / "results"
    summary1, manifest1 = read_json(results / "summary.json"), read_json(results / "manifest.json")
    time.sleep(1.1)  # backup folders are named by the second
    t2 = time.perf_counter()
    refine(project, cache_dir)
    t3 = time.perf_counter()
    after2 = paquo_helper.snapshot(project)
    backups = sorted(p for p in (project / "qupath-refine" / "backup").iterdir() if p.is_dir())
    return Runs(
        project=project,
        ids={im["name"]: im["id"] for im in before["images"]},
        ignore=ignore,
        locked=locked,
        stale=stale,
        before=before,
        after1=after1,
        after2=after2,
        bytes_before=bytes_before,
        bytes_after1=bytes_after1,
        summary1=summary1,
        summary2=read_json(results / "summary.json"),
        manifest1=manifest1,
        stdout1=r1.stdout,
        backups=backups,
        seconds=(t1 - t0, t3 - t2),
    )


def test_run_writes_refined_detections_and_tiles(runs: Runs, demo_slide):
    assert [c for c in runs.before["classes"] if c[0] == REFINED] == []
    refined_class = [c for c in runs.after1["classes"] if c[0] == REFINED]
    assert len(refined_class) == 1 and refined_class[0][1], runs.after1["classes"]
    rows = {r["image"]: r for r in runs.summary1["images"]}
    for im in runs.after1["images"]:
        dets, tiles = ours(im, "detection"), ours(im, "tile")
        assert dets, f"{im['name']}: no refined detections"
        assert len(tiles) == rows[im["name"]]["patches"] > 0
        for o in dets + tiles:
            assert o["color"], o
            assert geom(o).is_valid
        assert min(geom(o).area for o in dets) >= MIN_REGION_PX2
        p = [t["meas"][P_KEY] for t in tiles]
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in p)
        assert min(p) < 0.5 < max(p)  # both classes present
        assert rows[im["name"]]["written"] == "project"
    # the refined outline is close to the synthetic truth, closer than the coarse one
    demo = image(runs.after1, DEMO)
    refined = shapely.union_all([geom(o) for o in ours(demo, "detection")] + [runs.locked])
    truth = shapely.make_valid(demo_slide.truth).difference(runs.ignore)

    def dice(a):
        return 2 * overlap(a, truth) / (a.area + truth.area)

    assert dice(refined) > max(0.7, dice(demo_slide.coarse))
    table = runs.stdout1.splitlines()
    assert any(ln.startswith(DEMO) and ln.rstrip().endswith("project") for ln in table)


def test_run_keeps_a_backup_and_writes_results(runs: Runs):
    assert len(runs.backups) == 2
    for backup, previous in zip(runs.backups, (runs.bytes_before, runs.bytes_after1), strict=True):
        for name, eid in runs.ids.items():
            saved = backup / eid / "data.qpdata"
            assert saved.is_file(), f"no backup of {name}"
            assert saved.read_bytes() == previous[f"data/{eid}/data.qpdata"]
            assert (backup / eid / "summary.json").is_file()
    results = runs.project / "qupath-refine" / "results"
    m = runs.manifest1
    assert m["format"] == "qupath-refine-results"
    assert {e["id"] for e in m["images"]} == set(runs.ids.values())
    from qupath_bridge.geojson_io import read_objects

    for e in m["images"]:
        assert e["written_by_paquo"] is True and "error" not in e
        assert e["refined_class"] == REFINED
        gj = read_objects(results / e["geojson"])
        assert (results / f"{e['id']}.geojson").is_file()
        (im,) = [i for i in runs.after2["images"] if i["id"] == e["id"]]
        for kind in ("detection", "tile"):
            assert len([o for o in gj if o.object_type == kind]) == len(ours(im, kind))


def test_second_run_is_idempotent_and_touches_nothing_else(runs: Runs):
    for im1, im2 in zip(runs.after1["images"], runs.after2["images"], strict=True):
        for kind in ("detection", "tile"):
            a, b = ours(im1, kind), ours(im2, kind)
            assert len(a) == len(b), f"{im1['name']}: {kind}s {len(a)} -> {len(b)}"
            assert len({shape_key(o) for o in b}) == len(b), "duplicated refined objects"
            assert {shape_key(o) for o in a} == {shape_key(o) for o in b}
            assert not {o["uid"] for o in a} & {o["uid"] for o in b}  # replaced, not kept
        ta = sorted((shape_key(o), o["meas"][P_KEY]) for o in ours(im1, "tile"))
        tb = sorted((shape_key(o), o["meas"][P_KEY]) for o in ours(im2, "tile"))
        assert ta == tb
    assert others(runs.before) == others(runs.after1) == others(runs.after2)
    # the refined detection of an "earlier run" was replaced by the first run
    demo0 = image(runs.before, DEMO)
    assert [same_shape(o, runs.stale) for o in ours(demo0, "detection")] == [True]
    for snap in (runs.after1, runs.after2):
        assert not any(same_shape(o, runs.stale) for o in image(snap, DEMO)["objects"])
    assert runs.after1["classes"] == runs.after2["classes"]
    assert runs.summary1["images"][0]["refined_mm2"] == runs.summary2["images"][0]["refined_mm2"]


def test_ignore_region_and_locked_detection_are_honoured(runs: Runs):
    for snap in (runs.after1, runs.after2):
        demo = image(snap, DEMO)
        dets = ours(demo, "detection")
        for o in dets:
            assert overlap(geom(o), runs.ignore) <= TOL_PX2
            assert overlap(geom(o), runs.locked) <= TOL_PX2
        inside = [t for t in ours(demo, "tile") if runs.ignore.contains(geom(t))]
        assert len(inside) >= 2, "the Ignore* region holds no whole tile: test set-up is wrong"
        assert all(t["meas"][P_KEY] == 0.0 for t in inside)
        # the Ignore* region lies in the tumour: the tiles around it are tumour
        ring = runs.ignore.buffer(300).difference(runs.ignore.buffer(10))
        near = [t["meas"][P_KEY] for t in ours(demo, "tile") if ring.contains(geom(t))]
        assert near and sum(p > 0.5 for p in near) > len(near) / 2
        # and the locked detection is still there, locked, with its geometry
        kept = [o for o in demo["objects"] if o["cls"] == REFINED and o["locked"]]
        assert [same_shape(o, runs.locked) for o in kept] == [True]


# --- round trip: the pathologist edits, runs again ---------------------------------------


def test_round_trip_follows_the_users_edits(runs: Runs, paquo_helper, cache_dir, tmp_path):
    """After a run the pathologist trims the coarse outline, converts half of the main refined
    region to an annotation, locks the other region the run found and marks part of the
    tumour Ignore*; the next run follows every edit and leaves the rest alone."""
    project = tmp_path / "project"
    shutil.copytree(runs.project, project)
    demo = image(paquo_helper.snapshot(project), DEMO)
    eid = demo["id"]
    (coarse,) = [o for o in demo["objects"] if o["type"] == "annotation" and o["cls"] == "Tumor"]
    cg = geom(coarse)
    x0, y0, x1, y1 = cg.bounds
    new_coarse = cg.intersection(shapely.box(x0 - 1, y0 - 1, x0 + 0.75 * (x1 - x0), y1 + 1))
    dets = sorted(ours(demo, "detection"), key=lambda o: geom(o).area, reverse=True)
    assert len(dets) >= 2, "the first run found one region only: test set-up is wrong"
    main, other = geom(dets[0]), geom(dets[1])
    bx0, by0, bx1, by1 = main.bounds
    mid = (bx0 + bx1) / 2
    converted = shapely.make_valid(main.intersection(shapely.box(bx0, by0, mid, by1)))
    converted = max(getattr(converted, "geoms", [converted]), key=lambda g: g.area)
    c = main.intersection(shapely.box(mid + 200, by0, bx1, by1)).buffer(-220)
    c = c.difference(runs.ignore.buffer(220)).representative_point()
    new_ignore = shapely.box(c.x - 200, c.y - 200, c.x + 200, c.y + 200)
    assert main.contains(new_ignore)  # the previous run called it tumour
    ops = [
        {"image": eid, "op": "remove", "uid": coarse["uid"]},
        obj("annotation", "Tumor", new_coarse, image=eid, op="add"),
        obj("annotation", "Ignore*", new_ignore, image=eid, op="add", name="not tumour either"),
        {"image": eid, "op": "remove", "uid": dets[0]["uid"]},
        obj("annotation", REFINED, converted, image=eid, op="add"),
        {"image": eid, "op": "lock", "uid": dets[1]["uid"]},
    ]
    paquo_helper("edit", {"project": str(project), "ops": ops})
    edited = paquo_helper.snapshot(project)
    demo_edited = image(edited, DEMO)
    new_coarse = held(demo_edited, "annotation", "Tumor", new_coarse)
    new_ignore = held(demo_edited, "annotation", "Ignore*", new_ignore)
    converted = held(demo_edited, "annotation", REFINED, converted)
    assert [o["locked"] for o in demo_edited["objects"] if same_shape(o, other)] == [True]

    refine(project, cache_dir)
    after = paquo_helper.snapshot(project)
    assert others(edited) == others(after)
    demo_after = image(after, DEMO)
    kept = [converted, other, runs.locked]
    conv = [o for o in demo_after["objects"] if o["type"] == "annotation" and o["cls"] == REFINED]
    assert len(conv) == 1 and same_shape(conv[0], converted)
    locked = [o for o in demo_after["objects"] if o["cls"] == REFINED and o["locked"]]
    assert sorted(same_shape(o, other) for o in locked) == [False, True]
    new = ours(demo_after, "detection")
    assert new
    for o in new:
        g = geom(o)
        assert g.is_valid and g.area >= MIN_REGION_PX2  # no slivers left by the cuts
        for k in kept:
            assert overlap(g, k) <= TOL_PX2
        assert overlap(g, new_ignore) <= TOL_PX2
        assert overlap(g, runs.ignore) <= TOL_PX2
    inside = [t for t in ours(demo_after, "tile") if new_ignore.contains(geom(t))]
    assert inside and all(t["meas"][P_KEY] == 0.0 for t in inside)
    # the edited outline (plus the converted region) was the input
    row = [
        r
        for r in read_json(project / "qupath-refine/results/summary.json")["images"]
        if r["image"] == DEMO
    ][0]
    mpp = 0.5
    expected = shapely.union_all([new_coarse, converted]).area * mpp**2 / 1e6
    assert row["coarse_mm2"] == pytest.approx(expected, abs=2e-4)
    old = [r for r in runs.summary2["images"] if r["image"] == DEMO][0]
    assert row["coarse_mm2"] < old["coarse_mm2"]


# --- bad inputs ----------------------------------------------------------------------------


@dataclass
class Bad:
    root: Path
    empty: Path
    noclass: Path
    moved: Path
    moved_slide: Path
    newer: Path
    plain: Path
    export: Path


@pytest.fixture(scope="module")
def bad(qupath, paquo_helper, demo_slide, tmp_path_factory) -> Bad:
    root = tmp_path_factory.mktemp("bad")
    slide = str(demo_slide.path)
    copy = root / "slides" / "moved.tif"
    copy.parent.mkdir()
    shutil.copy(demo_slide.path, copy)
    second = root / "slides" / "second.tif"
    shutil.copy(demo_slide.path, second)
    coarse = obj("annotation", "Tumor", demo_slide.coarse)
    objects, *_ = demo_objects(demo_slide)
    p = {k: root / k for k in ("empty", "noclass", "moved", "newer", "plain", "export")}
    specs = [
        {"project": str(p["empty"]), "images": []},
        {
            "project": str(p["noclass"]),
            "classes": ["Tumor", "Stroma"],
            "images": [
                {
                    "slide": slide,
                    "objects": [
                        obj("annotation", "Stroma", demo_slide.coarse),
                        obj("annotation", "Ignore*", shapely.box(10, 10, 400, 400)),
                        obj("detection", "Tumor", shapely.box(2000, 2000, 2100, 2100)),
                    ],
                }
            ],
        },
        {
            "project": str(p["moved"]),
            "images": [
                {"slide": slide, "objects": [coarse]},
                {"slide": str(copy), "objects": [coarse]},
            ],
        },
        {"project": str(p["newer"]), "images": [{"slide": slide, "objects": [coarse]}]},
        {"project": str(p["plain"]), "images": [{"slide": slide, "objects": objects}]},
        {
            "project": str(p["export"]),
            "classes": ["Tumor", "Ignore*"],
            "images": [
                {"slide": slide, "objects": objects},
                {"slide": str(second), "objects": objects},
            ],
        },
    ]
    paquo_helper("build", {"projects": specs})
    gone = root / "elsewhere" / "moved.tif"
    gone.parent.mkdir()
    shutil.move(copy, gone)
    doc = read_json(p["newer"] / "project.qpproj")
    doc["version"] = "9.9.9"
    (p["newer"] / "project.qpproj").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return Bad(
        root, p["empty"], p["noclass"], p["moved"], copy, p["newer"], p["plain"], p["export"]
    )


@pytest.mark.parametrize("kind", ["empty folder", "garbage qpproj", "json without images"])
def test_not_a_project(kind, tmp_path):
    # needs no QuPath: the project file is checked before paquo starts
    target = tmp_path / "thing"
    target.mkdir()
    if kind == "garbage qpproj":
        target = target / "project.qpproj"
        target.write_bytes(b"\x00\x01 not json")
    elif kind == "json without images":
        target = target / "project.qpproj"
        target.write_text('{"version": "0.6.0"}', encoding="utf-8")
    before = file_hashes(tmp_path)
    r = cli(target)
    line = error_line(r)
    assert "QuPath project" in line
    assert r.stderr.strip() == line  # no JVM was started: nothing else on stderr
    assert file_hashes(tmp_path) == before


def test_project_without_images(bad: Bad, cache_dir):
    before = file_hashes(bad.empty)
    line = error_line(cli(bad.empty / "project.qpproj", "--cache-dir", cache_dir))
    assert "no images" in line
    assert file_hashes(bad.empty) == before


def test_images_without_the_coarse_class(bad: Bad, cache_dir):
    before = file_hashes(bad.noclass)
    line = error_line(cli(bad.noclass, "--patch-um", PATCH_UM, "--cache-dir", cache_dir))
    assert "'Tumor'" in line
    assert "Stroma" in line and "Ignore*" in line
    assert file_hashes(bad.noclass) == before


def test_moved_slide(bad: Bad, cache_dir):
    before = file_hashes(bad.moved)
    line = error_line(cli(bad.moved, "--patch-um", PATCH_UM, "--cache-dir", cache_dir))
    assert "'moved.tif'" in line and str(bad.moved_slide) in line
    assert "--skip-missing" in line
    assert file_hashes(bad.moved) == before

    bytes_before = project_bytes(bad.moved)
    r = refine(bad.moved, cache_dir, "--skip-missing")
    assert "skipping 'moved.tif'" in r.stderr
    after = project_bytes(bad.moved)
    assert after["data/2/data.qpdata"] == bytes_before["data/2/data.qpdata"]
    assert after["data/1/data.qpdata"] != bytes_before["data/1/data.qpdata"]
    manifest = read_json(bad.moved / "qupath-refine/results/manifest.json")
    assert [e["id"] for e in manifest["images"]] == ["1"]


def test_project_from_a_newer_qupath_is_not_written(bad: Bad, qupath, cache_dir):
    before = file_hashes(bad.newer)
    line = error_line(cli(bad.newer, "--patch-um", PATCH_UM, "--cache-dir", cache_dir))
    assert "9.9.9" in line and qupath in line
    assert file_hashes(bad.newer) == before
    # a dry run only reads: allowed
    r = cli(bad.newer, "--dry-run", "--patch-um", PATCH_UM, "--cache-dir", cache_dir)
    assert r.returncode == 0, r.stderr[-4000:]
    assert file_hashes(bad.newer) == before


def test_dry_run_writes_nothing(bad: Bad, cache_dir):
    before = file_hashes(bad.plain)
    r = cli(bad.plain, "--dry-run", "--patch-um", PATCH_UM, "--cache-dir", cache_dir)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "dry run" in r.stdout and DEMO in r.stdout
    assert file_hashes(bad.plain) == before
    assert not (bad.plain / "qupath-refine").exists()


def test_no_qupath_says_how_to_point_paquo_at_one(tmp_path):
    # runs without QuPath: paquo is pointed at an empty folder
    (tmp_path / "empty").mkdir()
    project = tmp_path / "project" / "project.qpproj"
    project.parent.mkdir()
    project.write_text('{"version": "0.6.0", "images": []}', encoding="utf-8")
    before = project.read_bytes()
    r = cli(project, env=_env(PAQUO_QUPATH_DIR=str(tmp_path / "empty")))
    line = error_line(r)
    assert r.stderr.strip() == line
    assert "QuPath" in line and "PAQUO_QUPATH_DIR" in line and "get_qupath" in line
    assert project.read_bytes() == before


# --- the QuPath script's export ----------------------------------------------------------


@dataclass
class Exported:
    project: Path
    stdout: str
    live_ignore: shapely.Geometry  # an unsaved Ignore* region in the open image
    before: dict
    after: dict
    bytes_before: dict[str, bytes]
    bytes_after: dict[str, bytes]
    summary_before: bytes


@pytest.fixture(scope="module")
def exported(bad: Bad, paquo_helper, demo_slide, cache_dir) -> Exported:
    """An export folder as the QuPath script writes it: image 1 is open in QuPath (exported
    from its live hierarchy, with an unsaved Ignore* region), image 2 is not."""
    from qupath_bridge.geojson_io import (
        annotation_features,
        classification,
        feature,
        write_features,
    )

    project = bad.export
    before = paquo_helper.snapshot(project)
    bytes_before = project_bytes(project)
    summary_before = (project / "data/1/summary.json").read_bytes()
    w, h = demo_slide.size
    core = shapely.make_valid(demo_slide.truth).buffer(-250)
    right = core.intersection(shapely.box(core.centroid.x + 150, 0, w, h))
    c = max(getattr(right, "geoms", [right]), key=lambda g: g.area).representative_point()
    live_ignore = shapely.box(c.x - 250, c.y - 250, c.x + 250, c.y + 250)
    export = project / "qupath-refine" / "export"
    saved = []
    for o in demo_objects(demo_slide)[0]:
        if o["type"] == "annotation":  # what the script exports: every annotation ...
            saved += annotation_features(geom(o), o["cls"] or "Other")
        elif o["type"] == "detection" and o["cls"] == REFINED and o.get("locked"):
            # ... and the refined detections the user locked
            f = feature(geom(o), "detection", classification(REFINED, (0, 170, 60)))
            f["properties"]["isLocked"] = True
            saved.append(f)
    live = saved + annotation_features(live_ignore, "Ignore*")
    write_features(export / "images/1.geojson", live)
    write_features(export / "images/2.geojson", saved)
    images = []
    for eid, name, slide, is_live in (
        ("1", DEMO, demo_slide.path, True),
        ("2", "second.tif", bad.root / "slides/second.tif", False),
    ):
        images.append(
            {
                "name": name,
                "id": eid,
                "slide": str(slide),
                "geojson": f"images/{eid}.geojson",
                "pixel_width_um": 0.5,
                "pixel_height_um": 0.5,
                "width": w,
                "height": h,
                "open_in_gui": is_live,
            }
        )
    manifest = {
        "format": "qupath-refine-export",
        "version": 1,
        "qupath_version": "0.6.0",
        "project": str(project / "project.qpproj"),
        "created": "2026-01-01T00:00:00Z",
        "images": images,
    }
    (export / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    # Two copies of the slide: ~2000 patches, enough for the PCA's LU to need more than the
    # 1 MB of stack a JVM started without -Xss leaves the main thread (it crashed then).
    r = refine(project / "project.qpproj", cache_dir, "--from-export", export)
    return Exported(
        project=project,
        stdout=r.stdout,
        live_ignore=live_ignore,
        before=before,
        after=paquo_helper.snapshot(project),
        bytes_before=bytes_before,
        bytes_after=project_bytes(project),
        summary_before=summary_before,
    )


def test_from_export_leaves_the_open_image_to_the_script(exported: Exported):
    from qupath_bridge.geojson_io import read_objects

    project, before, after = exported.project, exported.bytes_before, exported.bytes_after
    assert after["data/1/data.qpdata"] == before["data/1/data.qpdata"]
    assert (project / "data/1/summary.json").read_bytes() == exported.summary_before
    assert after["data/2/data.qpdata"] != before["data/2/data.qpdata"]
    table = exported.stdout.splitlines()
    assert any(ln.startswith(DEMO) and ln.rstrip().endswith("live") for ln in table)
    assert any(ln.startswith("second.tif") and ln.rstrip().endswith("project") for ln in table)

    results = project / "qupath-refine" / "results"
    m = {e["id"]: e for e in read_json(results / "manifest.json")["images"]}
    assert m["1"]["written_by_paquo"] is False and m["2"]["written_by_paquo"] is True
    live = read_objects(results / "1.geojson")
    dets = [o for o in live if o.object_type == "detection"]
    tiles = [o for o in live if o.object_type == "tile"]
    assert dets and tiles and all(o.classification == REFINED for o in live)
    # the live edit counted: nothing refined under the unsaved Ignore* region ...
    assert all(overlap(o.geometry, exported.live_ignore) <= TOL_PX2 for o in dets)
    inside = [o for o in tiles if exported.live_ignore.contains(o.geometry)]
    assert inside and all(o.measurements[P_KEY] == 0.0 for o in inside)
    # ... where the same pixels without it (image 2) are tumour
    two = image(exported.after, "second.tif")
    assert sum(overlap(geom(o), exported.live_ignore) for o in ours(two, "detection")) > 1e5
    backups = list((project / "qupath-refine/backup").glob("*/*"))
    assert [b.name for b in backups] == ["2"]

    assert others(exported.after) == others(exported.before)
    one = image(exported.after, DEMO)
    assert ours(one, "detection") == ours(image(exported.before, DEMO), "detection")  # stale
    assert ours(one, "tile") == []
    gj2 = read_objects(results / "2.geojson")
    assert len(ours(two, "detection")) == len([o for o in gj2 if o.object_type == "detection"]) > 0
    assert len(ours(two, "tile")) == len([o for o in gj2 if o.object_type == "tile"]) > 0


def test_from_export_cuts_new_regions_around_locked_detections(exported: Exported, demo_slide):
    two = image(exported.after, "second.tif")
    locked = held(two, "detection", REFINED, demo_objects(demo_slide)[2])
    assert all(overlap(geom(o), locked) <= TOL_PX2 for o in ours(two, "detection"))


# --- faults: signals, kills, damaged data files, deleted regions (issue 10) -------------------


def test_jvm_gets_xrs_so_signals_reach_python(qupath):
    code = (
        "from qupath_bridge.project import configure_jvm; configure_jvm(); import paquo.java; "
        "from jpype import JClass; "
        "args = JClass('java.lang.management.ManagementFactory').getRuntimeMXBean()"
        ".getInputArguments(); print('ARGS', ' '.join(str(a) for a in args))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=300,
    )
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS ")]
    assert "-Xrs" in line.split() and "-Xss8m" in line.split()


def _stop_at(project: Path, cache: Path, stage: str, sig: int) -> tuple[int, str]:
    """Run the CLI on a project and send ``sig`` when a stderr line contains ``stage``."""
    cmd = [
        sys.executable,
        "-m",
        "qupath_bridge.cli",
        str(project),
        "--patch-um",
        PATCH_UM,
        "--cache-dir",
        str(cache),
        "--progress-lines",
    ]
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(PYTHONUNBUFFERED="1"),
        preexec_fn=default_sigint,
    )
    seen = []
    for line in p.stderr:
        seen.append(line)
        if stage in line:
            p.send_signal(sig)
            break
    rest = p.stderr.read()
    p.stdout.read()
    return p.wait(timeout=600), "".join(seen) + rest


@pytest.mark.parametrize(
    "stage, sig",
    [
        ("embedding", signal.SIGINT),
        ("classifier", signal.SIGTERM),
        ("writing", signal.SIGINT),
        ("writing", signal.SIGTERM),
    ],
)
def test_interrupt_at_each_phase_of_a_project_run(
    runs: Runs, paquo_helper, cache_dir, tmp_path, stage, sig
):
    """Ctrl-C or kill (SIGTERM) at any phase: exit 130 with one error line, every data file
    complete and either as it was or fully written, the lock released, and the next run
    succeeds."""
    from qupath_bridge.project import qpdata_complete

    project = tmp_path / "project"
    shutil.copytree(runs.project, project)
    before = project_bytes(project)
    cache = cache_dir if stage != "embedding" else tmp_path / "cache"
    code, err = _stop_at(project, cache, stage, sig)
    assert code == 130, err[-4000:]
    assert "interrupted" in error_line(subprocess.CompletedProcess([], 130, "", err), 130)
    for f in project.glob("data/*/data.qpdata"):
        assert qpdata_complete(f), f
    if stage != "writing":
        assert project_bytes(project) == before
    assert not (project / "qupath-refine" / "lock.json").exists()
    refine(project, cache_dir)
    assert others(paquo_helper.snapshot(project)) == others(runs.after2)


def test_sigkill_while_writing_then_the_next_run_recovers(
    runs: Runs, paquo_helper, cache_dir, tmp_path
):
    from qupath_bridge.project import qpdata_complete

    project = tmp_path / "project"
    shutil.copytree(runs.project, project)
    code, _ = _stop_at(project, cache_dir, "writing", signal.SIGKILL)
    assert code == -signal.SIGKILL
    r = refine(project, cache_dir)  # never hangs: damaged files are restored first
    assert "took over the project lock" in r.stderr
    for f in project.glob("data/*/data.qpdata"):
        assert qpdata_complete(f), f
    assert others(paquo_helper.snapshot(project)) == others(runs.after2)


def test_truncated_data_file_is_restored_not_read(runs: Runs, paquo_helper, cache_dir, tmp_path):
    """QuPath's reader loops forever on a truncated data.qpdata: the run restores the .bkp
    first (one warning), then works as usual."""
    project = tmp_path / "project"
    shutil.copytree(runs.project, project)
    eid = runs.ids[DEMO]
    data = project / "data" / eid / "data.qpdata"
    whole = data.read_bytes()
    (data.parent / "data.qpdata.bkp").write_bytes(whole)
    data.write_bytes(whole[: len(whole) // 2])
    r = refine(project, cache_dir)
    warn = [ln for ln in r.stderr.splitlines() if "restored from QuPath's data.qpdata.bkp" in ln]
    assert len(warn) == 1 and DEMO in warn[0]
    assert others(paquo_helper.snapshot(project)) == others(runs.after2)
    data.write_bytes(b"")
    (data.parent / "data.qpdata.bkp").unlink(missing_ok=True)
    shutil.rmtree(project / "qupath-refine" / "backup")
    line = error_line(cli(project, "--patch-um", PATCH_UM, "--cache-dir", cache_dir))
    assert DEMO in line and "no complete copy" in line


def test_deleted_region_is_remembered_through_paquo(runs: Runs, paquo_helper, cache_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(runs.project, project)
    demo = image(paquo_helper.snapshot(project), DEMO)
    dets = sorted(ours(demo, "detection"), key=lambda o: geom(o).area, reverse=True)
    deleted = geom(dets[0])
    paquo_helper(
        "edit",
        {
            "project": str(project),
            "ops": [{"image": demo["id"], "op": "remove", "uid": dets[0]["uid"]}],
        },
    )
    r = refine(project, cache_dir)
    assert "1 refined region(s) of the last run were deleted" in r.stderr
    after = image(paquo_helper.snapshot(project), DEMO)
    inside = deleted.buffer(-2)
    assert sum(overlap(geom(o), inside) for o in ours(after, "detection")) <= TOL_PX2
    tiles = [t for t in ours(after, "tile") if inside.contains(geom(t))]
    assert tiles and all(t["meas"][P_KEY] == 0.0 for t in tiles)
    refine(project, cache_dir)  # remembered in later runs too
    again = image(paquo_helper.snapshot(project), DEMO)
    assert sum(overlap(geom(o), inside) for o in ours(again, "detection")) <= TOL_PX2


# --- a full disk under the project -------------------------------------------------------


@pytest.mark.parametrize(
    "room, said",
    [
        ("none", "Cannot write to"),  # the lock
        ("half a backup", "could not back up image 'demo.tif'"),
        ("a backup", "writing image 'demo.tif' failed"),  # QuPath's save of it
        ("backups and saves", "Every image was written into the project"),  # then the results
    ],
)
def test_a_full_disk_leaves_every_data_file_whole_and_the_next_run_works(
    runs: Runs, paquo_helper, cache_dir, tmp_path, room, said
):
    """The project's disk fills up at each step of a run that writes through paquo: one
    error line saying the disk is full and what each image holds, exit 2, every data file
    whole and holding what it held (or, written, what the run wrote: the same objects), no
    partial backup, the lock released; with space again the next run succeeds."""
    from qupath_bridge.project import qpdata_complete

    data = {f.parent.name: f.stat().st_size for f in runs.project.glob("data/*/data.qpdata")}
    demo, total = data[runs.ids[DEMO]], sum(data.values())
    used = sum(f.stat().st_size for f in runs.project.rglob("*") if f.is_file())
    free = {
        "none": 0,
        "half a backup": demo // 2,
        "a backup": demo + demo // 2,  # not the new data file beside QuPath's .bkp
        "backups and saves": 2 * total + (64 << 10),  # not the results' tiles
    }[room]
    with small_disk_at(tmp_path / "disk", used + 4 * total + (16 << 20)) as disk:
        project = disk / "project"
        shutil.copytree(runs.project, project)
        backups = {p.name for p in (project / "qupath-refine" / "backup").iterdir()}
        results = file_hashes(project / "qupath-refine" / "results")
        data_before = project_bytes(project)
        filler = leave_free(disk, free)
        r = cli(project, "--patch-um", PATCH_UM, "--cache-dir", cache_dir)
        line = error_line(r)
        assert "disk is full" in line.lower() and said in line and "run again" in line, line
        for f in project.glob("data/*/data.qpdata"):
            assert qpdata_complete(f), f
        for f in (project / "qupath-refine" / "backup").rglob("data.qpdata"):
            assert qpdata_complete(f), f  # whole, or no backup at all
        if room in ("none", "half a backup"):  # no backup was made: none is left
            assert {p.name for p in (project / "qupath-refine" / "backup").iterdir()} == backups
        if room != "backups and saves":  # restored, or never touched: byte for byte
            assert project_bytes(project) == data_before
        assert file_hashes(project / "qupath-refine" / "results") == results  # the last run's
        assert not (project / "qupath-refine" / "lock.json").exists()
        assert not list(project.rglob("*.tmp"))
        assert others(paquo_helper.snapshot(project)) == others(runs.after2)
        filler.unlink()
        refine(project, cache_dir)
        assert others(paquo_helper.snapshot(project)) == others(runs.after2)
