"""Bad input found by trying the tool as a user would: each case ends in one ``error:`` line and
exit 2 (or a documented repair), never an internal error or a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import shapely

from engine.errors import AnnotationError
from qupath_bridge.classes import ClassNames
from qupath_bridge.geojson_io import annotation_features, read_objects, write_features
from qupath_bridge.jobs.project import sort_objects
from qupath_bridge.slide_io import load_inputs

REPO = Path(__file__).resolve().parents[1]
SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]


def _fc(*features) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def _tumor(coords=SQUARE, **extra) -> dict:
    props = {"objectType": "annotation", "classification": {"name": "Tumor"}}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": props, **extra}  # fmt: skip


#: file content -> what the one error line must say
BAD_GEOJSON = {
    "geometry a list": (
        json.dumps(_fc({"type": "Feature", "geometry": [1, 2], "properties": {}})),
        'feature 0 has a "geometry" that is not a JSON object',
    ),
    "properties a list": (
        json.dumps(_fc({"type": "Feature", "geometry": _tumor()["geometry"], "properties": [1]})),
        'feature 0 has "properties" that are not a JSON object',
    ),
    "features a string": (
        '{"type": "FeatureCollection", "features": "abc"}',
        '"features" must be a list of GeoJSON Features, got a JSON string',
    ),
    "features an object": (
        '{"type": "FeatureCollection", "features": {"a": 1}}',
        '"features" must be a list of GeoJSON Features, got a JSON object',
    ),
    # Python's json reads 1e400 as inf; ours refuses it.
    "coordinate 1e400": (
        json.dumps(_fc(_tumor())).replace("100", "1e400", 1),
        "numeric (floating point) overflow",
    ),
    "coordinate NaN": (json.dumps(_fc(_tumor())).replace("100", "NaN", 1), "invalid JSON"),
    "100k-deep nesting": ("[" * 100_000 + "]" * 100_000, "nested more than 256 levels"),
    "deep inside a feature": (
        json.dumps(_fc(_tumor(coords="X"))).replace('"X"', "[" * 300 + "]" * 300),
        "nested more than 256 levels",
    ),
    "coordinates a string": (json.dumps(_fc(_tumor(coords="abc"))), "malformed geometry"),
    "ring of numbers": (json.dumps(_fc(_tumor(coords=[1, 2, 3]))), "malformed geometry"),
    "entry not a feature": ('[{"type": "Point"}]', "must be a GeoJSON Feature"),
    "empty file": ("", "is empty"),
    "truncated": (json.dumps(_fc(_tumor()))[:-5], "invalid JSON"),
    "trailing garbage": (json.dumps(_fc(_tumor())) + " x", "invalid JSON"),
    "not utf-8": (
        json.dumps(_fc(_tumor(), _tumor())).replace("Tumor", "Tum\udcffor", 1),
        "invalid JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GEOJSON))
def test_bad_geojson_is_one_clear_error(case, tmp_path):
    content, message = BAD_GEOJSON[case]
    p = tmp_path / "bad.geojson"
    p.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(AnnotationError, match="bad.geojson") as e:
        read_objects(p)
    assert message in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_utf8_bom_is_accepted(tmp_path):
    """Windows editors save a byte order mark; the file is still UTF-8 GeoJSON."""
    p = tmp_path / "bom.geojson"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_fc(_tumor())).encode())
    (obj,) = read_objects(p)
    assert obj.classification == "Tumor" and obj.geometry.area == 100 * 100


def test_brackets_and_escaped_quotes_in_strings_are_not_nesting(tmp_path):
    """The depth guard follows strings across read chunks (ijson reads 64 KiB at a time):
    brackets in a name are text, an escaped quote does not end the string."""
    name = 'a"' + "[" * 100_000 + "\\"  # in JSON: "a\"[[[...\\"
    feature = _tumor()
    feature["properties"]["name"] = name
    text = json.dumps(_fc(feature))
    assert '"a\\"[[[' in text and '[\\\\"' in text
    p = tmp_path / "names.geojson"
    p.write_text(text)
    (obj,) = read_objects(p)
    assert obj.name == name


def _cell_export(path, n_cells: int) -> None:
    """A QuPath-like export: two Tumor annotations, then ``n_cells`` cell detections, each
    with a nucleus geometry and measurements (as *Export objects as GeoJSON* writes them)."""
    cell = (
        '{{"type":"Feature","id":"c{i}","geometry":{{"type":"Polygon","coordinates":'
        "[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}},"
        '"properties":{{"objectType":"cell","classification":{{"name":"Tumor","color":[200,0,0]}},'
        '"nucleusGeometry":{{"type":"Polygon","coordinates":[[[{x},{y}],[{xn},{y}],[{xn},{yn}],'
        '[{x},{y}]]]}},"measurements":{{"Nucleus: Area":12.5,"Cell: Area":40.0}}}}}}'
    )
    with path.open("w") as f:
        f.write('{"type":"FeatureCollection","features":[')
        f.write(json.dumps(_tumor()) + ",")
        f.write(json.dumps(_tumor([[[500, 500], [900, 500], [900, 900], [500, 500]]])))
        for i in range(n_cells):
            x, y = (i % 1000) * 10, (i // 1000) * 10
            f.write(",")
            f.write(cell.format(i=i, x=x, y=y, x1=x + 8, y1=y + 8, xn=x + 4, yn=y + 4))
        f.write("]}")


def test_cell_export_streams_annotations_in_bounded_memory(tmp_path):
    """A 1.7 M-cell export took 5.5 GB to parse; now the file streams and only annotations
    are built. 100k cells (~38 MB of JSON; json.load alone peaks near 0.5 GB) must parse with
    the process growing by under 40 MB. Measured in a child process: its peak RSS is its own."""
    p = tmp_path / "cells.geojson"
    _cell_export(p, 100_000)
    assert p.stat().st_size > 35e6
    script = f"""
