"""Cases: one seeded draw of coarse annotations over a cohort at one noise level, on one grid
(the benchmark's own or the CLI default, :data:`GRIDS`), and the engine's run on a case, one
slide per call as ``qupath-refine slide`` runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import shapely

from benchmarks.cohorts import (
    PARTS,
    BenchmarkSpec,
    Cohort,
    cli_default_settings,
    slide_features,
    truth_labels_of,
)
from benchmarks.memory import PeakRSS
from benchmarks.slides import BenchSlide, simulate_coarse
from engine.encoders import build_encoder
from engine.errors import TrainingDataError
from engine.patches import GridSettings, PatchGrid
from engine.pipeline import RefineSettings, SlideInput, label_patches, refine, slide_grid_settings

Geometry: TypeAlias = shapely.Geometry
F32 = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- cases


#: the two grids every benchmark is measured on (issue 9): the benchmark's own patch side and
#: the CLI's default, as ``qupath-refine slide`` resolves it for each slide
GRIDS = ("benchmark", "default")
#: the methods measured at the CLI default grid
DEFAULT_GRID_METHODS = ("coarse", "ca", "lcmil", "engine")


@dataclass
class EngineSlide:
    """The engine's result on one slide, refined alone as ``qupath-refine slide`` does."""

    regions: Geometry
    outline: str  # the verdict the summary shows ("edited", "re-drawn (loose)", ...)
    grid: GridSettings  # the concrete grid the engine used for this slide


@dataclass
class Case:
    """One seeded draw of coarse annotations over a cohort at one noise level, on one grid.

    On the benchmark grid the patches are the cohort's; on the CLI default grid they are
    whatever grid the engine chose for each slide (the engine runs first, see
    :func:`make_case`), so every method there sees the patches the engine saw.
    """

    cohort: Cohort
    level: str
    seed: int
    coarse: list[Geometry]
    coarse_labels: list[npt.NDArray[np.int8]] = field(default_factory=list)
    grids: list[PatchGrid] = field(default_factory=list)
    features: list[F32] = field(default_factory=list)
    truth_labels: list[npt.NDArray[np.int8]] = field(default_factory=list)
    grid: str = "benchmark"
    coarse_seed: int = 0
    notes: list[str] = field(default_factory=list)
    engine_slides: list[EngineSlide] | None = None
    engine_seconds: float = 0.0
    engine_mib: float = 0.0

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum([len(g) for g in self.grids]).tolist()]

    def split(self, arr: np.ndarray) -> list[np.ndarray]:
        o = self.offsets
        return [arr[o[i] : o[i + 1]] for i in range(len(o) - 1)]

    @property
    def x(self) -> F32:
        return np.concatenate(self.features)

    @property
    def y(self) -> npt.NDArray[np.int8]:
        return np.concatenate(self.coarse_labels)

    @property
    def engine_settings(self) -> RefineSettings:
        """What ``qupath-refine slide --seed <seed>`` runs with on this case's grid."""
        c = self.cohort
        cache = c.settings.cache_dir or Path()
        base = c.settings if self.grid == "benchmark" else cli_default_settings(c.encoder, cache)
        return base.with_seed(self.seed)


def coarse_seed(spec: BenchmarkSpec, seed: int) -> int:
    """The coarse-annotation seed of a run's ``seed`` in the benchmark's part."""
    return seed + (PARTS[spec.part].coarse_seed if spec.part else 0)


def make_case(cohort: Cohort, level: str, seed: int, grid: str = "benchmark") -> Case:
    """Coarse outlines for every slide; on the CLI default grid the engine runs here, first,
    and the case takes each slide's patches from the grid it used."""
    cs = coarse_seed(cohort.spec, seed)
    coarse = [
        simulate_coarse(s.truth, s.tissue, level, cs, s.mpp, frame=s.size) for s in cohort.slides
    ]
    case = Case(cohort, level, seed, coarse, grid=grid, coarse_seed=cs)
    if grid == "benchmark":
        case.grids, case.features = list(cohort.grids), list(cohort.features)
        case.truth_labels = list(cohort.truth_labels)
    elif grid == "default":
        settings = case.engine_settings
        assert settings.cache_dir is not None  # cli_default_settings(..., cache) with a Path
        encoder = cohort.encoder_model or build_encoder(cohort.encoder.encoder, settings.cache_dir)
        for s, e in zip(cohort.slides, run_engine(case), strict=True):
            g, f, dt = slide_features(s, replace(settings, grid=e.grid), encoder)
            cohort.embed_seconds += dt
            case.grids.append(g)
            case.features.append(f)
            case.truth_labels.append(truth_labels_of(s, g))
    else:
        raise ValueError(f"grid is one of {GRIDS}, not {grid!r}")
    overlap = cohort.settings.min_coarse_overlap
    case.coarse_labels = [
        label_patches(SlideInput(s.path, geom), g, overlap)[0]
        for s, geom, g in zip(cohort.slides, coarse, case.grids, strict=True)
    ]
    return case


def engine_one_slide(
    slide: BenchSlide, coarse: Geometry, settings: RefineSettings
) -> tuple[EngineSlide, str | None]:
    """``qupath-refine slide SLIDE --coarse ... --seed S`` in process: one slide per call, as a
    user refines a slide. Where the CLI would stop with an error (too few patches inside or
    outside the outline), the user keeps the coarse outline: so does the result, with the
    error as its verdict and as the second value."""
    try:
        r = refine([SlideInput(slide.path, coarse, name=slide.name)], settings, progress=False)
    except TrainingDataError as e:
        grid = slide_grid_settings(SlideInput(slide.path, coarse, name=slide.name), settings)
        return EngineSlide(coarse, "error (coarse kept)", grid), str(e)
    s = r.slides[0]
    # Every outline the engine returns is valid and inside the image (issue 9): a breach
    # stops the benchmark (and CI's quick mode) instead of being scored.
    frame = shapely.box(0, 0, *slide.size)
    if not (shapely.is_valid(s.regions) and frame.buffer(1e-6).covers(s.regions)):
        raise AssertionError(f"{slide.name}: the engine returned invalid or out-of-frame regions")
    # the grid the engine resolved for this slide (``"auto"`` made concrete)
    return EngineSlide(s.regions, s.outline, s.grid_settings), None


def run_engine(case: Case) -> list[EngineSlide]:
    """The engine on every slide of the case, once (timed and memory-measured as a method)."""
    if case.engine_slides is None:
        settings = case.engine_settings
        out = []
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            for s, geom in zip(case.cohort.slides, case.coarse, strict=True):
                res, err = engine_one_slide(s, geom, settings)
                if err:
                    case.notes.append(f"engine on {s.name}: {err} -> coarse outline kept")
                out.append(res)
            case.engine_seconds = time.perf_counter() - t0
        case.engine_slides, case.engine_mib = out, mem.mib
    return case.engine_slides
