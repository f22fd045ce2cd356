"""The one module that talks to paquo (and through it to QuPath's Java classes).

Everything else in qupath_refine works on shapely geometries, :class:`QuPathObject` and
:class:`ImageRecord`. What needs no JVM (the project file's JSON, backups) is here too, as
plain functions, so it is testable without a QuPath install.

Facts this module relies on (checked against QuPath 0.4.4-0.7.0 core with paquo 0.9.0):

* paquo finds QuPath through ``PAQUO_QUPATH_DIR`` or ``.paquo.toml`` and raises at import of
  ``paquo.java`` when it finds none;
* neither QuPath nor paquo refuses a project written by a newer QuPath: they open it and stamp
  their own version on save, so we compare versions ourselves before writing;
* ``entry.save()`` silently skips writing when the slide cannot be opened, and
  ``readImageData`` returns an empty hierarchy when the data file is unreadable: we check both
  before writing, keep our own backup of the data file, and verify after saving;
* a derived class is ``QuPathPathClass("refined", parent=tumor)`` and its ``.id`` is the full
  ``"Tumor: refined"``; ``hierarchy.detections`` includes tiles; measurement values must be
  Python floats.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import shapely

from engine.files import replaced_atomically
from qupath_bridge.classes import REFINED_SUFFIX, probability_key, refined_class
from qupath_bridge.errors import DiskFullError, ProjectError
from qupath_bridge.export import WORK_DIR, ImageRecord
from qupath_bridge.geojson_io import QuPathObject
from qupath_bridge.outputs import os_reason

log = logging.getLogger("qupath_refine")

NO_QUPATH = (
    "paquo found no QuPath installation ({why}). Point it at one with the environment variable "
    "PAQUO_QUPATH_DIR=/path/to/QuPath (the folder holding QuPath's 'lib' or 'app'), or "
    "qupath_dir in a .paquo.toml; `paquo get_qupath --install-path DIR 0.6.0` downloads one. "
    "Without QuPath, use the QuPath menu script (it exports for us) or --geojson-only."
)


# --- project files (no JVM) ------------------------------------------------------------


def project_file(path: str | Path) -> Path:
    """``project.qpproj`` from the file or its folder; a :class:`ProjectError` otherwise."""
    p = Path(path)
    if p.is_dir():
        p = p / "project.qpproj"
    if p.suffix != ".qpproj":
        raise ProjectError(f"{path} is not a QuPath project: give a project.qpproj or its folder.")
    if not p.is_file():
        raise ProjectError(f"No QuPath project at {path}: {p.name} not found.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProjectError(f"{p} is not a readable QuPath project ({e}).") from None
    if not isinstance(doc, dict) or "images" not in doc:
        raise ProjectError(f"{p} is not a QuPath project (no image list).")
    return p


def work_dir(project: Path) -> Path:
    """``<project folder>/qupath-refine``: exports, results and backups live here."""
    return project_file(project).parent / WORK_DIR


def version_tuple(v: str | None) -> tuple[int, ...]:
    """``"0.6.0-rc2"`` -> (0, 6, 0): numeric release parts only, for comparisons."""
    parts = []
    for piece in (v or "0").split("-")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def image_metadata(project: Path) -> dict[str, dict[str, Any]]:
    """Per entry ID: width, height and pixel size (µm) as QuPath recorded them in
    project.qpproj (``serverBuilder.metadata``); None where QuPath has none."""
    doc = json.loads(project_file(project).read_text(encoding="utf-8"))
    out = {}
    for img in doc.get("images", []):
        md = (img.get("serverBuilder") or {}).get("metadata") or {}
        cal = md.get("pixelCalibration") or {}
        pw, ph = cal.get("pixelWidth") or {}, cal.get("pixelHeight") or {}
        um = pw.get("unit") in ("µm", "um", "microns") and pw.get("value")
        size = None
        if um:
            size = (float(pw["value"]) + float(ph.get("value", pw["value"]))) / 2
        eid = img.get("entryID")
        if eid is None:
            continue
        out[str(int(eid))] = {
            "width": int(md["width"]) if md.get("width") else None,
            "height": int(md["height"]) if md.get("height") else None,
            "pixel_um": size,
            "server": img.get("serverBuilder", {}).get("providerClassName"),
        }
    return out


def uri_to_path(uri: str | None) -> Path | None:
    """A local file path from a ``file:`` URI; None for anything else (OMERO, http, ...)."""
    if not uri:
        return None
    u = urlparse(uri)
    if u.scheme != "file":
        return None
    path = unquote(u.path)
    if len(path) > 2 and path[0] == "/" and path[2] == ":":  # file:///C:/... on Windows
        path = path[1:]
    return Path(path)


def backup_image_data(project: Path, entry_id: str, stamp: str) -> Path | None:
    """Copy ``data/<id>/data.qpdata`` and ``summary.json`` to
    ``qupath-refine/backup/<stamp>/<id>/``; returns the folder (None: nothing to back up)."""
    src = project_file(project).parent / "data" / entry_id
    files = [f for f in (src / "data.qpdata", src / "summary.json") if f.is_file()]
    if not files:
        return None
    dst = work_dir(project) / "backup" / stamp / entry_id
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for f in files:
            _copy_atomically(f, dst / f.name)
    except OSError:
        # a full disk: no partial copy may pass for a backup (repairs look for whole ones)
        shutil.rmtree(dst, ignore_errors=True)
        with suppress(OSError):
            dst.parent.rmdir()  # the run's folder, if this image's was its only one
        raise
    return dst


def prune_backups(project: Path, keep: int = 10) -> list[Path]:
    """Delete all but the ``keep`` newest backup folders (named by timestamp)."""
    root = work_dir(project) / "backup"
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    old = folders[:-keep] if keep > 0 else folders
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def restore_image_data(project: Path, entry_id: str, backup: Path) -> None:
    """Put a backup back (QuPath must not have the image open): copy the files over the
    entry's data folder and drop a stale ``data.qpdata.bkp``."""
    dst = project_file(project).parent / "data" / entry_id
    dst.mkdir(parents=True, exist_ok=True)
    for f in list(backup.iterdir()):  # a file may move out below
        try:
            _copy_atomically(f, dst / f.name)
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            # a full disk: move our copy back instead (a rename within the project needs no
            # space), so the data file is whole again; the backup folder then lacks it
            os.replace(f, dst / f.name)
    stale = dst / "data.qpdata.bkp"
    if stale.exists():
        stale.unlink()


