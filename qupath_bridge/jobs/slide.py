"""The ``slide`` job: slides with GeoJSON annotations in, refined GeoJSON, overlay pictures and
a summary out.

Everything is computed before anything is written, and every file is written atomically, so
a failure leaves the output folder as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.features import ProgressFactory
from engine.pipeline import RefineResult, RefineSettings, SlideInput, refine
from qupath_bridge.classes import ClassNames
from qupath_bridge.outputs import check_out_dir, json_bytes, locked_out_dir, write_files
from qupath_bridge.slide_io import SlideFiles, load_inputs, output_names, render_outputs
from qupath_bridge.summaries import SlideRow, rounded, run_json, settings_dict, slide_rows

log = logging.getLogger("qupath_refine")


@dataclass(frozen=True)
class SlideOutput:
    """Where one slide's results were written."""

    slide: str
    geojson: str
    overlay: str


@dataclass(frozen=True)
class PseudoLabelCounts:
    """What ``--method prototype``'s pseudo-labels changed (None with ``--method mil``)."""

    major_prototypes: tuple[int, ...]
    outside_to_tumour: int
    inside_to_normal: int


@dataclass(frozen=True)
class SlideRun:
    """What a ``slide`` run did; :meth:`to_json` is its summary.json."""

    slides: tuple[SlideRow, ...]
    outputs: tuple[SlideOutput, ...]
    #: slides whose file names collided, as :func:`~qupath_bridge.slide_io.output_names` says
    name_collisions: tuple[dict[str, Any], ...]
    timings: dict[str, float]
    pseudo_labels: PseudoLabelCounts | None
    settings: RefineSettings
    coarse_class: str
    refined_class: str
    #: on a Dask cluster: the slides without outputs and why ({"slide", "error"}), and where
    #: it ran ({"address", "workers"}); neither is in a single-process summary.json
    failed: tuple[dict[str, str], ...] = ()
    dask: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = run_json(self)
        d["settings"] = settings_dict(self.settings)
        # "class" is summary.json's name for it (a keyword in Python)
        return {("class" if k == "coarse_class" else k): v for k, v in d.items()}


def refine_slides(
    slides: list[Path],
    coarse_files: list[Path],
    out_dir: Path,
    settings: RefineSettings,
    classes: ClassNames = ClassNames(),
    mpp: float | None = None,
    tiles: bool = True,
    progress: bool | ProgressFactory = True,
) -> SlideRun:
    """The ``slide`` command: refine slides together, write GeoJSON, pictures, summary."""
    check_out_dir(out_dir)  # before any work: a bad --out fails in seconds
    t0 = time.perf_counter()
    items = load_inputs(slides, coarse_files, classes, mpp)
    names, collisions = output_names([Path(i.path) for i in items])
    # Locked from here: a second run on this --out is refused before it embeds anything.
    with locked_out_dir(out_dir):
        result = refine(items, settings, progress=progress)
        seconds = time.perf_counter() - t0
        log.info(f"writing the results to {out_dir}")
        files, written = render_outputs(result, items, out_dir, classes, tiles, names=names)
        run = slide_run(result, items, seconds, written, collisions, settings, classes)
        files[out_dir / "summary.json"] = json_bytes(run.to_json())
        write_files(files)  # all or none, the summary included
    return run


def slide_run(
    result: RefineResult,
    items: list[SlideInput],
    seconds: float,
    written: list[SlideFiles],
    collisions: list[dict[str, Any]],
    settings: RefineSettings,
    classes: ClassNames,
) -> SlideRun:
    pseudo = result.pseudo
    return SlideRun(
        slides=slide_rows(result, items, seconds),
        outputs=tuple(
            SlideOutput(str(item.path), str(w.geojson), str(w.overlay))
            for item, w in zip(items, written, strict=True)
        ),
        name_collisions=tuple(collisions),
        timings=rounded(result.timings, 3),
        pseudo_labels=None
        if pseudo is None
        else PseudoLabelCounts(
            tuple(int(i) for i in pseudo.major.nonzero()[0]),
            pseudo.n_flipped_in,
            pseudo.n_flipped_out,
        ),
        settings=settings,
        coarse_class=classes.coarse,
        refined_class=classes.refined,
    )
