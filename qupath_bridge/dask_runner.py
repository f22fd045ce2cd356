"""The ``slide`` and project commands on a Dask cluster (``--workers N`` or ``--dask ADDRESS``).

Workers refine one slide each (:mod:`engine.cluster`); this process (the driver) reads the
GeoJSON, checks that the workers share the feature cache, and writes each slide's GeoJSON
and overlay as soon as its result arrives: the same files as a single-process run, all or
none per slide, then summary.json with the slides that failed and why. A project run's
images are written into the project by its own job as they arrive (:func:`images_on_dask`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from engine.cluster import (
    DaskSettings,
    SlideOutcome,
    check_shared_cache,
    dask_client,
    refine_on_cluster,
)
from engine.features import ProgressFactory, default_cache_dir
from engine.pipeline import STAGES, RefineResult, RefineSettings, SlideInput, SlideResult
from qupath_bridge.classes import ClassNames
from qupath_bridge.jobs.slide import SlideRun, slide_run
from qupath_bridge.outputs import check_out_dir, json_bytes, locked_out_dir, write_files
from qupath_bridge.slide_io import SlideFiles, load_inputs, output_names, render_outputs

log = logging.getLogger("qupath_refine")


def _not_refined(item: SlideInput, error: str | None) -> str:
    """Why a slide came back without a result, naming it once; logged as a warning."""
    why = str(error)
    why = why if item.label in why else f"{item.label}: {why}"
    log.warning(f"not refined: {why}")
    return why


class DriverBar:
    """The driver's progress: slides done, with patches/s over them. ``--method prototype``
    shows phase 1 first, as a bar of its own ("local prototypes", fed by
    :meth:`local_done`), then the slides' bar as soon as every slide is through phase 1."""

    def __init__(self, progress: bool | ProgressFactory, total: int, settings: RefineSettings):
        self.progress, self.total = progress, total
        self.phases = ["slides"]
        if settings.method == "prototype":
            self.phases.insert(0, "local prototypes")
        self.bar: Any = None

    def __enter__(self) -> DriverBar:
        self._next_phase()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def _next_phase(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        desc = self.phases.pop(0)
        if callable(self.progress):
            bar = self.progress(desc, self.total)
        else:
            bar = tqdm(total=self.total, desc=desc, unit="slide", disable=not self.progress)
        self.bar = bar.__enter__()
        self.t0, self.slides, self.patches = time.perf_counter(), 0, 0

    def _done(self, patches: int) -> None:
        self.bar.update(1)
        self.slides += 1
        self.patches += patches
        postfix = getattr(self.bar, "set_postfix_str", None)  # tqdm's, or a factory's bar's
        if postfix is not None:
            rate = self.patches / max(time.perf_counter() - self.t0, 1e-9)
            postfix(f"{rate:.0f} patches/s", refresh=False)

    def local_done(self, patches: int) -> None:
        """A slide finished phase 1 (``patches`` embedded or read from the cache; 0: failed)."""
        self._done(patches)
        if self.slides == self.total and self.phases:  # phase 2 starts now
            self._next_phase()

    def slide_done(self, o: SlideOutcome) -> None:
        """A slide's outcome arrived (refined or failed)."""
        if self.phases:  # not reached: every slide reports phase 1 (safety for the bar)
            self._next_phase()
        self._done(len(o.result.grid) if o.result is not None else 0)


def refine_slides_dask(
    slides: list[Path],
    coarse_files: list[Path],
    out_dir: Path,
    settings: RefineSettings,
    dask: DaskSettings,
    classes: ClassNames = ClassNames(),
    mpp: float | None = None,
    tiles: bool = True,
    progress: bool | ProgressFactory = True,
) -> SlideRun:
    """The ``slide`` command with the slides spread over Dask workers; ``failed`` lists the
    slides (slide, error) that have no outputs."""
    check_out_dir(out_dir)  # before any work: a bad --out fails in seconds
    t0 = time.perf_counter()
    items = load_inputs(slides, coarse_files, classes, mpp)
    names, collisions = output_names([Path(i.path) for i in items])
    cache_dir = Path(settings.cache_dir or default_cache_dir()).expanduser().absolute()
    log.info(f"refining {len(items)} slides on {dask.where}")
    with dask_client(dask) as client:
        check_shared_cache(client, cache_dir)
        with locked_out_dir(out_dir):
            done: dict[int, tuple[SlideResult, SlideFiles]] = {}
            failed: list[dict[str, str]] = []
            timings = dict.fromkeys(STAGES, 0.0)
            with DriverBar(progress, len(items), settings) as bar:
                for o in refine_on_cluster(client, items, settings, on_local=bar.local_done):
                    if o.result is None:
                        why = _not_refined(o.item, o.error)
                        failed.append({"slide": str(o.item.path), "error": why})
                    else:
                        one = RefineResult([o.result], None, None, {})
                        files, written = render_outputs(
                            one, [o.item], out_dir, classes, tiles, names=[names[o.index]]
                        )
                        write_files(files)  # this slide's files: all or none
                        done[o.index] = (o.result, written[0])
                        for stage, s in o.timings.items():
                            timings[stage] += s  # worker seconds, summed over slides
                    bar.slide_done(o)
            order = sorted(done)
            ok: list[SlideInput] = [items[k] for k in order]
            result = RefineResult([done[k][0] for k in order], None, None, timings)
            seconds = time.perf_counter() - t0
            run = slide_run(
                result, ok, seconds, [done[k][1] for k in order], collisions, settings, classes
            )
            run = replace(
                run,
                failed=tuple(failed),
                dask=dask.summary(),
            )
            write_files({out_dir / "summary.json": json_bytes(run.to_json())})
    return run


@contextmanager
def images_on_dask(
    items: list[SlideInput],
    settings: RefineSettings,
    dask: DaskSettings,
    progress: bool | ProgressFactory,
    timings: dict[str, float],
    failed: dict[int, str],
) -> Iterator[Iterator[tuple[int, SlideResult, float]]]:
    """A project run's images on Dask workers (see :func:`qupath_bridge.jobs.project.
    refine_and_write`): connects and checks the shared cache on entry, then gives each
    refined image as (index in ``items``, result, seconds) as it arrives, for the driver to
    write into the project. Workers get only the SlideInputs (slide paths, geometry): no
    project, no JVM. An image not refined goes into ``failed`` (index: why) with a warning;
    worker seconds per stage add up in ``timings``."""
    cache_dir = Path(settings.cache_dir or default_cache_dir()).expanduser().absolute()
    log.info(f"refining {len(items)} images on {dask.where}")
    with dask_client(dask) as client:
        check_shared_cache(client, cache_dir)

        def arrivals() -> Iterator[tuple[int, SlideResult, float]]:
            with DriverBar(progress, len(items), settings) as bar:
                for o in refine_on_cluster(client, items, settings, on_local=bar.local_done):
                    if o.result is None:
                        failed[o.index] = _not_refined(o.item, o.error)
                    else:
                        for stage, s in o.timings.items():
                            timings[stage] += s  # worker seconds, summed over images
                        # the slide's own read and embed, plus its own prototype steps,
                        # model and regions
                        own = ("prototypes", "train", "regions")
                        shared = sum(o.timings.get(k, 0.0) for k in own)
                        yield o.index, o.result, o.result.seconds + shared
                    bar.slide_done(o)

        yield arrivals()