def summary_object_count(project: Path, entry_id: str) -> int | None:
    """Objects QuPath counted at the image's last save (``summary.json``), if recorded."""
    f = project_file(project).parent / "data" / entry_id / "summary.json"
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        return int(doc["hierarchy"]["nObjects"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


# A complete data.qpdata is a Java serialization stream (magic AC ED 00 05) that QuPath (0.2 to
# 0.7, PathIO.writeImageDataSerialized) ends with writeObject("EOF"): TC_STRING, length 3, "EOF".
# A save killed midway leaves it empty or cut short, and QuPath's reader then loops forever on
# "Reached end of file unexpectedly", so we check the bytes before QuPath ever reads them.
QPDATA_MAGIC = b"\xac\xed\x00\x05"
QPDATA_END = b"t\x00\x03EOF"
QPDATA_END_REF = b"q\x00~"  # the same "EOF" written as a back-reference to an earlier copy


def qpdata_complete(path: Path) -> bool:
    """Whether ``path`` holds a whole QuPath data file (magic at the start, EOF marker at the
    end); False for a missing, empty or truncated file."""
    try:
        size = path.stat().st_size
        if size < len(QPDATA_MAGIC) + len(QPDATA_END):
            return False
        with path.open("rb") as f:
            head = f.read(len(QPDATA_MAGIC))
            f.seek(size - len(QPDATA_END))
            tail = f.read()
    except OSError:
        return False
    return head == QPDATA_MAGIC and (tail == QPDATA_END or tail.startswith(QPDATA_END_REF))


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """``e``, then what it was raised from or while handling, and so on (each once)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        yield e
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def os_error_in(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: itself, or what it was raised from or while handling."""
    return next((x for x in _chain(e) if isinstance(x, OSError)), None)


def disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` comes of a full disk: an OSError's errno, or the OS's own words in the
    message of any exception it was raised from (paquo turns a Java IOException into an
    OSError without an errno, raised from the Java one)."""
    words = ("No space left on device", "Disk quota exceeded")
    return any(
        (isinstance(x, OSError) and x.errno in NO_SPACE) or any(w in str(x) for w in words)
        for x in _chain(e)
    )


def entry_names(project: Path) -> dict[str, str]:
    """Entry ID -> image name, from project.qpproj (no JVM)."""
    doc = json.loads(project_file(project).read_text(encoding="utf-8"))
    out = {}
    for img in doc.get("images", []):
        if img.get("entryID") is not None:
            out[str(int(img["entryID"]))] = str(img.get("imageName") or img["entryID"])
    return out


def _copy_atomically(src: Path, dst: Path) -> None:
    with replaced_atomically(dst) as tmp:
        shutil.copy2(src, tmp)


def repair_image_data(
    project: Path, entry_id: str, name: str | None = None, fix: bool = True
) -> str | None:
    """Make sure QuPath can read the image's data file before anyone opens it.

    Nothing to do (None) when the data file is complete or the image was never saved. A
    missing, empty or truncated ``data.qpdata`` (a save that was killed) is replaced by the
    newest complete copy: QuPath's own ``data.qpdata.bkp`` (the state before that save), else
    our newest backup under ``qupath-refine/backup/``; the damaged file is kept under
    ``qupath-refine/damaged/``. Returns the one-line warning saying which; a
    :class:`ProjectError` naming the image when no complete copy exists, or (``fix`` False,
    a dry run) when one does, saying what a run would restore it from.
    """
    folder = project_file(project).parent / "data" / entry_id
    data, bkp = folder / "data.qpdata", folder / "data.qpdata.bkp"
    if qpdata_complete(data) or not (data.exists() or bkp.exists()):
        return None
    label = f"Image {name or entry_id!r} (ID {entry_id})"
    what = "is empty" if not data.exists() or data.stat().st_size == 0 else "is cut short"
    candidates = [(bkp, "QuPath's data.qpdata.bkp (the state before the interrupted save)")]
    root = work_dir(project) / "backup"
    if root.is_dir():
        for stamp in sorted((p.name for p in root.iterdir()), reverse=True):
            candidates.append(
                (root / stamp / entry_id / "data.qpdata", f"qupath-refine's backup of {stamp}")
            )
    source = next(((f, label_) for f, label_ in candidates if qpdata_complete(f)), None)
    if source is None:
        raise ProjectError(
            f"{label}: its data file {data} {what} (a save was interrupted) and no complete "
            "copy exists (no data.qpdata.bkp, no qupath-refine backup). Nothing was opened. "
            "Restore that file from your own backups, or remove the image from the project and "
            "add the slide again, then run again."
        )
    src, said = source
    if not fix:
        raise ProjectError(
            f"{label}: its data file {what} (an interrupted save); QuPath cannot read it. Run "
            f"without --dry-run to restore it from {said}."
        )
    kept = None
    try:
        if data.exists():
            kept = work_dir(project) / "damaged" / timestamp() / entry_id / "data.qpdata"
            kept.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(data, kept)
        _copy_atomically(src, data)
        if src.parent != folder and (src.parent / "summary.json").is_file():
            _copy_atomically(src.parent / "summary.json", folder / "summary.json")
    except OSError as e:
        # every copy is atomic: the damaged file and its whole copy are where they were
        kind = DiskFullError if disk_full(e) else ProjectError
        raise kind(
            f"{label}: its data file {what} (an interrupted save) and restoring it from {said} "
            f"failed ({os_reason(e)}). Nothing was opened; free some space, then run again."
        ) from None
    bkp.unlink(missing_ok=True)
    return f"{label}: data.qpdata {what} (an interrupted save); restored from {said}" + (
        f"; the damaged file is kept at {kept}" if kept else ""
    )


# --- project lock (no JVM) ---------------------------------------------------------------


@contextmanager
def project_lock(project: Path) -> Iterator[None]:
    """Hold ``qupath-refine/lock`` for the run: a second run on the same project gets one clear
    error naming the holder, instead of interleaving its writes with ours.

    The lock is an OS file lock (``filelock``), so the kernel releases it when its holder dies,
    even by SIGKILL; ``lock.json`` beside it names the holder (PID, start time, command) and is
    what a later run finds of a run that died: it takes over with a warning. A run that ends
    leaves neither file in the project.
    """
    from filelock import FileLock, Timeout

    root = work_dir(project)
    info = root / "lock.json"
    lock_file = root / "lock"
    lock = FileLock(lock_file, timeout=0)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        holder = _lock_holder(info)
        raise ProjectError(
            f"Another qupath-refine run ({holder}) is working on this project; wait for it to "
            f"finish or stop it, then run again. (Lock: {root / 'lock'})"
        ) from None
    except OSError as e:  # after Timeout, which is one (a TimeoutError)
        raise _unwritable(root, e) from None
    try:
        if info.exists():
            log.warning(
                "took over the project lock from a run that ended without releasing it (%s)",
                _lock_holder(info),
            )
        doc = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        doc["command"] = " ".join(sys.argv)
        try:
            with replaced_atomically(info) as tmp:
                tmp.write_text(json.dumps(doc), encoding="utf-8")
        except OSError as e:
            raise _unwritable(root, e) from None
        yield
    finally:
        info.unlink(missing_ok=True)
        # filelock keeps the file on Unix; a run stopped by bad input must leave the project as
        # it found it. Unlinked while still held: a run that locks the old inode after our
        # release finds it unlinked and does not count it as held (filelock checks st_nlink),
        # so two runs never both hold the lock.
        lock_file.unlink(missing_ok=True)
        lock.release()


def _unwritable(root: Path, e: OSError) -> ProjectError:
    kind = DiskFullError if disk_full(e) else ProjectError
    return kind(
        f"Cannot write to {root}: {os_reason(e)}. Nothing in the project was changed; free some "
        "space (or make the folder writable), then run again."
    )


def _lock_holder(info: Path) -> str:
    try:
        doc = json.loads(info.read_text(encoding="utf-8"))
        return f"PID {int(doc['pid'])}, started {doc.get('started', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown"


# --- paquo ------------------------------------------------------------------------------


MAIN_THREAD_STACK = "-Xss8m"
#: The JVM installs no handlers for SIGINT/SIGTERM/SIGHUP: without this it catches Ctrl-C and
#: ends the process with 130 before Python's interrupt path (message, restore from backup) runs.
PYTHON_SIGNALS = "-Xrs"


def jvm_options(current: list[str] | str | None) -> list[str]:
    """paquo's ``java_opts`` plus what we need, keeping the user's own choices.

    * ``-Xss8m``: the JVM, started in-process by JPype, caps the main thread's stack at
      ``-Xss`` (1 MB by default) with guard pages; native code that needs more there, e.g.
      OpenBLAS's parallel LU in the PCA of the prototypes on a few thousand patches, then dies
      with a segfault. A ``-Xss`` the user set is kept.
    * ``-Xrs``: signals reach Python (see :data:`PYTHON_SIGNALS`).
    """
    opts = shlex.split(current) if isinstance(current, str) else [str(o) for o in current or []]
    if not any(o.startswith("-Xss") for o in opts):
        opts.append(MAIN_THREAD_STACK)
    if PYTHON_SIGNALS not in opts:
        opts.append(PYTHON_SIGNALS)
    return opts


def configure_jvm() -> None:
    """Before paquo starts the JVM (at the first import of ``paquo.java``): set our options in
    paquo's settings, which ``paquo.java`` hands to the JVM."""
    if "paquo.java" in sys.modules:
        return
    from paquo._config import settings

    settings.set("java_opts", jvm_options(settings.get("java_opts")))


def _paquo() -> tuple[Any, Any, Any, Any, Any]:
    """Import paquo's project API, turning 'no QuPath' into one clear line."""
    try:
        configure_jvm()
        import paquo.java as pj
        from paquo.classes import QuPathPathClass
        from paquo.pathobjects import QuPathPathDetectionObject, QuPathPathTileObject
        from paquo.projects import QuPathProject
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        raise ProjectError(NO_QUPATH.format(why=str(e).strip() or type(e).__name__)) from None
    return pj, QuPathProject, QuPathPathClass, QuPathPathDetectionObject, QuPathPathTileObject


def qupath_version() -> str:
    pj = _paquo()[0]
    return str(pj.qupath_version)


def check_version(pfile: Path, theirs: str | None = None) -> None:
    """Refuse a project written by a newer QuPath than paquo's: writing would stamp the older
    version on it. ``theirs`` defaults to the version in project.qpproj."""
    if theirs is None:
        theirs = json.loads(pfile.read_text(encoding="utf-8")).get("version")
    ours = qupath_version()
    if version_tuple(theirs) > version_tuple(ours):
        raise ProjectError(
            f"{pfile.name} was written by QuPath {theirs}, newer than the QuPath {ours} paquo "
            "uses; writing would stamp the older version on it. Point PAQUO_QUPATH_DIR at "
            f"QuPath {theirs} or newer, or use the menu script from QuPath itself."
        )


@contextmanager
def open_project(path: Path, write: bool) -> Iterator[Any]:
    """A paquo project, read-only or read-write; never saved implicitly (we save per image)."""
    pfile = project_file(path)
    _, QuPathProject, *_ = _paquo()
    try:
        qp = QuPathProject(pfile, mode="r+" if write else "r")
    except Exception as e:  # paquo/Java raise many kinds for a damaged project
        raise ProjectError(f"QuPath cannot open {pfile}: {e}") from None
    if write:
        check_version(pfile, qp.version)
    try:
        yield qp
    finally:
        # Not qp.__exit__: that saves every image. We saved what we changed, image by image.
        pass


def list_images(qp: Any, project: Path) -> list[ImageRecord]:
    """Every image of the project with its slide path and QuPath's own metadata."""
    meta = image_metadata(project)
    out = []
    for e in qp.images:
        try:
            uri = e.uri
        except NotImplementedError:  # multi-file images (e.g. sparse servers)
            uri = None
        m = meta.get(str(e.entry_id), {})
        out.append(
            ImageRecord(
                name=e.image_name,
                id=str(e.entry_id),
                slide=uri_to_path(uri),
                pixel_um=m.get("pixel_um"),
                width=m.get("width"),
                height=m.get("height"),
            )
        )
    return out


def _entry(qp: Any, entry_id: str) -> Any:
    for e in qp.images:
        if str(e.entry_id) == entry_id:
            return e
    raise ProjectError(f"The project has no image with ID {entry_id}.")


def _object(o: Any, object_type: str) -> QuPathObject:
    pc = o.path_class
    color = None
    if pc is not None and pc.color:
        r, g, b = (int(c) for c in pc.color.to_rgb())
        color = (r, g, b)
    return QuPathObject(
        geometry=shapely.make_valid(o.roi),
        object_type=object_type,
        classification=pc.id if pc is not None else None,
        color=color,
        name=o.name,
        locked=bool(o.locked),
    )


def read_image_objects(qp: Any, entry_id: str) -> list[QuPathObject]:
    """Annotations and detections (tiles excluded) of one image, as saved in the project."""
    h = _entry(qp, entry_id).hierarchy
    objs = [_object(a, "annotation") for a in h.annotations]
    objs += [_object(d, "detection") for d in h.detections if not d.java_object.isTile()]
    return objs


@dataclass
class WriteReport:
    entry_id: str
    removed: int
    added: int
    backup: Path | None


def write_refined(
    qp: Any,
    project: Path,
    entry_id: str,
    regions: list[shapely.Polygon],
    tiles: list[tuple[shapely.Polygon, float]],
    coarse_class: str,
    color: tuple[int, int, int],
    stamp: str,
) -> WriteReport:
    """Replace an image's unlocked ``<coarse>: refined`` detections and tiles by ours.

    Touches nothing else: annotations, other detections, other classes and locked objects stay
    as they were. A backup of the data file is taken first and put back if anything fails.
    """
    _, _, _, Detection, Tile = _paquo()
    entry = _writable_entry(qp, project, entry_id)
    h = entry.hierarchy
    refined_id = refined_class(coarse_class)
    refined = _refined_path_class(qp, coarse_class, color)
    try:
        backup = backup_image_data(project, entry_id, stamp)
    except OSError as e:
        what = f"could not back up image {entry.image_name!r} before writing it"
        if disk_full(e):
            raise DiskFullError(f"The disk is full: {what}; it holds what it held.") from None
        raise ProjectError(
            f"{what.capitalize()} ({os_reason(e)}); it holds what it held."
        ) from None
    try:
        victims = [
            d
            for d in h.detections
            if d.path_class is not None and d.path_class.id == refined_id and not d.locked
        ]
        with h.no_autoflush():
            det = h.detections
            det -= victims
            new = [Detection.from_shapely(r, refined) for r in regions]
            key = probability_key(coarse_class)
            new += [Tile.from_shapely(b, refined, {key: float(p)}) for b, p in tiles]
            det |= new
        entry.save()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (which reach Python thanks to -Xrs) mid-save: put the data back.
        if backup is not None:
            try:
                restore_image_data(project, entry_id, backup)
            except OSError as e:  # the interrupt still ends the run; the next run repairs
                log.error("%s", _not_put_back(entry.image_name, backup, e))
        raise
    except Exception as e:
        if backup is not None:
            try:
                restore_image_data(project, entry_id, backup)
            except OSError as again:
                raise ProjectError(_not_put_back(entry.image_name, backup, again)) from None
        # a full disk stops the run (the next images would fail alike); any other failure
        # is this image's, and the others are still written
        said = (
            f"writing image {entry.image_name!r} failed ({e}); its data file was restored "
            f"from {backup}."
        )
        if disk_full(e):
            raise DiskFullError(f"The disk is full: {said}") from None
        raise ProjectError(said[0].upper() + said[1:]) from None
    return WriteReport(entry_id, len(victims), len(new), backup)


def _not_put_back(name: str, backup: Path, e: OSError) -> str:
    return (
        f"Writing image {name!r} failed and its backup could not be put back ({os_reason(e)}): "
        f"the next run restores it before opening the project (or copy {backup}'s files into "
        "the image's data folder yourself)."
    )


def _writable_entry(qp: Any, project: Path, entry_id: str) -> Any:
    """The image's project entry, or a :class:`ProjectError` when writing it would lose data."""
    entry = _entry(qp, entry_id)
    if not entry.is_readable():
        # paquo's save() would silently skip the write: say so instead.
        raise ProjectError(
            f"Image {entry.image_name!r}: QuPath cannot open its slide, so its data cannot be "
            "saved. Fix the slide path (File > Project > Check URIs in QuPath) and run again."
        )
    expected = summary_object_count(project, entry_id)
    if expected and len(entry.hierarchy) == 0:
        raise ProjectError(
            f"Image {entry.image_name!r}: its data file reads as empty but QuPath saved {expected} "
            "objects; not writing, so nothing is overwritten. Open the image in QuPath to check it."
        )
    return entry


def _refined_path_class(qp: Any, coarse_class: str, color: tuple[int, int, int]) -> Any:
    """The project's ``<coarse>: refined`` class, added (in ``color``) when it has none."""
    PathClass = _paquo()[2]
    refined_id = refined_class(coarse_class)
    refined = next((c for c in qp.path_classes if c.id == refined_id), None)
    if refined is None:
        parent = next((c for c in qp.path_classes if c.id == coarse_class), None)
        parent = parent or PathClass(coarse_class)
        refined = PathClass(REFINED_SUFFIX, parent=parent, color=color)
        qp.path_classes = [*qp.path_classes, refined]
    return refined


def save_project(qp: Any) -> None:
    """Write project.qpproj (the class list); image data were saved one by one."""
    qp.save(images=False)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
