"""The bridge's own errors, beside the engine's (:mod:`engine.errors`).

Each is a :class:`~engine.errors.RefineError`: the CLI prints its message as one line and
exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import RefineError


class ProjectError(RefineError):
    """A QuPath project, its images or the exchange folder cannot be used as they are."""


class OutputError(RefineError):
    """The output folder cannot be written (not a folder, read-only, full, in use); ``path``:
    the folder a write failed in, where one did."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class DiskFullError(ProjectError):
    """The disk filled up while a project run was writing: the message says what each image
    now holds (every data file is whole: as it was, or fully written). ``written``: images
    written into the project where the error was raised, beyond those the run knew of."""

    def __init__(self, message: str, written: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.written = written
