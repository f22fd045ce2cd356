"""Slide access: OpenSlide, pixel size, pyramid levels and QuPath's coordinate frame.

Coordinates everywhere in the engine are level-0 pixels in QuPath's frame. QuPath's OpenSlide
image server crops a slide to ``openslide.bounds-x/y/width/height`` when they exist (MRXS,
some NDPI), so QuPath's pixel (0, 0) is OpenSlide's (bounds-x, bounds-y); :class:`Slide`
applies the same offset on every read so that polygons drawn in QuPath land on the right
tissue.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
from PIL import Image

from engine.errors import SlideError

#: Formats OpenSlide reads, for error messages.
SUPPORTED_FORMATS = (
    "Aperio .svs, Hamamatsu .ndpi/.vms, Leica .scn, MIRAX .mrxs, Philips .tiff, Sakura .svslide, "
    "Ventana .bif, DICOM, Zeiss .czi and generic tiled pyramidal TIFF"
)
#: Pixel sizes (µm/px) a slide scan can have: 0.05 is beyond any optical scanner, 20 is a
#: 0.5x overview. Outside it the recorded size is wrong (a TIFF saved at 72 dpi records 352.8)
#: and every size computed from it would be too: a 14.7 M-patch grid, or a thumbnail of GBs.
MPP_RANGE = (0.05, 20.0)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class SlideInfo:
    """What the rest of the pipeline needs to know about a slide."""

    path: Path
    width: int  # level-0 pixels, QuPath frame
    height: int
    mpp: float  # micrometres per level-0 pixel
    offset: tuple[int, int]  # QuPath (0, 0) in OpenSlide level-0 coordinates
    fingerprint: str


def _import_openslide() -> ModuleType:
    try:
        import openslide
    except ImportError as e:  # pragma: no cover - a broken install, not bad input
        raise SlideError(
            f"OpenSlide could not be loaded ({e}); reinstall with "
            "`pip install openslide-python openslide-bin`."
        ) from e
    return openslide


#: Files up to this size are hashed whole; larger ones by evenly spaced blocks (see below).
FULL_HASH_LIMIT = 64 << 20
SAMPLE_BLOCKS = 1024
SAMPLE_BLOCK_SIZE = 16 << 10


def fingerprint_file(
    path: Path, properties: dict[str, str] | None = None, with_mtime: bool = False
) -> str:
    """A content key for caches: stable when the file moves, new when its pixels change.

    Files up to 64 MiB are hashed whole. A multi-GB slide cannot be read whole on every run,
    so its size, the first and last MiB (headers, tile tables) and 1024 evenly spaced 16 KiB
    blocks (16 MiB, well under a second) are hashed. A same-size edit that falls between
    the sampled blocks would go unseen, so slides also hash ``mtime_ns`` (``with_mtime``):
    moving a slide keeps it; a copy that resets it costs one re-embedding, never a wrong
    result. Model files (plugins) leave it out so a copy keeps its key. OpenSlide's
    quickhash (lowest level and properties) is mixed in when the file has one.
    """
    h = hashlib.sha256()
    st = path.stat()
    size = st.st_size
    h.update(f"{size}".encode())
    if with_mtime:
        h.update(f"/{st.st_mtime_ns}".encode())
    quick = (properties or {}).get("openslide.quickhash-1")
    if quick:
        h.update(quick.encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            step = (size - SAMPLE_BLOCK_SIZE) / (SAMPLE_BLOCKS - 1)
            for k in range(SAMPLE_BLOCKS):
                f.seek(round(k * step))
                h.update(f.read(SAMPLE_BLOCK_SIZE))
            f.seek(-(1 << 20), 2)
            h.update(f.read(1 << 20))
    return ("qh1-" if quick else "sha-") + h.hexdigest()[:32]


class Slide:
    """A whole-slide image opened with OpenSlide, read in QuPath's frame.

    Parameters
    ----------
    path:
        Slide file.
    mpp:
        Pixel size in µm to use when the file does not record one (or to override it).
    qupath_size:
        The image's (width, height) as QuPath knows it. QuPath's Bio-Formats server does not
        crop to OpenSlide's bounds; when QuPath's size is the uncropped one, no offset applies.
    """

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        qupath_size: tuple[int, int] | None = None,
    ) -> None:
        openslide = _import_openslide()
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"Slide not found: {self.path}")
        if not self.path.is_file():
            raise SlideError(f"Slide path is not a file: {self.path}")
        if self.path.stat().st_size == 0:
            raise SlideError(f"Slide {self.path} is empty (0 bytes): copy it again.")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            damage = _tiff_damage(self.path)
            if damage:
                raise SlideError(
                    f"Slide {self.path.name} is damaged or truncated ({damage}); copy it again "
                    "from the scanner or archive."
                ) from None
            raise SlideError(
                f"Unsupported slide format: {self.path.name}. OpenSlide reads {SUPPORTED_FORMATS}; "
                "convert other images to a tiled pyramidal TIFF (e.g. with QuPath's "
                "'Export as OME-TIFF' or `vips tiffsave --tile --pyramid`)."
            ) from None
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(f"Cannot read slide {self.path}: {e}") from None
        props = dict(self._osr.properties)
        self.properties = props
        self.mpp = self._resolve_mpp(props, mpp)
        bx = int(props.get("openslide.bounds-x", 0))
        by = int(props.get("openslide.bounds-y", 0))
        w0, h0 = self._osr.dimensions
        self.offset = (bx, by)
        self.width = int(props.get("openslide.bounds-width", w0 - bx))
        self.height = int(props.get("openslide.bounds-height", h0 - by))
        if qupath_size is not None and tuple(qupath_size) == (w0, h0) and (bx or by):
            self.offset, self.width, self.height = (0, 0), w0, h0
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)

    def _resolve_mpp(self, props: dict[str, str], override: float | None) -> float:
        lo, hi = MPP_RANGE
        if override is not None:
            if not (lo <= override <= hi):
                raise SlideError(
                    f"SlideInput.mpp {override:g} is not a slide's pixel size: give µm per pixel "
                    f"at full resolution, from {lo:g} to {hi:g} (e.g. 0.25 for 40x or 0.5 for 20x "
                    "scans)."
                )
            return float(override)
        try:
            mx = float(props["openslide.mpp-x"])
            my = float(props.get("openslide.mpp-y", mx))
        except (KeyError, ValueError):
            raise SlideError(
                f"Slide {self.path.name} records no pixel size; pass SlideInput.mpp (µm per pixel "
                "at full resolution, e.g. 0.25 for 40x or 0.5 for 20x scans)."
            ) from None
        # QuPath stores one value per axis; square pixels are the norm and all we need.
        mpp = (mx + my) / 2
        if not (lo <= mpp <= hi):  # also catches 0, negative, inf and NaN
            raise SlideError(
                f"Slide {self.path.name} records a pixel size of {mpp:g} µm/px, outside the "
                f"{lo:g}-{hi:g} µm/px of slide scans (a TIFF saved at 72 dpi records 352.8): "
                "pass SlideInput.mpp with the scan's real pixel size (e.g. 0.25 for 40x, 0.5 for "
                "20x)."
            )
        return mpp

    @property
    def info(self) -> SlideInfo:
        return SlideInfo(
            path=self.path.resolve(),
            width=self.width,
            height=self.height,
            mpp=self.mpp,
            offset=self.offset,
            fingerprint=fingerprint_file(self.path, self.properties, with_mtime=True),
        )

    def best_level(self, downsample: float) -> int:
        """The coarsest pyramid level that is still at least as fine as ``downsample``."""
        # A little slack so that 0.499 µm/px files count as 0.5 µm/px.
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return max(ok) if ok else 0

    def read_patches(
        self, xy: npt.NDArray[np.floating], size: float, out_px: int
    ) -> npt.NDArray[np.uint8]:
        """Read square regions at level-0 top-left ``xy`` (QuPath frame) of side ``size``.

        Each region is read from the coarsest adequate level and resized to ``out_px``.
        Areas outside the slide (or transparent in it) come back white, like glass.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        out = np.empty((len(xy), out_px, out_px, 3), dtype=np.uint8)
        ds_wanted = size / out_px
        level = self.best_level(ds_wanted)
        ds = self.level_downsamples[level]
        read_px = max(1, round(size / ds))
        for i, (x, y) in enumerate(xy):
            loc = (int(round(x)) + self.offset[0], int(round(y)) + self.offset[1])
            region = self._read_region(loc, level, (read_px, read_px))
            out[i] = _to_rgb(region, out_px)
        return out

    def _read_region(self, loc: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """OpenSlide's read_region; a tile it cannot decode is a damaged file, said as such."""
        try:
            return self._osr.read_region(loc, level, size)
        except _import_openslide().OpenSlideError as e:
            raise SlideError(
                f"Slide {self.path.name} is damaged: its pixels near x {loc[0]}, y {loc[1]} "
                f"(level {level}) cannot be read ({e}). Copy it again from the scanner or "
                "archive; if QuPath shows it fine, export it as OME-TIFF from QuPath."
            ) from None

    def thumbnail(self, mpp: float) -> tuple[npt.NDArray[np.uint8], float]:
        """An RGB thumbnail of the QuPath frame at about ``mpp`` µm/px.

        Returns the image and its exact downsample factor relative to level 0.
        """
        ds = max(1.0, mpp / self.mpp)
        tw, th = max(1, round(self.width / ds)), max(1, round(self.height / ds))
        level = self.best_level(ds)
        lds = self.level_downsamples[level]
        lw = math.ceil(self.width / lds)
        lh = math.ceil(self.height / lds)
        # Read the frame in strips so a thumbnail of a big level never needs one huge buffer.
        thumb = Image.new("RGB", (tw, th), (255, 255, 255))
        strip = max(1, (1 << 24) // max(1, lw * 4))
        for y0 in range(0, lh, strip):
            h = min(strip, lh - y0)
            region = self._read_region(
                (self.offset[0], self.offset[1] + round(y0 * lds)), level, (lw, h)
            )
            rgb = Image.fromarray(_to_rgb_array(region))
            ty0 = round(y0 * lds / ds)
            ty1 = max(ty0 + 1, round((y0 + h) * lds / ds))
            thumb.paste(rgb.resize((tw, ty1 - ty0), Image.Resampling.BOX), (0, ty0))
        return np.asarray(thumb), self.width / tw

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tiff_damage(path: Path) -> str | None:
    """Why a TIFF-based file (SVS, NDPI, SCN, BIF, TIFF) that OpenSlide refused looks damaged
    rather than of an unsupported kind, or None: its image directories or data lie past the
    end of the file, which is what an interrupted copy leaves."""
    import logging

    import tifffile

    with path.open("rb") as f:
        if f.read(4) not in _TIFF_MAGIC:
            return None
    size = path.stat().st_size
    problems: list[str] = []

    class _Collect(logging.Handler):  # tifffile reports broken offsets as log warnings
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(record.getMessage())

    tlog = logging.getLogger("tifffile")
    handler, propagate = _Collect(), tlog.propagate
    tlog.addHandler(handler)
    tlog.propagate = False
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            ends = [
                o + n for p in pages for o, n in zip(p.dataoffsets, p.databytecounts, strict=True)
            ]
    except Exception as e:  # any parse failure of a file with a TIFF header is damage
        return f"its TIFF structure cannot be read: {e}"
    finally:
        tlog.removeHandler(handler)
        tlog.propagate = propagate
    if not pages:
        return f"no image directory can be read in its {size:,} bytes"
    if ends and max(ends) > size:
        return f"image data reaches byte {max(ends):,} of a {size:,}-byte file"
    if any("offset" in m for m in problems):
        return f"an image directory lies past the end of its {size:,} bytes"
    return None


def _to_rgb_array(region: Image.Image) -> npt.NDArray[np.uint8]:
    """RGBA from OpenSlide (premultiplied, transparent outside tissue scans) to RGB on white."""
    a = np.asarray(region)
    if a[..., 3].min() == 255:
        # Opaque (nearly every patch on tissue): premultiplied RGB is the colour itself; the
        # compositing below cost 0.2 ms a patch on the read thread.
        return np.ascontiguousarray(a[..., :3])
    rgb = a[..., :3].astype(np.uint16)
    alpha = a[..., 3:4].astype(np.uint16)
    # OpenSlide returns premultiplied alpha: composite over white.
    return (rgb + (255 - alpha)).clip(0, 255).astype(np.uint8)


def _to_rgb(region: Image.Image, out_px: int) -> npt.NDArray[np.uint8]:
    rgb = _to_rgb_array(region)
    if rgb.shape[0] != out_px:
        return np.asarray(Image.fromarray(rgb).resize((out_px, out_px), Image.Resampling.BILINEAR))
    return rgb
