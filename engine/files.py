"""Temporary files beside their target, and the ones a killed process left behind.

Every file the engine writes (cache entries, exported ONNX models) is written to a temporary
name in the target's folder and renamed into place, so a reader sees a complete file or none.
A SIGKILL between the two leaves the temporary behind; the next writer in that folder removes
temporaries old enough that no live writer can still own them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

#: ``.<target name>.<pid>-<8 hex>.tmp``: what :func:`temp_beside` makes, and all the sweep takes
_TEMP = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")

#: A writer renames its temporary within seconds of creating it (the slow work, embedding,
#: happens before); an hour-old one has no live owner, even on a cache shared between hosts
#: where process ids say nothing.
STALE_AFTER_S = 3600.0


def temp_beside(target: Path, suffix: str = ".tmp") -> Path:
    """A temporary name in ``target``'s folder, unique across processes, hosts and calls."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def replaced_atomically(target: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary beside ``target`` to write; renamed over ``target`` when the block ends
    without an error, removed when it raises (a reader sees the old file or the new one)."""
    tmp = temp_beside(target, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporaries in ``folder`` that are older than ``older_than_s``; returns them.
    Never raises: a folder that cannot be listed or a file that another process removes first
    is left alone."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not _TEMP.match(entry.name):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and (
                    now - entry.stat(follow_symlinks=False).st_mtime > older_than_s
                ):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed
