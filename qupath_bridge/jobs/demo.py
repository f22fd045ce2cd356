"""The ``demo`` job: a synthetic slide with a known truth, refined end to end."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.evaluation import evaluate
from engine.features import ProgressFactory
from engine.patches import GridSettings
from engine.pipeline import RefineSettings, refine
from engine.slide import Slide
from engine.synthetic import make_demo_slide
from qupath_bridge.classes import ClassNames
from qupath_bridge.geojson_io import annotation_features, write_features
from qupath_bridge.outputs import write_files, write_json
from qupath_bridge.slide_io import load_inputs, render_outputs
from qupath_bridge.summaries import Evaluation, SlideRow, rounded, slide_rows

log = logging.getLogger("qupath_refine")


@dataclass(frozen=True)
class DemoFiles:
    refined_geojson: str
    overlay: str
    coarse_geojson: str
    truth_geojson: str


@dataclass(frozen=True)
class DemoRun:
    """What the demo did; :meth:`to_json` is its summary.json."""

    slide: str
    coarse: Evaluation  # the coarse outline against the truth
    refined: Evaluation  # the refined one
    rows: tuple[SlideRow, ...]
    outputs: DemoFiles
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_demo(
    out_dir: Path,
    seed: int = 0,
    progress: bool | ProgressFactory = True,
    cache_dir: Path | None = None,
    device: str = "auto",
) -> DemoRun:
    """The ``demo`` command: a synthetic slide with a known truth, refined end to end."""
    t0 = time.perf_counter()
    log.info("writing a synthetic slide")
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = make_demo_slide(out_dir / "demo-slide.tif", seed=seed)
    coarse_path = write_features(
        out_dir / "demo-slide.coarse.geojson", annotation_features(demo.coarse, "Tumor")
    )
    truth_path = write_features(
        out_dir / "demo-slide.truth.geojson", annotation_features(demo.truth, "Tumor")
    )
    # Small patches so the small demo slide still has ~1,000 of them.
    settings = RefineSettings(
        grid=GridSettings(patch_um=64.0), cache_dir=cache_dir, device=device
    ).with_seed(seed)
    classes = ClassNames()
    items = load_inputs([demo.path], [coarse_path], classes, None)
    result = refine(items, settings, progress=progress)
    files, written = render_outputs(result, items, out_dir, classes, truths=[demo.truth])
    write_files(files)  # the refined GeoJSON and overlay: both or neither
    r = result.slides[0]
    with Slide(demo.path) as s:
        grid = GridSettings(patch_um=64.0)
        coarse_m = Evaluation(**evaluate(s, demo.truth, items[0].coarse, 2.0, grid))
        refined_m = Evaluation(**evaluate(s, demo.truth, r.regions, 2.0, grid))
    run = DemoRun(
        slide=str(demo.path),
        coarse=coarse_m,
        refined=refined_m,
        rows=slide_rows(result, items, time.perf_counter() - t0),
        outputs=DemoFiles(
            refined_geojson=str(written[0].geojson),
            overlay=str(written[0].overlay),
            coarse_geojson=str(coarse_path),
            truth_geojson=str(truth_path),
        ),
        timings=rounded(result.timings, 3),
    )
    write_json(out_dir / "summary.json", run.to_json())
    return run
