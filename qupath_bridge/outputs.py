"""An output folder that is never half-written: checked up front, locked, written as a set.

A run's files (each slide's GeoJSON and overlay, summary.json) are first written in full to
temporary files beside their targets, then renamed into place one after the other; if any
write fails, the temporaries are removed and the previous outputs stay as they were. The
renames are the only window in which a crash leaves old and new files side by side.

A lock file in the folder (``flock``, via :mod:`filelock`) keeps two runs from interleaving
their outputs: the second is refused at once. The kernel drops the lock when its process
dies, so a killed run's lock never blocks the next one; temporaries a killed run left behind
are removed by the next run that takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.files import temp_beside
from qupath_bridge.errors import OutputError

LOCK_NAME = ".qupath-refine.lock"
#: suffix of temporary files, so that the next run can tell its own leftovers from the user's
TMP_SUFFIX = ".qupath-refine.tmp"


def os_reason(e: OSError) -> str:
    """An OS error in a user's words."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or type(e).__name__


def check_out_dir(out: Path) -> None:
    """Fail in seconds, before any work, when ``out`` cannot become a writable folder.

    Creates nothing: the folder is made when the results are ready.
    """
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file; give a folder for the results.")
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(
                f"Cannot create the folder {out}: {existing} is a file. Choose another --out."
            )
        # os.access reports a read-only file system even to root.
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "folder" if existing == out else f"folder {out} in"
            raise OutputError(
                f"Cannot write the {what} {existing}: it is read-only or not yours. "
                "Choose another --out."
            )
    except OSError as e:
        raise OutputError(f"Cannot use --out {out}: {os_reason(e)}.") from None


@contextlib.contextmanager
def locked_out_dir(out: Path) -> Iterator[Path]:
    """Create ``out`` if needed and hold its lock; a second run on it gets an OutputError.

    On leaving, the lock file goes; a folder this call created is removed again if the run
    wrote nothing into it (a failed first run leaves no empty folder behind).
    """
    out = Path(out)
    created = []
    p = out
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create the folder {out}: {os_reason(e)}.") from None
    lock_path = out / LOCK_NAME
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        _remove_empty(created)
        raise OutputError(
            f"Another qupath-refine run is writing to {out} (it holds {lock_path}). Wait for "
            "it to finish, or choose another --out."
        ) from None
    except OSError as e:
        _remove_empty(created)
        raise OutputError(f"Cannot lock the folder {out}: {os_reason(e)}.") from None
    try:
        remove_stale_temps(out)
        yield out
    finally:
        # Unlinked while still held: a waiting peer sees the inode gone and retries.
        with contextlib.suppress(OSError):
            lock_path.unlink()
        lock.release()
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for p in created:  # innermost first
        try:
            p.rmdir()
        except OSError:
            return


def remove_stale_temps(folder: Path) -> list[Path]:
    """Temporary files a killed run left in ``folder`` (call with the folder's lock held)."""
    stale = [p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the renames are done, so that Ctrl-C cannot leave half
    old, half new outputs (SIGKILL cannot be held; the renames take microseconds)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda n, _f: caught.append(n)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


#: what a failed write tells the user to do (a project run has no --out: PROJECT_ADVICE)
OUT_ADVICE = "Free some space or choose another --out, then run again."
PROJECT_ADVICE = "Free some space (or make the folder writable), then run again."


def write_files(files: Mapping[Path, bytes], advice: str = OUT_ADVICE) -> list[Path]:
    """Write every file to a temporary beside its target, then rename them all into place.

    If any write fails (full disk, I/O error), every temporary is removed, the targets are
    untouched and an :class:`OutputError` says why.
    """
    temps: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = str(temp_beside(target, TMP_SUFFIX))
            temps.append((tmp, target))  # before it exists: a Ctrl-C right after still cleans
            # Not mkstemp: its files are private (0600); outputs get the user's umask.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the output
        with _signals_deferred():
            for tmp, target in temps:
                os.replace(tmp, target)
                renamed += 1
    except BaseException as e:  # Ctrl-C included: no temporary file outlives the run
        for tmp, _ in temps[renamed:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
        where = next(iter(files)).parent if files else "the output folder"
        done = (
            f"{renamed} of {len(temps)} files were replaced"
            if renamed
            else "nothing was changed there"
        )
        raise OutputError(
            f"Could not write the results to {where}: {os_reason(e)}; {done}. {advice}",
            Path(where) if files else None,
        ) from None
    return [target for _, target in temps]


def json_bytes(data: Any) -> bytes:
    """``data`` as the indented JSON our summaries and manifests are written in."""
    return (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")


def write_json(path: Path, data: Any, advice: str = OUT_ADVICE) -> Path:
    """One JSON file, written atomically (an :class:`OutputError` when it cannot be)."""
    write_files({Path(path): json_bytes(data)}, advice)
    return path