import json, resource, time
from qupath_bridge.geojson_io import read_objects
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
objects = read_objects({str(p)!r}, ("annotation",))
seconds = time.perf_counter() - t0
grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps([[o.object_type for o in objects], [o.geometry.area for o in objects],
                  grew_kib, seconds]))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    types, areas, grew_kib, seconds = json.loads(run.stdout)
    assert types == ["annotation", "annotation"] and areas == [10_000, 80_000]
    assert grew_kib < 40 * 1024, f"grew {grew_kib / 1024:.0f} MiB"
    assert seconds < 60, seconds  # ~2 s here, unloaded


def test_cells_are_kept_when_asked_for(tmp_path):
    p = tmp_path / "cells.geojson"
    _cell_export(p, 1_000)
    objects = read_objects(p)
    assert len(objects) == 1_002 and objects[-1].object_type == "cell"
    assert objects[-1].measurements == {"Nucleus: Area": 12.5, "Cell: Area": 40.0}


# --- --negative-class: one class rule in slide and project mode ---------------------------


def test_negative_class_takes_derived_classes_in_slide_mode(demo_slide, tmp_path):
    """`Ignore*` also matches `Ignore*: folds`, as it does in project mode."""
    folds = shapely.box(100, 100, 400, 300)
    feats = annotation_features(demo_slide.coarse, "Tumor") + annotation_features(
        folds, "Ignore*: folds"
    )
    gj = write_features(tmp_path / "c.geojson", feats)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(), None)
    assert item.negative is not None and item.negative.equals(folds)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(negative="Ignore*: folds"), None)
    assert item.negative.equals(folds)
    (item,) = load_inputs([demo_slide.path], [gj], ClassNames(negative="Ignore* x"), None)
    assert item.negative is None
    # Project mode, same objects, same rule.
    inp = sort_objects(read_objects(gj), ClassNames())
    assert inp.negative is not None and inp.negative.equals(folds)


# --- the command line: one `error:` line, exit 2, nothing written --------------------------


def _cli(*args):
    from click.testing import CliRunner

    from qupath_bridge.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error(r, message: str) -> None:
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.output and "internal error" not in r.output


@pytest.fixture(scope="module")
def coarse_file(demo_slide, tmp_path_factory):
    d = tmp_path_factory.mktemp("coarse")
    return write_features(d / "coarse.geojson", annotation_features(demo_slide.coarse, "Tumor"))


@pytest.mark.parametrize("case", list(BAD_GEOJSON))
def test_bad_geojson_through_the_slide_command(case, demo_slide, tmp_path, cache_dir):
    content, message = BAD_GEOJSON[case]
    p = tmp_path / "bad.geojson"
    p.write_bytes(content.encode("utf-8", "surrogateescape"))
    out = tmp_path / "out"
    r = _cli("slide", demo_slide.path, "--coarse", p, "--out", out, "--cache-dir", cache_dir, "-q")
    _one_error(r, message)
    assert not out.exists()


