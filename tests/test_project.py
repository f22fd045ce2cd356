"""The QuPath project round trip above the paquo calls: export folder, round-trip rules,
project files, backups, and the GeoJSON exchange path end to end without QuPath."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner

from qupath_bridge.classes import ClassNames
from qupath_bridge.cli import main
from qupath_bridge.errors import ProjectError
from qupath_bridge.export import ImageRecord, read_export
from qupath_bridge.geojson_io import QuPathObject, annotation_features, read_objects, write_features
from qupath_bridge.jobs.project import check_slides, select_images, sort_objects
from qupath_bridge.project import (
    backup_image_data,
    image_metadata,
    project_file,
    prune_backups,
    restore_image_data,
    uri_to_path,
    version_tuple,
)

OPENSLIDE_BUILDER = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"


def qpproj(folder: Path, images: list[dict], version: str = "0.6.0") -> Path:
    """A project.qpproj as QuPath 0.6 writes it (the fields we read)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": version,
        "createTimestamp": 0,
        "modifyTimestamp": 0,
        "uri": "",
        "lastID": 0,
        "images": [],
    }
    for i, img in enumerate(images, 1):
        doc["images"].append(
            {
                "serverBuilder": {
                    "builderType": "uri",
                    "providerClassName": OPENSLIDE_BUILDER,
                    "uri": Path(img["slide"]).as_uri(),
                    "args": [],
                    "metadata": {
                        "width": img["width"],
                        "height": img["height"],
                        "pixelCalibration": {
                            "pixelWidth": {"value": img["mpp"], "unit": "µm"},
                            "pixelHeight": {"value": img["mpp"], "unit": "µm"},
                        },
                    },
                },
                "entryID": i,
                "randomizedName": f"r{i}",
                "imageName": img["name"],
            }
        )
    p = folder / "project.qpproj"
    p.write_text(json.dumps(doc))
    return p


def demo_image(demo_slide, features: list, **extra) -> dict:
    """The demo slide as one image of an export or project (``live``, ... in ``extra``)."""
    w, h = demo_slide.size
    return {
        "name": "demo",
        "slide": demo_slide.path,
        "mpp": 0.5,
        "width": w,
        "height": h,
        "features": features,
        **extra,
    }


def export_folder(project: Path, images: list[dict]) -> Path:
    """An export folder in the Groovy script's format."""
    d = project.parent / "qupath-refine" / "export"
    (d / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, img in enumerate(images, 1):
        write_features(d / "images" / f"{i}.geojson", img["features"])
        entries.append(
            {
                "name": img["name"],
                "id": str(i),
                "slide": str(img["slide"]),
                "geojson": f"images/{i}.geojson",
                "pixel_width_um": img["mpp"],
                "pixel_height_um": img["mpp"],
                "width": img["width"],
                "height": img["height"],
                "open_in_gui": img.get("live", False),
            }
        )
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "format": "qupath-refine-export",
                "version": 1,
                "qupath_version": "0.6.0",
                "project": str(project),
                "created": "2026-11-27T10:00:00Z",
                "images": entries,
            }
        )
    )
    return d


def obj(geom, cls, kind="annotation", locked=False):
    return QuPathObject(geometry=geom, object_type=kind, classification=cls, locked=locked)


def test_round_trip_rules():
    box = shapely.box
    objects = [
        obj(box(0, 0, 100, 100), "Tumor"),
        obj(box(200, 0, 300, 100), "Tumor: grade 3"),
        obj(box(50, 50, 60, 60), "Ignore*"),
        obj(box(400, 0, 450, 50), "Tumor: refined"),  # converted by the user: accepted
        obj(box(500, 0, 550, 50), "Tumor: refined", "detection", locked=True),  # kept
        obj(box(600, 0, 650, 50), "Tumor: refined", "detection"),  # ours: replaced
        obj(box(700, 0, 750, 50), "Stroma"),
    ]
    inp = sort_objects(objects, ClassNames())
    assert inp.coarse.area == 100 * 100 * 2 + 50 * 50
    assert inp.negative.area == 100
    assert inp.keep.area == 2 * 50 * 50
    assert inp.classes == {"Tumor", "Tumor: grade 3", "Ignore*", "Tumor: refined", "Stroma"}
    no_neg = sort_objects(objects, ClassNames(negative=None))
    assert no_neg.negative is None


def test_select_and_check(tmp_path):
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"x")
    recs = [
        ImageRecord("A", "1", slide),
        ImageRecord("B", "2", tmp_path / "moved.svs"),
        ImageRecord("C", "3", None),
    ]
    assert [r.id for r in select_images(recs, ("B", "1"))] == ["2", "1"]
    with pytest.raises(ProjectError, match=r"No image named 'Z' in the project: 'A', 'B', 'C'"):
        select_images(recs, ("Z",))
    with pytest.raises(ProjectError, match="no images"):
        select_images([], ())
    with pytest.raises(ProjectError, match=r"2 slide\(s\) not found: 'B' expects .*moved.svs"):
        check_slides(recs, skip_missing=False)
    assert [r.name for r in check_slides(recs, skip_missing=True)] == ["A"]


