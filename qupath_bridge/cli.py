"""The ``qupath-refine`` command line: a thin click layer over :mod:`qupath_bridge.jobs`."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click

from engine.encoders import BUILTIN, DEFAULT_ENCODER, OPTIONAL, PLUGINS
from engine.errors import RefineError

if TYPE_CHECKING:
    from engine.cluster import DaskSettings
    from engine.features import ProgressFactory
    from engine.pipeline import Method, RefineSettings
    from engine.regions import OutlineChoice
    from qupath_bridge.classes import ClassNames

log = logging.getLogger("qupath_refine")
F = TypeVar("F", bound=Callable[..., object])


class _LineProgress:
    """Progress as plain lines every 10%: for logs (QuPath's script console) where a
    carriage-return bar would be noise."""

    def __init__(self, desc: str, total: int) -> None:
        self.desc, self.total, self.done, self.next = desc, max(1, total), 0, 10
        self.t0 = time.perf_counter()

    def __enter__(self) -> _LineProgress:
        click.echo(f"{self.desc}: 0/{self.total}", err=True)
        return self

    def update(self, n: int) -> None:
        self.done += n
        pct = 100 * self.done // self.total
        if pct >= self.next:
            rate = self.done / max(1e-9, time.perf_counter() - self.t0)
            click.echo(f"{self.desc}: {self.done}/{self.total} ({pct}%, {rate:.0f}/s)", err=True)
            self.next = (pct // 10 + 1) * 10

    def __exit__(self, *exc: object) -> None:
        pass


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def _setup_logging(quiet: bool) -> None:
    log.handlers[:] = [_Handler()]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


#: engine settings (as engine messages name them) and the options that set them
_FLAGS = {
    "GridSettings.patch_um": "--patch-um",
    "GridSettings.stride_um": "--stride-um",
    "GridSettings.min_tissue": "--min-tissue",
    "GridSettings.max_patches": "--max-patches",
    "GridSettings.mpp": "--target-mpp",
    "SlideInput.mpp": "--mpp",
    "FeatureSettings.context": "--context",
    "PseudoLabelSettings.tau": "--tau",
}
_SETTING = re.compile("|".join(re.escape(name) + r"\b" for name in _FLAGS))


def _as_flags(message: str) -> str:
    """An engine message in the user's words: the settings it names become flags."""
    return _SETTING.sub(lambda m: _FLAGS[m.group(0)], message)


def _friendly(fn: F) -> F:
    """Bad input becomes one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> object:
        try:
            return fn(*args, **kwargs)
        # Bad input and settings (SettingsError included) are the project's own errors; a
        # plain ValueError is a bug like any other exception, below.
        except RefineError as e:  # engine messages name settings; the user typed flags
            _fail(_as_flags(str(e)), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written for unfinished slides", 130)
        except MemoryError:
            _fail("out of memory; try fewer slides per run or a larger --patch-um", 1)
        except Exception as e:  # a bug, not bad input: say so, keep the traceback on request
            if os.environ.get("QUPATH_REFINE_DEBUG"):
                raise
            _fail(
                f"internal error ({type(e).__name__}: {e}). Please report it; set "
                "QUPATH_REFINE_DEBUG=1 to see the traceback.",
                1,
            )

    return wrapper  # type: ignore[return-value]  # same signature: functools.wraps


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


#: columns of the per-slide / per-image summary tables
_AREAS = ("patches", "coarse_mm2", "refined_mm2")
SLIDE_COLUMNS = ["slide", "patch_um", *_AREAS, "regions", "relabelled", "outline", "cached"]
IMAGE_COLUMNS = ["image", "patch_um", *_AREAS, "relabelled", "outline", "seconds", "written"]


def _table(rows: Sequence[object], columns: list[str]) -> str:
    """``rows`` (result dataclasses or dicts) as a plain-text table of ``columns``."""
    cells = [[str(r[c] if isinstance(r, dict) else getattr(r, c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([head, "  ".join("-" * w for w in widths), *body])


ENCODER_HELP = (
    f"Feature encoder: {', '.join(BUILTIN + OPTIONAL)}, or a local model: "
    f"{', '.join(PLUGINS)}. "
    f"Default {DEFAULT_ENCODER}."
)


@dataclass(frozen=True)
class RefineOptions:
    """The options of every command that refines (:data:`common_options`), one field per
    option, named as click passes them; :meth:`settings` maps them onto the engine's."""

    class_name: str
    negative_class: str
    encoder: str
    mpp: float | None
    target_mpp: float
    patch_um: float | Literal["auto"]
    stride_um: float | None
    max_patches: int
    min_tissue: float
    context: float
    method: Method
    outline: OutlineChoice
    #: a cosine, "auto", "off"/"none" (relabelling off) or None (the method's default)
    tau: float | Literal["auto", "off", "none"] | None
    seed: int
    cache_dir: str | None
    device: str
    quiet: bool
    progress_lines: bool

    def settings(self) -> RefineSettings:
        """The engine settings these options ask for; a missing GPU fails here, before any
        slide is read. ``auto`` stays ``auto``: each process that runs slides (this one, or a
        Dask worker on another machine) resolves it to the GPU it has."""
        # Imported here: torch and scikit-learn make `--help` slow when imported at the top.
        from engine.devices import resolve_device
        from engine.features import FeatureSettings
        from engine.patches import GridSettings
        from engine.pipeline import RefineSettings

        s = RefineSettings.for_method(
            self.method,
            grid=GridSettings(
                mpp=self.target_mpp,
                patch_um=self.patch_um,
                stride_um=self.stride_um,
                min_tissue=self.min_tissue,
                max_patches=self.max_patches,
            ),
            features=FeatureSettings(encoder=self.encoder, context=self.context),
            cache_dir=Path(self.cache_dir) if self.cache_dir else None,
            device=self.device if self.device == "auto" else resolve_device(self.device),
        ).with_seed(self.seed)
        if self.tau is not None:
            tau = None if self.tau in ("off", "none") else self.tau
            s = replace(s, pseudolabels=replace(s.pseudolabels, tau=tau))
        if self.outline != "auto":
            s = replace(s, regions=replace(s.regions, outline=self.outline))
        return s

    def classes(self) -> ClassNames:
        from qupath_bridge.classes import ClassNames

        return ClassNames(self.class_name, self.negative_class or None)

    def progress(self) -> bool | ProgressFactory:
        """No progress, lines for logs, or bars."""
        if self.quiet:
            return False
        return _LineProgress if self.progress_lines else True


@dataclass(frozen=True)
class _Run:
    """What the common options decide, for any command that refines."""

    settings: RefineSettings
    classes: ClassNames
    mpp: float | None
    progress: bool | ProgressFactory


def _run(common: dict[str, Any]) -> _Run:
    """The common options (as click passes them) as settings; also sets up logging."""
    opts = RefineOptions(**common)
    _setup_logging(opts.quiet)
    return _Run(opts.settings(), opts.classes(), opts.mpp, opts.progress())


class Number(click.ParamType):
    """A finite number in a range, so click itself rejects ``inf``, ``nan``, ``0`` or ``-1``
    with its usage line and exit 2 (``click.FloatRange`` lets ``inf`` and ``nan`` through).
    ``words`` are accepted as they are (``auto``, ``off``), lower-cased."""

    name = "number"

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        words: tuple[str, ...] = (),
        integer: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.words = low, high, low_open, words
        self.integer = integer

    def _wanted(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            kind += f" from {self.low:g} to {self.high:g}"
        elif self.low is not None:
            kind += f" {'above' if self.low_open else 'of at least'} {self.low:g}"
        return " or ".join([*(repr(w) for w in self.words), kind])

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | int | str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = value
        else:
            text = str(value).strip().lower()
            if text in self.words:
                return text
            try:
                v = int(text) if self.integer else float(text)
            except ValueError:
                self.fail(f"{value!r}: give {self._wanted()}.", param, ctx)
        ok = math.isfinite(v)
        if self.low is not None:
            ok = ok and (v > self.low if self.low_open else v >= self.low)
        if self.high is not None:
            ok = ok and v <= self.high
        if not ok:
            self.fail(f"{value!r}: give {self._wanted()}.", param, ctx)
        return v


POSITIVE = Number(0, low_open=True)
#: numpy and torch take seeds from 0 to 2**32 - 1
SEED = Number(0, 2**32 - 1, integer=True)


class _Group(click.Group):
    """``qupath-refine PROJECT.qpproj ...`` is short for ``qupath-refine project PROJECT ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            first = Path(args[0])
            if first.suffix == ".qpproj" or first.is_dir():
                args = ["project", *args]
        return super().parse_args(ctx, args)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors (``--tau banana``, ``--patch-um inf``) as one ``error:`` line with exit
        2, like every other bad input, instead of click's usage block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            _fail(" ".join(e.format_message().split()) + hint, e.exit_code)
        except click.ClickException as e:
            _fail(" ".join(e.format_message().split()), e.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) else 0)  # an int is click's Exit code (--help: 0)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="qupath-refine")
def main() -> None:
    """Refine coarse tumour annotations into fine ones (attention MIL on pseudo bags, or the
    paper's prototype-guided pseudo-labels with --method prototype).

    \b
      qupath-refine PROJECT.qpproj     refine a QuPath project in place (needs QuPath for paquo)
      qupath-refine slide SLIDE ...    refine slides with GeoJSON annotations (no QuPath)
      qupath-refine evaluate ...       score an outline against the truth
      qupath-refine demo               a synthetic slide end to end: no QuPath, no data needed
    """


#: options more than one command takes, declared once so that the commands cannot drift
SEED_OPTION = click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
CACHE_DIR_OPTION = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Feature cache folder (default ~/.cache/qupath-refine).",
)
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
DEVICE_OPTION = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where encoders and training run: auto (a CUDA GPU when torch sees one, else "
    "Apple MPS, else the CPU), cpu, cuda, cuda:N or mps. GPUs need torch's CUDA build; "
    "ONNX encoders also need onnxruntime-gpu (README).",
)
NO_TILES_OPTION = click.option(
    "--no-tiles", is_flag=True, help="Write regions only, not per-patch tiles."
)


def out_option(help: str, **kw: Any) -> Callable[[F], F]:
    """``--out``: the folder a command writes its results to (``out_dir``)."""
    return click.option(
        "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help=help, **kw
    )


def _options(*opts: Callable[[F], F]) -> Callable[[F], F]:
    """The decorators ``opts`` as one, applied so that ``--help`` lists them in order."""

    def apply(fn: F) -> F:
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return apply


#: the options of every command that refines (slide, project)
common_options = _options(
    click.option(
        "--class",
        "class_name",
        default="Tumor",
        show_default=True,
        help="Class of the coarse annotations.",
    ),
    click.option(
        "--negative-class",
        default="Ignore*",
        show_default=True,
        help="Class of annotations over tissue that is not tumour: hard negatives.",
    ),
    click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, help=ENCODER_HELP),
    click.option(
        "--mpp",
        type=POSITIVE,
        default=None,
        help="Pixel size (µm) for slides that do not record one.",
    ),
    click.option(
        "--target-mpp",
        type=POSITIVE,
        default=0.5,
        show_default=True,
        help="Resolution patches are read at (µm/px; 0.5 is about 20x).",
    ),
    click.option(
        "--patch-um",
        type=Number(0, low_open=True, words=("auto",)),
        default="auto",
        show_default=True,
        help="Patch side in µm (128 µm = 256 px at 0.5 µm/px), or auto: per slide, about "
        "1,000 patches inside the coarse outline (16-128 µm).",
    ),
    click.option(
        "--stride-um",
        type=POSITIVE,
        default=None,
        help="Step between patches in µm; below --patch-um gives finer outlines.",
    ),
    click.option(
        "--max-patches",
        type=Number(1, integer=True),
        default=2_000_000,
        show_default=True,
        help="Most grid positions a slide may have; more is refused before any work "
        "(a wrong pixel size or a tiny --patch-um).",
    ),
    click.option(
        "--min-tissue",
        type=Number(0, 1),
        default=0.25,
        show_default=True,
        help="Tissue share a patch needs to be used.",
    ),
    click.option(
        "--context",
        type=Number(1),
        default=1.0,
        show_default=True,
        help="Also embed a window this many times the patch (e.g. 2); 1 = off.",
    ),
    click.option(
        "--method",
        type=click.Choice(["mil", "prototype"]),
        default="mil",
        show_default=True,
        help="mil: attention MIL on bags drawn inside/outside the coarse outline (best "
        "on the real-tissue benchmark); prototype: the paper's prototype pseudo-labels "
        "and patch classifier.",
    ),
    click.option(
        "--outline",
        type=click.Choice(["auto", "edit", "redraw"]),
        default="auto",
        show_default=True,
        help="auto: per slide, edit the coarse outline, or re-draw it inside itself where "
        "the scores say it was drawn loosely, left tumour out or closed over normal tissue "
        "(with --method mil); edit: "
        "always edit (keep the line, add confident tumour and, where the self-test passes, "
        "large tumour foci away from it, cut only what scores surely normal); redraw: "
        "always re-draw (outlines you know are rough).",
    ),
    click.option(
        "--tau",
        type=Number(-1, 1, words=("auto", "off", "none")),
        default=None,
        help="With --method prototype: cosine threshold for outside patches to become "
        "tumour: a number, 'auto' (set from the data) or 'off' (the default).",
    ),
    SEED_OPTION,
    CACHE_DIR_OPTION,
    DEVICE_OPTION,
    QUIET_OPTION,
    click.option(
        "--progress-lines",
        is_flag=True,
        help="Progress as plain lines (for logs) instead of bars.",
    ),
)


def dask_options(fn: F) -> F:
    """``--workers``/``--dask``: refine the slides on a Dask cluster (see engine.cluster)."""
    fn = click.option(
        "--dask",
        "dask_address",
        default=None,
        metavar="ADDRESS",
        help="Refine the slides on the workers of this Dask scheduler (tcp://host:8786; "
        "default: $QUPATH_REFINE_DASK). Workers must share the --cache-dir folder.",
    )(fn)
    return click.option(
        "--workers",
        type=Number(1, integer=True),
        default=None,
        help="Refine the slides on a local Dask cluster of this many processes, one slide "
        "each at a time (pip install 'qupath-refine[dask]').",
    )(fn)


@main.command("slide")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--coarse",
    "coarse_files",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="QuPath GeoJSON with the coarse annotations, once per slide, same order.",
)
@out_option("Folder for the refined GeoJSON, overlay pictures and summary.json.", required=True)
@NO_TILES_OPTION
@dask_options
@common_options
@_friendly
def slide_cmd(
    slides: tuple[Path, ...],
    coarse_files: tuple[Path, ...],
    out_dir: Path,
    no_tiles: bool,
    workers: int | None,
    dask_address: str | None,
    **common: Any,
) -> None:
    """Refine the coarse annotations of one or more slides.

    Several slides are refined in one run (each with its own MIL model; with --method
    prototype they share the global prototypes and one classifier, or with --workers/--dask
    a classifier per slide). Writes
    SLIDE.refined.geojson (detections of class '<class>: refined' plus tiles with p_<class>),
    SLIDE.overlay.png and summary.json into --out; import the GeoJSON in QuPath with
    File > Import objects.
    """
    from qupath_bridge.jobs.slide import refine_slides

    run = _run(common)
    dask = _dask_settings(workers, dask_address)
    if dask is None:
        refine = refine_slides
    else:
        from qupath_bridge.dask_runner import refine_slides_dask

        refine = functools.partial(refine_slides_dask, dask=dask)
    done = refine(
        list(slides),
        list(coarse_files),
        out_dir,
        run.settings,
        classes=run.classes,
        mpp=run.mpp,
        tiles=not no_tiles,
        progress=run.progress,
    )
    if done.slides:  # on a cluster, every slide may have failed
        click.echo(_table(done.slides, SLIDE_COLUMNS))
    click.echo("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in done.timings.items()))
    for o in done.outputs:
        click.echo(f"wrote {o.geojson}\n      {o.overlay}")
    click.echo(f"summary: {out_dir / 'summary.json'}")
    if done.failed:  # the other slides' outputs are written
        n, total = len(done.failed), len(slides)
        _fail(f"{n} of {total} slides not refined (why: the warnings above, summary.json)", 1)


def _dask_settings(workers: int | None, address: str | None) -> DaskSettings | None:
    """The cluster ``--workers``, ``--dask`` or $QUPATH_REFINE_DASK ask for, or None."""
    from engine.cluster import DaskSettings

    dask = DaskSettings.from_options(address, workers)
    if dask is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            _fail("--workers and --dask need Dask: pip install 'qupath-refine[dask]'")
    return dask


@main.command("project")
@click.argument("project", type=click.Path(path_type=Path))
@click.option(
    "--image",
    "images",
    multiple=True,
    help="Image name or ID to refine (repeatable); default: every image.",
)
@click.option(
    "--from-export",
    type=click.Path(path_type=Path),
    default=None,
    help="Read the annotations from the QuPath script's export folder, not via paquo.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be done; write nothing.")
@click.option("--skip-missing", is_flag=True, help="Go on without images whose slide is missing.")
@click.option(
    "--geojson-only",
    is_flag=True,
    help="Write results as GeoJSON under <project>/qupath-refine/results only; never "
    "touch the project's data (for machines without QuPath).",
)
@NO_TILES_OPTION
@dask_options
@common_options
@_friendly
def project_cmd(
    project: Path,
    images: tuple[str, ...],
    from_export: Path | None,
    dry_run: bool,
    skip_missing: bool,
    geojson_only: bool,
    no_tiles: bool,
    workers: int | None,
    dask_address: str | None,
    **common: Any,
) -> None:
    """Refine the coarse annotations of a QuPath project and write the result into it.

    All selected images are refined in one run (with --method prototype the global
    prototypes span the project). Per
    image, unlocked '<class>: refined' detections and tiles are replaced; annotations, other
    objects and locked objects are never touched, and each image's data file is backed up
    first under <project>/qupath-refine/backup/. Close the images in QuPath first, or use the
    QuPath menu script, which handles the open image itself. With --workers/--dask the
    images are refined on Dask workers (no QuPath there) and this process writes each into
    the project as its result arrives.
    """
    from qupath_bridge.jobs.project import ProjectOptions, ProjectPlan, refine_project

    run = _run(common)
    opts = ProjectOptions(
        images=tuple(images),
        from_export=from_export,
        dry_run=dry_run,
        skip_missing=skip_missing,
        geojson_only=geojson_only,
        mpp=run.mpp,
        tiles=not no_tiles,
    )
    dask = _dask_settings(workers, dask_address)
    report = refine_project(project, opts, run.settings, run.classes, run.progress, dask)
    if isinstance(report, ProjectPlan):
        click.echo("dry run, nothing written:")
        click.echo(
            _table(
                report.images,
                ["image", "patch_um", "patches", "inside", "hard_negative", "coarse_mm2", "mpp"],
            )
        )
        return
    if report.images:  # on a cluster, every image may have failed
        click.echo(_table(report.images, IMAGE_COLUMNS))
    click.echo(f"results: {report.results}")
    if report.backup:
        click.echo(
            f"backup of the data files before writing: {report.backup} "
            "(restore: copy a folder back over <project>/data/<id>/ with the image closed)"
        )
    if report.failed:  # on a cluster: the other images are written
        n, total = len(report.failed), len(report.failed) + len(report.images)
        _fail(f"{n} of {total} images not refined (why: the warnings above, summary.json)", 1)


@main.command("evaluate")
@click.option("--slide", "slide_path", required=True, type=click.Path(path_type=Path))
@click.option(
    "--truth",
    "truth_path",
    required=True,
    type=click.Path(path_type=Path),
    help="True outline: QuPath GeoJSON, or a mask image (non-zero = tumour) "
    "covering the whole slide.",
)
@click.option(
    "--pred",
    "pred_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Predicted outline: GeoJSON (e.g. SLIDE.refined.geojson or the coarse file).",
)
@click.option(
    "--class",
    "truth_class",
    default="Tumor",
    show_default=True,
    help="Class of the truth annotations.",
)
@click.option("--pred-class", default=None, help="Only objects of this class in --pred.")
@click.option("--mpp", type=POSITIVE, default=None, help="Pixel size if the slide lacks one.")
@click.option(
    "--eval-mpp",
    type=POSITIVE,
    default=2.0,
    show_default=True,
    help="Resolution of the pixel-level metrics (µm/px).",
)
@click.option(
    "--patch-um",
    type=POSITIVE,
    default=128.0,
    show_default=True,
    help="Patch size of the patch-level metrics.",
)
@_friendly
def evaluate_cmd(
    slide_path: Path,
    truth_path: Path,
    pred_path: Path,
    truth_class: str,
    pred_class: str | None,
    mpp: float | None,
    eval_mpp: float,
    patch_um: float,
) -> None:
    """Dice, IoU, F1, PPV, NPV, TPR, TNR and accuracy of --pred against --truth, as JSON."""
    import json

    from qupath_bridge.jobs.evaluate import evaluate_files

    _setup_logging(True)
    res = evaluate_files(
        slide_path, truth_path, pred_path, truth_class, pred_class, mpp, eval_mpp, patch_um
    )
    click.echo(json.dumps(_nan_to_null(res.to_json()), indent=2, allow_nan=False))


def _nan_to_null(v: object) -> object:
    """Ratios with a zero denominator are NaN in the engine and ``null`` in the JSON (plain
    JSON has no NaN), e.g. PPV on a benign slide where nothing is predicted."""
    if isinstance(v, dict):
        return {k: _nan_to_null(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_null(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@main.command("demo")
@out_option("Folder for the results.", default="qupath-refine-demo", show_default=True)
@SEED_OPTION
@CACHE_DIR_OPTION
@DEVICE_OPTION
@QUIET_OPTION
@_friendly
def demo_cmd(out_dir: Path, seed: int, cache_dir: str | None, device: str, quiet: bool) -> None:
    """Refine a synthetic slide with a known truth: no QuPath and no data needed.

    Writes the slide, its coarse and true outlines, the refined GeoJSON and an overlay
    picture (amber coarse, green refined, blue truth) and prints coarse vs refined metrics.
    """
    from engine.devices import resolve_device
    from qupath_bridge.jobs.demo import run_demo

    _setup_logging(quiet)
    s = run_demo(
        out_dir,
        seed,
        progress=not quiet,
        cache_dir=Path(cache_dir) if cache_dir else None,
        device=resolve_device(device),  # before the slide is written
    )
    rows = []
    for m in ("dice", "iou", "ppv", "tpr", "tnr", "accuracy"):
        rows.append(
            {
                "metric": m,
                "coarse": _fmt(s.coarse.pixel[m]),
                "refined": _fmt(s.refined.pixel[m]),
            }
        )
    click.echo(f"pixel-level inside tissue at {s.refined.pixel_um:.1f} µm/px:")
    click.echo(_table(rows, ["metric", "coarse", "refined"]))
    gain = s.refined.pixel["dice"] - s.coarse.pixel["dice"]
    click.echo(f"Dice {'+' if gain >= 0 else ''}{gain:.3f} over the coarse annotation")
    click.echo(f"coarse outline: {s.rows[0].outline}")
    for k, v in asdict(s.outputs).items():
        click.echo(f"{k}: {v}")


if __name__ == "__main__":
    main()
