"""Exceptions a user can act on.

Every error the engine raises on bad input is a :class:`RefineError`; the CLI prints its
message as one line and exits non-zero. Messages say what was wrong and what to do, and name
settings as ``Class.field`` (``GridSettings.patch_um``; ``SlideInput.mpp`` for a slide's pixel
size), which the CLI turns into the flags that set them.
"""

from __future__ import annotations


class RefineError(Exception):
    """Base class: bad input or settings, explained for the user."""

    exit_code = 2


class SlideError(RefineError):
    """A slide is missing, unreadable, of an unsupported format or without resolution."""


class AnnotationError(RefineError):
    """Coarse annotations are missing, malformed or outside the slide."""


class EncoderError(RefineError):
    """An encoder spec is unknown, or its package or weights are missing."""


class TrainingDataError(RefineError):
    """Too few patches inside or outside the coarse annotation to learn from."""


class TissueError(RefineError):
    """No tissue was found on a slide."""


class SettingsError(RefineError, ValueError):
    """A setting is out of range or of the wrong kind (messages name the setting)."""


class ClusterError(RefineError):
    """A Dask scheduler cannot be reached, or its workers cannot run the job (no shared
    feature cache)."""
