"""qupath-refine's engine: coarse tumour outlines to fine ones, knowing nothing of QuPath.

Stages, one module each: :mod:`~engine.slide` -> :mod:`~engine.patches` ->
:mod:`~engine.features` -> :mod:`~engine.prototypes` -> :mod:`~engine.pseudolabels` ->
:mod:`~engine.classifier` -> :mod:`~engine.regions`; :mod:`~engine.pipeline` runs them.
"""

from engine.errors import RefineError
from engine.pipeline import RefineResult, RefineSettings, SlideInput, refine

__all__ = ["RefineError", "RefineResult", "RefineSettings", "SlideInput", "refine"]
__version__ = "0.1.0"
