"""Many slides on a Dask cluster: one task per slide, results as they complete.

The MIL route trains one model per slide, so a slide is a unit of work: a worker reads,
embeds, trains and draws its regions with the same engine functions a single process uses
(:func:`engine.pipeline.refine_one`), seeded by the slide's index in the run, so results
match a single-process run slide for slide. The caller (the driver) gets each
:class:`SlideOutcome` as soon as its slide is done and writes its outputs while others run.

Failures: a slide's own bad input (no tissue, too few patches) is its outcome's ``error``,
at once; any other exception is retried once by Dask (``retries``); a worker that dies
while refining a slide has the slide rescheduled by the scheduler up to its
``distributed.scheduler.allowed-failures`` (:data:`SCHEDULER_CONFIG` on the clusters
:func:`dask_client` starts), after which the slide is reported failed. Other slides go on.

``--method prototype`` runs in two phases around one step on the driver
(:mod:`engine.prototype_slides`): one task per slide reads, embeds into the shared feature
cache and returns the slide's local prototypes (small, not its features); the driver fits
the global prototypes from all of them, with the very function and seed a single process
uses, so they are identical to one process's for the same slides; then one task per slide
takes its pseudo-labels from them and trains a classifier on **that slide's patches alone**
(cross-fitted within the slide) and draws its regions. That classifier differs by design
from one process's, which pools every slide's patches: the summary calls it ``per slide``.
With ``patch_um="auto"`` a cheap task per slide first reads its thumbnail, and the run uses
the median side, as one process does. A slide that fails phase 1 is reported when phase 1
ends (the global prototypes are then fitted from the others'), one that fails phase 2 at once.

Needs ``pip install 'qupath-refine[dask]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engine.encoders import PLUGINS, build_encoder
from engine.errors import ClusterError, RefineError
from engine.features import default_cache_dir
from engine.pipeline import (
    RefineSettings,
    SlideInput,
    SlideResult,
    refine_one,
    with_shared_grid,
)
from engine.prototype_slides import (
    PER_SLIDE,
    SlideLocal,
    check_prototype_settings,
    grid_side,
    local_step,
    slide_step,
    with_local,
)
from engine.prototypes import global_prototypes

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("qupath_refine")

#: environment variable naming a scheduler, like ``--dask``
ENV_ADDRESS = "QUPATH_REFINE_DASK"
#: a failing slide is tried this many more times (an exception, or its worker dying)
RETRIES = 1

#: The scheduler settings of the clusters :func:`dask_client` starts (for a scheduler of your
#: own, put them in its Dask config): a slide whose worker dies is tried once more, not three
#: times. A worker's death also counts against slides queued on it behind the one it was
#: refining; with more than twice as many slides as worker threads Dask queues them on the
#: scheduler instead, and a saturation of 1.0 (not 1.1, rounded up: two) sends a worker one
#: slide per thread, so only the slide that was running is counted.
SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": RETRIES,
    "distributed.scheduler.worker-saturation": 1.0,
}

SlideTask = Callable[[SlideInput, RefineSettings, int], tuple[SlideResult, dict[str, float]]]
#: phase 1 of ``--method prototype`` (:func:`engine.prototype_slides.local_step`)
LocalTask = Callable[[SlideInput, RefineSettings, int], tuple[SlideLocal, dict[str, float]]]
#: told, on the driver, of each slide that phase 1 of ``--method prototype`` finished: its
#: number of patches (0: it failed), for the driver's progress bar
OnLocal = Callable[[int], None]


@dataclass(frozen=True)
class DaskSettings:
    """Where slides run: a scheduler's ``address``, or a local cluster of ``workers``
    processes (one thread each: the encoder and training already use the cores they get)."""

    address: str | None = None
    workers: int | None = None

    @classmethod
    def from_options(cls, address: str | None, workers: int | None) -> DaskSettings | None:
        """The settings ``--dask``/``--workers`` ask for (the environment's scheduler when
        neither is given), or None for a run in this process."""
        if address and workers:
            raise ClusterError(
                "Give --workers (a local cluster) or --dask (a running scheduler), not both."
            )
        if workers:
            return cls(workers=int(workers))
        address = address or os.environ.get(ENV_ADDRESS) or None
        return cls(address=address) if address else None

    @property
    def where(self) -> str:
        return self.address or f"a local cluster of {self.workers} processes"

    def summary(self) -> dict[str, Any]:
        """summary.json's ``dask``: where the run went, and that every slide had a classifier
        of its own (with --method prototype one process pools them; see the module)."""
        return {"address": self.address, "workers": self.workers, "classifier": PER_SLIDE}


#: the thread pools a worker's libraries size from the environment when they load: OpenMP
#: (torch), MKL, OpenBLAS, and onnxruntime's through ours (:func:`engine.encoders.runtime.
#: onnx_session`)
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "QUPATH_REFINE_THREADS",
)
#: Dask's default malloc setting for workers, left out of the workers we start (see below)
_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def worker_environ(workers: int) -> dict[str, str]:
    """What the nanny sets in each worker process of a local cluster before spawning it
    (``distributed.nanny.pre-spawn-environ``), in place of Dask's defaults, the main cause
    found of ``--workers 1`` costing 21% over one process (BENCHMARKS.md, issue 11):

    * each thread pool gets the worker's share of the cores (a value in this process's
      environment wins), where Dask gives OpenMP/MKL/OpenBLAS, so torch, one thread;
    * no ``MALLOC_TRIM_THRESHOLD_``: setting it turns off glibc's dynamic mmap threshold, so
      every large temporary (decoded tiles, encoder batches, MIL bags) became a fresh mmap,
      zero-filled page by page: 12x the page faults of one process, MIL training ~17%
      slower.
      A value in this process's environment still reaches the workers, which inherit it.
    """
    import dask

    share = str(max(1, (os.cpu_count() or 1) // workers))
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop(_MALLOC_TRIM, None)
    env.update({k: os.environ.get(k) or share for k in THREAD_VARS})
    return {k: str(v) for k, v in env.items()}


def _local_cluster_config(workers: int) -> dict[str, Any]:
    """Dask settings for a local cluster of ``workers`` processes, read as it starts: the
    scheduler's (:data:`SCHEDULER_CONFIG`), the workers' environment (:func:`worker_environ`),
    no statistical profiler sampling the slide's thread every 10 ms (nobody reads it), and a
    scheduler HTTP server with no pages: Dask starts one even without a dashboard, on the
    fixed port 8787, and a second run on the machine warned that the port was taken."""
    return {
        **SCHEDULER_CONFIG,
        "distributed.nanny.pre-spawn-environ": worker_environ(workers),
        "distributed.worker.profile.enabled": False,
        "distributed.scheduler.http.routes": [],
    }


@contextlib.contextmanager
def _environ_kept(keys: Iterable[str]) -> Iterator[None]:
    """This process's values of ``keys`` restored on exit: a nanny sets the workers'
    pre-spawn environment in the process that starts it, here the driver (a documented Dask
    caveat), which would run on with its workers' thread counts after the cluster is gone."""
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def dask_client(s: DaskSettings) -> Iterator[Client]:
    """A client on ``s.address``, or on a local cluster started (and closed) here. How long
    to try to connect is Dask's ``distributed.comm.timeouts.connect`` setting."""
    import dask
    from distributed import Client, LocalCluster

    if s.address:
        try:
            client = Client(s.address)
        except (OSError, ValueError, TypeError) as e:  # refused, timed out, malformed
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ClusterError(
                f"Cannot reach the Dask scheduler at {s.address}: {reason}"
            ) from None
        with client:
            yield client
        return
    config = _local_cluster_config(s.workers or 1)
    # the nanny also sets PYTHONHASHSEED (the same in every worker)
    with _environ_kept([*config["distributed.nanny.pre-spawn-environ"], "PYTHONHASHSEED"]):
        with dask.config.set(config):  # read as the scheduler and the nannies start, here
            cluster = LocalCluster(
                n_workers=s.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,  # no dashboard; the HTTP server: see the config
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as client:
            yield client


def _probe(cache_dir: str, token: str) -> str | None:
    """On a worker: None when it reads the driver's probe file in ``cache_dir`` and can
    write there too, else why not."""
    d = Path(cache_dir)
    try:
        if (d / f".probe-{token}").read_text() != token:
            return "its probe file holds something else"
        reply = d / f".probe-{token}-{os.getpid()}-{secrets.token_hex(4)}"
        reply.write_text(token)
        reply.unlink()
    except FileNotFoundError:
        return "the driver's probe file is not there: it is another folder on this worker"
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_shared_cache(client: Client, cache_dir: Path, wait_s: float = 60.0) -> None:
    """Every worker must read and write ``cache_dir`` as the driver sees it (the encoder
    export and the features live there): the driver writes a probe file and each worker
    reads it back. A :class:`ClusterError` names the first worker that cannot."""
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError:
        address = client.scheduler.address if client.scheduler is not None else "ADDRESS"
        raise ClusterError(
            f"No Dask worker joined the scheduler {address} within "
            f"{wait_s:.0f} s; start workers (dask worker {address})."
        ) from None
    token = secrets.token_hex(8)
    probe = Path(cache_dir) / f".probe-{token}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as e:
        raise ClusterError(f"Cannot write the feature cache {cache_dir}: {e.strerror}.") from None
    try:
        answers = client.run(_probe, str(cache_dir), token)
    finally:
        probe.unlink(missing_ok=True)
    for worker, why in sorted(answers.items()):
        if why:
            raise ClusterError(
                f"Dask worker {worker} cannot use the feature cache {cache_dir} ({why}). "
                "Every worker must reach it at the same path: give --cache-dir a shared "
                "folder (NFS, a cluster file system) mounted alike on the driver and workers."
            )


@dataclass
class SlideOutcome:
    """Slide ``index`` of the run: its result, or why it failed."""

    index: int
    item: SlideInput
    result: SlideResult | None = None
    error: str | None = None
    #: seconds per stage on the worker (read, embed, train, regions)
    timings: dict[str, float] = field(default_factory=dict)


def _run_slide(
    task: Callable[..., tuple[Any, dict[str, float]]],
    item: SlideInput,
    settings: RefineSettings,
    index: int,
    *extra: Any,
) -> tuple[Any, dict[str, float], str | None]:
    """On a worker. The slide's own bad input comes back as its error, not raised: Dask
    would retry it, and it would fail the same way again."""
    try:
        result, timings = task(item, settings, index, *extra)
    except RefineError as e:
        return None, {}, str(e)
    return result, timings, None


def _why_failed(e: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(e, KilledWorker):
        return (
            "its worker died while refining it, also on the retry (out of memory? see the "
            "workers' logs)"
        )
    return f"{type(e).__name__}: {e}"


def _each_slide(
    client: Client,
    task: Callable[..., tuple[Any, dict[str, float]]],
    items: dict[int, SlideInput],
    settings: RefineSettings,
    name: str,
    *extra: Any,
) -> Iterator[tuple[int, Any, dict[str, float], str | None]]:
    """``task(item, settings, index, *extra)`` on the workers for each slide ``index`` of
    ``items``, retried once; (index, result, timings, error) as each completes."""
    from distributed import as_completed

    futures = {
        client.submit(
            _run_slide,
            task,
            # a worker's working folder is not the driver's: paths as the driver sees them
            replace(item, path=Path(item.path).expanduser().absolute()),
            settings,
            k,
            *extra,
            key=f"{name}-{k}-{secrets.token_hex(4)}",
            retries=RETRIES,
            pure=False,
        ): k
        for k, item in items.items()
    }
    for fut in as_completed(futures):
        k = futures.pop(fut)
        try:
            result, timings, error = fut.result()
        except Exception as e:  # the retry failed too, or the worker died again
            result, timings, error = None, {}, _why_failed(e)
        fut.release()  # the result is the caller's now: free the worker's copy
        yield k, result, timings, error


def _prepared(settings: RefineSettings) -> RefineSettings:
    """``settings`` checked, with the feature cache as an absolute path (workers use the
    driver's folder, not their own default); the encoder exported there once."""
    settings.validate()
    cache_dir = Path(settings.cache_dir or default_cache_dir()).expanduser().absolute()
    settings = replace(settings, cache_dir=cache_dir)
    spec = settings.features.encoder.strip()
    if spec.partition(":")[0] not in {p.partition(":")[0] for p in PLUGINS}:
        # A built-in encoder is exported to the cache here, once, rather than by every worker
        # at the same time; an unknown spec fails here. A local model (timm:, hf:, ...) is
        # not built here: its weights would load on the driver for nothing.
        build_encoder(spec, cache_dir)
    return settings


def refine_on_cluster(
    client: Client,
    items: Sequence[SlideInput],
    settings: RefineSettings,
    task: SlideTask = refine_one,
    local_task: LocalTask = local_step,
    on_local: OnLocal | None = None,
) -> Iterator[SlideOutcome]:
    """Refine ``items`` on ``client``'s workers, one task per slide; yield each slide's
    outcome as it completes (not in input order). ``task`` does one slide on a worker with
    MIL; with ``--method prototype`` ``local_task`` is phase 1 and phase 2 is
    :func:`engine.prototype_slides.slide_step` (see the module's docstring), and
    ``on_local`` hears of each slide phase 1 finishes, before any outcome is yielded.

    Slide paths and the feature cache are made absolute here, so that workers use the
    driver's files and folder rather than their own default; check first that they share the
    cache (:func:`check_shared_cache`).
    """
    settings = _prepared(settings)
    if settings.method == "prototype":
        yield from _prototype_route(client, items, settings, local_task, on_local)
        return
    for k, result, timings, error in _each_slide(
        client, task, dict(enumerate(items)), settings, "refine-slide"
    ):
        yield SlideOutcome(k, items[k], result, error, timings)


@dataclass
class PhaseOne:
    """``--method prototype``'s first phase on a cluster, and the driver's step after it."""

    #: the run's settings: the feature cache absolute, ``patch_um`` resolved for all slides
    settings: RefineSettings
    #: fitted on the driver from the local prototypes of ``local``'s slides, in index order;
    #: None when no slide got through
    global_prototypes: npt.NDArray[np.float32] | None
    #: each slide that got through: its local prototypes and phase-1 stage timings
    local: dict[int, tuple[SlideLocal, dict[str, float]]]
    #: the slides that did not, each with its error
    failed: list[SlideOutcome]


def prototypes_on_cluster(
    client: Client,
    items: Sequence[SlideInput],
    settings: RefineSettings,
    local_task: LocalTask = local_step,
    on_local: OnLocal | None = None,
) -> PhaseOne:
    """Phase 1 of ``--method prototype`` on the workers (with ``patch_um="auto"``, after a
    thumbnail task per slide), then the global prototypes here: with every slide through,
    identical to :func:`engine.pipeline.refine`'s for the same slides and seed.
    ``on_local(patches)`` is called once per slide as its phase 1 ends (0 patches: it
    failed)."""
    settings = _prepared(settings)
    failed: list[SlideOutcome] = []
    todo = dict(enumerate(items))
    if settings.grid.is_auto:
        sides: dict[int, float] = {}
        for k, side, _, error in _each_slide(client, grid_side, todo, settings, "grid-side"):
            if side is None:
                failed.append(SlideOutcome(k, items[k], error=error))
                if on_local is not None:
                    on_local(0)  # through phase 1 too, without local prototypes
            else:
                sides[k] = side
        if not sides:
            return PhaseOne(settings, None, {}, failed)
        settings = with_shared_grid(settings, list(sides.values()))
        todo = {k: items[k] for k in sorted(sides)}
    check_prototype_settings(settings)
    local: dict[int, tuple[SlideLocal, dict[str, float]]] = {}
    for k, one, timings, error in _each_slide(
        client, local_task, todo, settings, "local-prototypes"
    ):
        if one is None:
            failed.append(SlideOutcome(k, items[k], error=error))
        else:
            local[k] = (one, timings)
        if on_local is not None:
            on_local(0 if one is None else one.patches)
    if not local:
        return PhaseOne(settings, None, {}, failed)
    ordered = [local[k][0].prototypes for k in sorted(local)]
    return PhaseOne(settings, global_prototypes(ordered, settings.prototypes), local, failed)


def _prototype_route(
    client: Client,
    items: Sequence[SlideInput],
    settings: RefineSettings,
    local_task: LocalTask,
    on_local: OnLocal | None,
) -> Iterator[SlideOutcome]:
    log.info(
        "--method prototype on a cluster: global prototypes shared by all slides, a "
        f"classifier {PER_SLIDE}"
    )
    one = prototypes_on_cluster(client, items, settings, local_task, on_local)
    yield from one.failed  # before phase 2: the others go on
    if one.global_prototypes is None:
        return
    todo = {k: items[k] for k in sorted(one.local)}
    for k, result, timings, error in _each_slide(
        client, slide_step, todo, one.settings, "refine-slide", one.global_prototypes
    ):
        local, phase1 = one.local[k]
        both = {stage: phase1.get(stage, 0.0) + timings.get(stage, 0.0) for stage in phase1}
        if result is not None:
            result = with_local(result, local)
        yield SlideOutcome(k, items[k], result, error, both)