#: options click must refuse itself (its usage line + one error line, exit 2)
BAD_OPTIONS = [
    (["--tau", "banana"], "'banana': give 'auto' or 'off' or 'none' or a number from -1 to 1"),
    (["--tau", "2"], "--tau"),
    (["--patch-um", "inf"], "'inf': give 'auto' or a number above 0"),
    (["--patch-um", "0"], "--patch-um"),
    (["--patch-um", "-5"], "--patch-um"),
    (["--patch-um", "nan"], "--patch-um"),
    (["--stride-um", "0"], "--stride-um"),
    (["--mpp", "nan"], "--mpp"),
    (["--mpp", "-0.5"], "--mpp"),
    (["--target-mpp", "inf"], "--target-mpp"),
    (["--min-tissue", "1.5"], "--min-tissue"),
    (["--context", "0.5"], "--context"),
    (["--seed", "-1"], "--seed"),
    (["--max-patches", "0"], "--max-patches"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_are_usage_errors(args, message, demo_slide, coarse_file, tmp_path):
    r = _cli("slide", demo_slide.path, "--coarse", coarse_file, "--out", tmp_path / "o", *args)
    _one_error(r, message)
    assert "Invalid value for" in r.stderr and "--help" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args", [["--patch-um", "0"], ["--patch-um", "inf"], ["--eval-mpp", "nan"], ["--mpp", "0"]]
)
def test_bad_evaluate_options(args, demo_slide, coarse_file):
    r = _cli("evaluate", "--slide", demo_slide.path, "--truth", coarse_file,
             "--pred", coarse_file, *args)  # fmt: skip
    _one_error(r, args[0])


def test_number_type_passes_words_and_numbers_through():
    from qupath_bridge.cli import Number

    patch = Number(0, low_open=True, words=("auto",))
    assert patch.convert("AUTO", None, None) == "auto"  # the engine decides what auto means
    assert patch.convert("64", None, None) == 64.0 and patch.convert(128.0, None, None) == 128.0
    tau = Number(-1, 1, words=("auto", "off", "none"))
    assert tau.convert("0.6", None, None) == 0.6 and tau.convert("off", None, None) == "off"


def test_evaluate_benign_slide_prints_null_for_undefined_ratios(demo_slide, coarse_file, tmp_path):
    """Empty truth (a benign slide): nothing to find, so TPR is 0/0: null in JSON, exit 0."""
    from PIL import Image

    empty = write_features(tmp_path / "benign.geojson", [])
    w, h = demo_slide.size
    Image.new("L", (w // 8, h // 8), 0).save(tmp_path / "benign.png")
    for truth in (empty, tmp_path / "benign.png"):
        r = _cli("evaluate", "--slide", demo_slide.path, "--truth", truth, "--pred", coarse_file)
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert res["pixel"]["tpr"] is None and res["patch"]["tpr"] is None
        assert res["pixel"]["dice"] == 0.0 and res["pixel"]["tnr"] < 1
        assert res["truth_area_mm2"] == 0
    # Nothing predicted on a benign slide: a perfect score, PPV undefined.
    r = _cli("evaluate", "--slide", demo_slide.path, "--truth", empty, "--pred", empty)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["pixel"]["dice"] == 1.0 and res["pixel"]["ppv"] is None


# --- slides: damaged files, implausible pixel sizes, the patch budget ----------------------


def test_truncated_svs_is_called_damaged_not_unsupported(cmu_svs, tmp_path, coarse_file):
    from engine.errors import SlideError
    from engine.slide import Slide

    data = cmu_svs.read_bytes()
    for keep in (500_000, len(data) - 100_000):  # early: no directory; late: chain cut
        p = tmp_path / f"cut-{keep}.svs"
        p.write_bytes(data[:keep])
        with pytest.raises(SlideError, match="is damaged or truncated") as e:
            Slide(p)
        assert "Unsupported" not in str(e.value) and p.name in str(e.value)
    r = _cli("slide", p, "--coarse", coarse_file, "--out", tmp_path / "o")
    _one_error(r, f"Slide {p.name} is damaged or truncated")
    # A file that is not a slide at all is still "unsupported".
    (tmp_path / "notes.svs").write_text("not a slide")
    with pytest.raises(SlideError, match="Unsupported slide format"):
        Slide(tmp_path / "notes.svs")


def test_unreadable_tiles_in_a_valid_slide_are_one_error(demo_slide, coarse_file, tmp_path):
    """Level 0's tile data overwritten: the header and the thumbnail levels are fine, so the
    failure comes while patches are read, in the embedding thread."""
    import tifffile

    p = tmp_path / "damaged.tif"
    p.write_bytes(demo_slide.path.read_bytes())
    with tifffile.TiffFile(p) as t:
        tiles = list(zip(t.pages[0].dataoffsets, t.pages[0].databytecounts, strict=True))
    with p.open("r+b") as f:
        for offset, n in tiles:
            f.seek(offset)
            f.write(b"\xff" * n)
    out = tmp_path / "out"
    r = _cli("slide", p, "--coarse", coarse_file, "--out", out, "--patch-um", "64",
             "--encoder", "stain-texture", "--cache-dir", tmp_path / "cache", "-q")  # fmt: skip
    _one_error(r, "Slide damaged.tif is damaged: its pixels near")
    assert not out.exists()


def test_implausible_pixel_sizes_are_refused_up_front(demo_slide, coarse_file, tmp_path):
    import numpy as np

    from engine.errors import SlideError
    from engine.slide import Slide
    from engine.tiff import write_pyramidal_tiff

    # What a TIFF saved at 72 dpi records: 2.54 cm / 72 = 352.8 µm per pixel.
    p = write_pyramidal_tiff(tmp_path / "72dpi.tif", np.full((600, 800, 3), 200, np.uint8), 352.8)
    with pytest.raises(
        SlideError, match=r"records a pixel size of 352\.8 µm/px.*pass SlideInput\.mpp"
    ):
        Slide(p)
    assert Slide(p, mpp=0.5).mpp == 0.5  # the fix the message gives
    for mpp in ("1e8", "30", "0.01"):
        r = _cli("slide", demo_slide.path, "--coarse", coarse_file, "--out", tmp_path / "o",
                 "--mpp", mpp)  # fmt: skip
        _one_error(r, "is not a slide's pixel size")
    r = _cli("slide", p, "--coarse", coarse_file, "--out", tmp_path / "o")
    _one_error(r, "records a pixel size of 352.8")
    assert not (tmp_path / "o").exists()


def test_lattice_size_is_the_grid_make_grid_builds():
    import numpy as np

    from engine.patches import lattice_size, make_grid

    for w, h, size, stride in [(1000, 700, 128, 128), (1000, 700, 128, 64), (100, 50, 128, 128),
                               (1280, 1280, 128, 100), (129, 1, 128, 1)]:  # fmt: skip
        g = make_grid(w, h, np.ones((8, 8), bool), max(w, h) / 8, size, stride, 0.0)
        assert lattice_size(w, h, size, stride) == g.shape[0] * g.shape[1] == len(g)


def test_patch_budget_refuses_huge_grids_before_reading(demo_slide, coarse_file, tmp_path):
    # The demo slide is 3 x 2 mm: 0.5 µm patches make 25 M positions.
    common = ["--encoder", "stain-texture", "--cache-dir", tmp_path / "cache"]
    r = _cli("slide", demo_slide.path, "--coarse", coarse_file, "--out", tmp_path / "o",
             "--patch-um", "0.5", *common)  # fmt: skip
    _one_error(r, "make 25,165,824 grid positions, over the budget of 2,000,000")
    assert "--patch-um" in r.stderr and "--max-patches" in r.stderr
    r = _cli("slide", demo_slide.path, "--coarse", coarse_file, "--out", tmp_path / "o",
             "--max-patches", "100", "--patch-um", "128", *common)  # fmt: skip
    _one_error(r, "make 384 grid positions, over the budget of 100")
    r = _cli("evaluate", "--slide", demo_slide.path, "--truth", coarse_file, "--pred",
             coarse_file, "--patch-um", "0.5")  # fmt: skip
    _one_error(r, "over the budget of 2,000,000")
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


# --- checkpoints: tensors only, never code ------------------------------------------------


class _RunsCode:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_are_loaded_as_tensors_only(tmp_path):
    """The loader behind conch: and timm: (CONCH's own would unpickle on torch < 2.6)."""
    import torch

    from engine.encoders.plugins import _load_state_dict
    from engine.errors import EncoderError

    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _RunsCode(str(marker))}, bad)
    with pytest.raises(EncoderError, match="cannot read weights"):
        _load_state_dict(bad, "conch:bad.pt")
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, good)
    assert list(_load_state_dict(good, "conch:good.pt")) == ["module.w"]
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(EncoderError, match="holds no state dict"):
        _load_state_dict(tmp_path / "list.pt", "conch:list.pt")


def test_engine_names_settings_and_the_cli_names_flags():
    """A Python caller reads the setting it passed; the CLI's user reads the flag."""
    from engine.errors import SettingsError, SlideError
    from engine.patches import GridSettings, check_patch_budget
    from qupath_bridge.cli import _as_flags

    with pytest.raises(SettingsError) as bad:
        GridSettings(patch_um=64.0, stride_um=128.0).validate()
    engine_says = str(bad.value)
    assert (
        engine_says.startswith("GridSettings.stride_um must be positive")
        and "--" not in engine_says
    )
    assert _as_flags(engine_says).startswith("--stride-um must be positive")
    with pytest.raises(SlideError) as big:
        check_patch_budget(100_000, 100_000, 0.25, GridSettings(patch_um=1.0), "s.svs")
    assert "--" not in str(big.value)
    cli_says = _as_flags(str(big.value))
    for flag in ("--mpp overrides", "--patch-um, --stride-um", "a larger --max-patches"):
        assert flag in cli_says
    # only settings named in full are translated: a file called mpp.svs keeps its name
    assert _as_flags("mpp.svs: GridSettings.mpp 0") == "mpp.svs: --target-mpp 0"
