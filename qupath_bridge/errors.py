"""The bridge's own errors, beside the engine's (:mod:`engine.errors`).

Each is a :class:`~engine.errors.RefineError`: the CLI prints its message as one line and
exits non-zero.
"""

from __future__ import annotations

from engine.errors import RefineError


class ProjectError(RefineError):
    """A QuPath project, its images or the exchange folder cannot be used as they are."""


class OutputError(RefineError):
    """The output folder cannot be written (not a folder, read-only, full, in use)."""