def test_project_files(tmp_path):
    with pytest.raises(ProjectError, match="not a QuPath project"):
        project_file(tmp_path / "slide.svs")
    with pytest.raises(ProjectError, match="project.qpproj not found"):
        project_file(tmp_path)
    (tmp_path / "project.qpproj").write_text("{ broken")
    with pytest.raises(ProjectError, match="not a readable QuPath project"):
        project_file(tmp_path)
    p = qpproj(
        tmp_path / "p",
        [{"name": "A", "slide": tmp_path / "a.svs", "width": 100, "height": 50, "mpp": 0.25}],
    )
    assert project_file(p.parent) == p
    md = image_metadata(p)
    assert md["1"]["width"] == 100 and md["1"]["pixel_um"] == 0.25
    assert version_tuple("0.6.0-rc2") == (0, 6, 0) and version_tuple("0.10.1") > (0, 9)
    assert uri_to_path("file:///data/slides/a%20b.svs") == Path("/data/slides/a b.svs")
    assert uri_to_path("https://omero/x") is None


def test_backup_restore_and_prune(tmp_path):
    p = qpproj(tmp_path / "p", [])
    data = p.parent / "data" / "1"
    data.mkdir(parents=True)
    (data / "data.qpdata").write_bytes(b"original")
    (data / "summary.json").write_text("{}")
    b = backup_image_data(p, "1", "20260101-000000")
    (data / "data.qpdata").write_bytes(b"truncated")
    (data / "data.qpdata.bkp").write_bytes(b"stale")
    restore_image_data(p, "1", b)
    assert (data / "data.qpdata").read_bytes() == b"original"
    assert not (data / "data.qpdata.bkp").exists()
    for k in range(12):
        backup_image_data(p, "1", f"20260102-0000{k:02d}")
    removed = prune_backups(p, keep=10)
    assert len(removed) == 3
    assert len(list((p.parent / "qupath-refine" / "backup").iterdir())) == 10


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "No manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{ half"), "is corrupt"),
        (lambda d: (d / "manifest.json").write_text('{"format": "x"}'), "not a qupath-refine"),
        (lambda d: (d / "images" / "1.geojson").unlink(), "but it is missing"),
    ],
)
def test_bad_export(tmp_path, mutate, message):
    p = qpproj(tmp_path / "p", [])
    d = export_folder(
        p,
        [
            {
                "name": "A",
                "slide": tmp_path / "a.svs",
                "mpp": 0.5,
                "width": 10,
                "height": 10,
                "features": [],
            }
        ],
    )
    assert read_export(d).images[0].pixel_um == 0.5
    mutate(d)
    with pytest.raises(ProjectError, match=message):
        read_export(d)


def test_geojson_exchange_without_qupath(demo_slide, tmp_path, cache_dir):
    """--from-export with --geojson-only: the path for machines without QuPath."""
    w, h = demo_slide.size
    ignore = shapely.box(0, 0, w * 0.45, h)  # the left part of the tumour is "not tumour"
    feats = annotation_features(demo_slide.coarse, "Tumor") + annotation_features(
        ignore, "Ignore*", (180, 180, 180)
    )
    img = demo_image(demo_slide, feats, live=True)
    p = qpproj(tmp_path / "proj", [img])
    d = export_folder(p, [img])
    before = p.read_bytes()
    r = CliRunner().invoke(
        main,
        [
            str(p),
            "--from-export",
            str(d),
            "--geojson-only",
            "--patch-um",
            "64",
            "--cache-dir",
            str(cache_dir),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output + r.stderr
    assert "demo" in r.output and "live" in r.output
    results = p.parent / "qupath-refine" / "results"
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["format"] == "qupath-refine-results"
    assert manifest["export_created"] == "2026-11-27T10:00:00Z"
    (entry,) = manifest["images"]
    assert entry["written_by_paquo"] is False and entry["refined_class"] == "Tumor: refined"
    objs = read_objects(results / entry["geojson"])
    dets = [o.geometry for o in objs if o.object_type == "detection"]
    assert dets, "no refined region"
    # Hard negatives: nothing refined inside the Ignore* region, tiles there at 0.
    assert shapely.union_all(dets).intersection(ignore).area < 1e-6 * ignore.area
    inside = [o for o in objs if o.object_type == "tile" and ignore.contains(o.geometry)]
    assert inside and all(o.measurements["p_Tumor"] == 0 for o in inside)
    assert p.read_bytes() == before  # the project itself is untouched
    # --dry-run reports without writing anything new.
    (results / "manifest.json").unlink()
    r = CliRunner().invoke(
        main, ["project", str(p), "--from-export", str(d), "--dry-run", "--patch-um", "64", "-q"]
    )
    assert r.exit_code == 0 and "dry run" in r.output
    assert not (results / "manifest.json").exists()


def test_project_command_errors(tmp_path, demo_slide):
    r = CliRunner().invoke(main, ["project", str(tmp_path / "nothing.qpproj")])
    assert r.exit_code == 2 and "No QuPath project" in r.stderr
    p = qpproj(tmp_path / "p", [])
    d = export_folder(p, [])
    r = CliRunner().invoke(main, [str(p), "--from-export", str(d), "--geojson-only"])
    assert r.exit_code == 2 and "no images" in r.stderr
    img = demo_image(demo_slide, annotation_features(shapely.box(0, 0, 100, 100), "Stroma"))
    d = export_folder(p, [img])
    r = CliRunner().invoke(main, [str(p), "--from-export", str(d), "--geojson-only", "-q"])
    assert r.exit_code == 2 and "Annotation classes in the project: Stroma" in r.stderr
