"""A project run on a real Dask LocalCluster (2 processes x 1 thread), through the GeoJSON
exchange (``--from-export --geojson-only``, no QuPath): the results folder holds what a
single-process run writes, and an image that cannot be refined is reported while the others
are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402

from engine.cluster import DaskSettings, dask_client  # noqa: E402
from engine.tiff import write_pyramidal_tiff  # noqa: E402
from qupath_bridge.cli import main  # noqa: E402
from qupath_bridge.geojson_io import annotation_features  # noqa: E402
from tests.test_cluster import without_ids  # noqa: E402
from tests.test_project import demo_image, export_folder, qpproj  # noqa: E402

#: 96 µm patches, as in test_cluster: a few hundred per slide, embedded in seconds
ARGS = ["--geojson-only", "--patch-um", "96", "-q"]


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskSettings(workers=2)) as c:
        yield c


@pytest.fixture(scope="module")
def images(demo_slide, cmu_svs) -> list[dict]:
    """The demo slide, open in QuPath (its memory file is written by the run), and a real
    Aperio SVS with a coarse ellipse over part of its tissue."""
    ellipse = shapely.affinity.scale(shapely.Point(1100, 1500).buffer(1), 600, 800)
    demo = demo_image(demo_slide, annotation_features(demo_slide.coarse, "Tumor"), live=True)
    cmu = {"name": "cmu", "slide": cmu_svs, "mpp": 0.499, "width": 2220, "height": 2967}
    return [demo, {**cmu, "features": annotation_features(ellipse, "Tumor")}]


def run(folder: Path, images: list[dict], cache_dir: Path, *extra: str):
    project = qpproj(folder, images)
    export = export_folder(project, images)
    args = [str(project), "--from-export", str(export), *ARGS, "--cache-dir", str(cache_dir)]
    return CliRunner().invoke(main, [*args, *extra]), folder / "qupath-refine"


def manifest(work: Path) -> list[dict]:
    return json.loads((work / "results" / "manifest.json").read_text())["images"]


def test_project_on_the_cluster_writes_what_one_process_writes(client, images, cache_dir, tmp_path):
    r, single = run(tmp_path / "single", images, cache_dir)
    assert r.exit_code == 0, r.stderr
    r, dask = run(tmp_path / "dask", images, cache_dir, "--dask", client.scheduler.address)
    assert r.exit_code == 0, r.stderr
    assert manifest(dask) == manifest(single)  # same entries, in the project's order
    for e in manifest(single):
        a, b = (w / "results" / e["geojson"] for w in (single, dask))
        assert without_ids(b.read_bytes()) == without_ids(a.read_bytes()), e["name"]
    # the live image's memory: the regions the menu script puts into the open image
    assert (dask / "memory" / "1.json").read_bytes() == (single / "memory" / "1.json").read_bytes()
    one, many = (json.loads((w / "results" / "summary.json").read_text()) for w in (single, dask))
    for row in one["images"] + many["images"]:
        del row["seconds"]  # a single-process run shares its training time out over images
    assert many["images"] == one["images"]
    assert many["failed"] == [] and many["dask"]["address"] == client.scheduler.address
    assert "dask" not in one
    assert not (dask / "lock.json").exists()


def test_an_image_that_cannot_be_refined_is_reported_and_the_others_written(
    client, images, cache_dir, tmp_path
):
    # An image with no tissue under a valid outline fails on its worker; the other is written.
    blank = tmp_path / "blank.tif"
    write_pyramidal_tiff(blank, np.full((1024, 1024, 3), 246, np.uint8), mpp=0.5)
    box = annotation_features(shapely.box(0, 0, 500, 500), "Tumor")
    bad = {"name": "blank", "slide": blank, "mpp": 0.5, "width": 1024, "height": 1024}
    bad |= {"features": box, "live": False}
    r, work = run(tmp_path / "p", [bad, images[0]], cache_dir, "--dask", client.scheduler.address)
    assert r.exit_code == 1, r.output
    assert "warning: not refined: No tissue found on blank" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 images not refined")
    failed, ok = manifest(work)
    assert failed["geojson"] is None and "No tissue found" in failed["error"]
    assert ok["name"] == "demo" and "error" not in ok
    assert (work / "results" / ok["geojson"]).is_file()
    assert sorted(p.name for p in (work / "results").iterdir()) == [
        "2.geojson",
        "manifest.json",
        "summary.json",
    ]
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert [row["image"] for row in summary["images"]] == ["demo"]
    assert summary["failed"] == [{"image": "blank", "error": failed["error"]}]
    assert not (work / "lock.json").exists()
