"""The ``slide`` job: slides with GeoJSON annotations in, refined GeoJSON, overlay pictures and
a summary out.

Everything is computed before anything is written, and every file is written atomically, so
a failure leaves the output folder as it was.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from engine.features import ProgressFactory
from engine.pipeline import RefineResult, RefineSettings, SlideInput, refine
from qupath_bridge.classes import ClassNames
from qupath_bridge.outputs import check_out_dir, json_bytes, locked_out_dir, write_files
from qupath_bridge.slide_io import load_inputs, output_names, render_outputs
from qupath_bridge.summaries import settings_dict, slide_rows

log = logging.getLogger("qupath_refine")


def refine_slides(
    slides: list[Path],
    coarse_files: list[Path],
    out_dir: Path,
    settings: RefineSettings,
    classes: ClassNames = ClassNames(),
    mpp: float | None = None,
    tiles: bool = True,
    progress: bool | ProgressFactory = True,
    on_stage=None,
) -> dict:
    """The ``slide`` command: refine slides together, write GeoJSON, pictures, summary."""
    check_out_dir(out_dir)  # before any work: a bad --out fails in seconds
    t0 = time.perf_counter()
    items = load_inputs(slides, coarse_files, classes, mpp)
    names, collisions = output_names([Path(i.path) for i in items])
    # Locked from here: a second run on this --out is refused before it embeds anything.
    with locked_out_dir(out_dir):
        result = refine(items, settings, progress=progress, on_stage=on_stage)
        seconds = time.perf_counter() - t0
        (on_stage or log.info)(f"writing the results to {out_dir}")
        files, written = render_outputs(result, items, out_dir, classes, tiles, names=names)
        summary = slide_summary(result, items, seconds, written, collisions, settings, classes)
        files[out_dir / "summary.json"] = json_bytes(summary)
        write_files(files)  # all or none, the summary included
    return summary


def slide_summary(
    result: RefineResult,
    items: list[SlideInput],
    seconds: float,
    written: list[dict[str, Path]],
    collisions: list[dict],
    settings: RefineSettings,
    classes: ClassNames,
) -> dict:
    return {
        "slides": slide_rows(result, items, seconds),
        "outputs": [
            {"slide": str(item.path), **{k: str(v) for k, v in w.items()}}
            for item, w in zip(items, written, strict=True)
        ],
        "name_collisions": collisions,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "pseudo_labels": None
        if result.pseudo is None
        else {
            "major_prototypes": [int(i) for i in result.pseudo.major.nonzero()[0]],
            "outside_to_tumour": result.pseudo.n_flipped_in,
            "inside_to_normal": result.pseudo.n_flipped_out,
        },
        "settings": settings_dict(settings),
        "class": classes.coarse,
        "refined_class": classes.refined,
    }
