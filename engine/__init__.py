"""qupath-refine's engine: coarse tumour outlines to fine ones, knowing nothing of QuPath.

Stages, one module each: :mod:`~engine.slide` -> :mod:`~engine.patches` ->
:mod:`~engine.features` -> :mod:`~engine.prototypes` -> :mod:`~engine.pseudolabels` ->
:mod:`~engine.classifier` -> :mod:`~engine.regions`; :mod:`~engine.pipeline` runs them.
"""

from typing import TYPE_CHECKING, Any

from engine.errors import RefineError

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from engine.pipeline import RefineResult, RefineSettings, SlideInput, refine

__all__ = ["RefineError", "RefineResult", "RefineSettings", "SlideInput", "refine"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The pipeline pulls in torch and scikit-learn (seconds); load it on first use only, so
    # `qupath-refine --help` and bad-input errors stay instant.
    if name in ("RefineResult", "RefineSettings", "SlideInput", "refine"):
        from engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
