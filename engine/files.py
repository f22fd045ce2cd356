"""Temporary files beside their target, the ones a killed process left behind, and the
checked ``.npz`` entries of the caches (features, classifier scores).

Every file the engine writes (cache entries, exported ONNX models) is written to a temporary
name in the target's folder and renamed into place, so a reader sees a complete file or none.
A SIGKILL between the two leaves the temporary behind; the next writer in that folder removes
temporaries old enough that no live writer can still own them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("qupath_refine")

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


# --------------------------------------------------------------------------- cache entries

#: what reading a damaged ``.npz`` entry can raise (empty, truncated, not an archive, ...)
ENTRY_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """A digest of named arrays: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def reason(e: BaseException) -> str:
    """An exception in a few words, for a warning."""
    if isinstance(e, ValueError) and "pickle" in str(e):
        return "not a NumPy archive"  # np.load's long advice about unpickling does not apply
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def read_entry(
    path: Path,
    names: tuple[str, ...],
    check: Callable[[dict[str, np.ndarray]], None],
    what: str,
) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of the cache entry at ``path`` (written by :func:`write_entry`),
    or None when there is none. An entry that fails any check (unreadable, truncated, missing
    arrays, ``check`` raising ValueError, checksum) is deleted with one warning naming
    ``what`` cache, and None returned: a damaged cache must cost time, never a wrong result or
    a failed run."""
    try:
        st = path.stat()
    except OSError:
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in names}
            stored = str(z["checksum"])
        check(arrays)
        if checksum(arrays) != stored:
            raise ValueError("checksum mismatch")
    except ENTRY_ERRORS as e:
        log.warning(f"{what} entry {path} is damaged ({reason(e)}); recomputing it")
        _remove_if_same(path, st)
        return None
    return arrays


def _remove_if_same(path: Path, st: os.stat_result) -> None:
    """Delete a bad entry unless another process has just replaced it with a new one."""
    with contextlib.suppress(OSError):
        if os.path.samestat(path.stat(), st):
            path.unlink()


def write_entry(path: Path, arrays: dict[str, np.ndarray], what: str, lost: str) -> Path | None:
    """Store ``arrays`` (with their checksum) at ``path``; None, with a warning naming
    ``what`` cache and what is ``lost`` (the next run's work), when it cannot be written.
    A cache is optional: a full disk or a read-only folder must not cost the result. A unique
    temporary file renamed into place keeps concurrent writers and crashes from leaving a
    half-written entry under the name."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)  # what a killed writer left
        tmp = temp_beside(path)  # unique per process and call: writers never share one
        entries: dict[str, Any] = {"checksum": np.array(checksum(arrays)), **arrays}
        with open(tmp, "xb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: no temporary file outlives the run
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
        log.warning(
            f"could not write the {what} in {path.parent} ({reason(e)}); "
            f"the result is not affected, but {lost}"
        )
        return None
    return path
