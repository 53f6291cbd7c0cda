"""Finding and validating image files, and the Pillow decode that every loader is checked against.

A training run must not die on the 150,000th file because it is truncated. ``scan_images`` checks
every file cheaply before training (signature, the image size its header claims, end marker;
Pillow for what is unclear) and leaves out the bad ones, which the caller reports in one warning.
Every backend decodes only files that passed this check: a small file whose header claims
30000x30000 pixels (a decompression bomb) is left out before any decoder allocates for it, and so
is a file far larger than an image of its header's size can be (a small image followed by a
gigabyte of zeros, which a loader would read whole: ``byte_limit``).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_TAIL = 64  # bytes read from the end of a file to find its end marker (encoders may pad after it)
# The largest image (width x height) decoded, for every backend: Pillow's own default limit
# (Image.MAX_IMAGE_PIXELS, about 89 M pixels: 1 GB of 24-bit pixels) unless --max-pixels says otherwise.
DEFAULT_MAX_PIXELS = 89_478_485
# The most bytes an encoded image may take per pixel its header states. The largest encodings
# measured (Pillow 13, 256x256 of uniform noise): a 16-bit RGBA PNG saved without compression is
# 8 bytes per pixel (plus a filter byte per row), a quality-100 4:4:4 JPEG 4.1 in RGB and 6.3 in
# CMYK. 16 is twice the worst of them; a photo takes under 1.
MAX_BYTES_PER_PIXEL = 16
# ... and at least this many whatever the size: on a small image the metadata dominates (an
# embedded ICC profile of up to a few MB, EXIF up to 64 KB per segment, XMP). A file that passes
# makes a loader read at most this much for an image of CelebA's size.
MIN_BYTES_LIMIT = 16 << 20


class DataError(Exception):
    """Data that cannot train at all (no folder, no usable image): one line, exit code 2."""


def printable(path: Any) -> str:
    """``path`` (or any text naming files) as messages show it. A file name need not be UTF-8 on
    Linux; Python holds its other bytes as surrogate escapes, which printing or a UTF-8 log
    refuses: they are shown as ``\\xff`` escapes instead."""
    text = str(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Scan:
    """The usable files of a folder and the ones left out, each with the reason."""

    root: Path
    files: list[Path]
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def warning(self) -> str | None:
        if not self.bad:
            return None
        shown = ", ".join(f"{p.name} ({why})" for p, why in self.bad[:3])
        more = f" and {len(self.bad) - 3} more" if len(self.bad) > 3 else ""
        return printable(f"skipped {len(self.bad)} unusable file(s) of "
                         f"{len(self.files) + len(self.bad)} under {self.root}: {shown}{more}")


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4),
# JPG (C8) or DAC (CC), which share the range
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM: no length field


def header_size(f: BinaryIO) -> Optional[tuple[int, int]]:
    """(width, height) as a JPEG's start-of-frame or a PNG's IHDR states it, read from the start
    of a binary stream without decoding; None when the header does not say (or is not JPEG/PNG).

    Reads only forward (``read``), so any readable stream works: an open file, ``io.BytesIO`` of a
    file's first bytes, a member of a zip archive.
    """
    head = f.read(8)
    if head == _PNG_SIG:
        ihdr = f.read(16)  # length (4), b"IHDR", width (4), height (4), big-endian
        if len(ihdr) < 16 or ihdr[4:8] != b"IHDR":
            return None
        return int.from_bytes(ihdr[8:12], "big"), int.from_bytes(ihdr[12:16], "big")
    if not head.startswith(_JPEG_SOI):
        return None
    return _jpeg_frame_size(f, head[2:])


def _jpeg_frame_size(f: BinaryIO, pending: bytes) -> Optional[tuple[int, int]]:
    """The size in the first start-of-frame segment; ``pending``: bytes already read after SOI."""
    def read(n: int) -> bytes:
        nonlocal pending
        out, pending = pending[:n], pending[n:]
        return out + (f.read(n - len(out)) if len(out) < n else b"")

    while True:
        if read(1) != b"\xff":  # every segment starts with 0xFF
            return None
        marker = read(1)
        while marker == b"\xff":  # fill bytes
            marker = read(1)
        if not marker:
            return None
        m = marker[0]
        if m in _JPEG_STANDALONE:
            continue
        if m in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        field = read(2)
        length = int.from_bytes(field, "big") if len(field) == 2 else 0
        if length < 2:
            return None
        if m in _JPEG_SOF:
            frame = read(5)  # precision (1), height (2), width (2)
            if len(frame) < 5:
                return None
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return (width, height) if height else None  # height 0: set later by a DNL marker
        skip = length - 2
        while skip > 0:  # read, not seek: works on any stream
            chunk = read(min(skip, 1 << 16))
            if not chunk:
                return None
            skip -= len(chunk)


def _pillow_size(f: BinaryIO) -> Optional[tuple[int, int]]:
    """The size Pillow reads from the header (``Image.open`` is lazy: nothing is decoded)."""
    try:
        with pixel_limit_screened(), Image.open(f) as im:
            return im.size
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        return None


def byte_limit(size: Optional[tuple[int, int]], max_pixels: int) -> int:
    """The most bytes an encoded image of ``size`` (width, height) may plausibly take:
    ``MAX_BYTES_PER_PIXEL`` per pixel, at least ``MIN_BYTES_LIMIT``. An image whose header states
    no size is allowed what the largest image (``max_pixels``) is."""
    pixels = size[0] * size[1] if size is not None else max_pixels
    return max(MIN_BYTES_LIMIT, MAX_BYTES_PER_PIXEL * pixels)


def screen_size(f: BinaryIO, max_pixels: int, nbytes: Optional[int] = None) -> Optional[str]:
    """None when the header at the stream's position states an image of at most ``max_pixels``
    pixels (or states no size: the decode then decides) and the image's ``nbytes`` (when given)
    are at most ``byte_limit`` of that size, else the reason to leave it out.

    A header this parser cannot follow is given to Pillow's header reader where the stream can
    seek back."""
    start = f.tell() if f.seekable() else None
    size = header_size(f)
    if size is None and start is not None:
        f.seek(start)
        size = _pillow_size(f)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        return (f"too large: its header claims {w}x{h} = {w * h:,} pixels, over the limit of "
                f"{max_pixels:,} (--max-pixels)")
    limit = byte_limit(size, max_pixels)
    if nbytes is not None and nbytes > limit:
        image = f"a {size[0]}x{size[1]} image" if size is not None else "an image of no stated size"
        return f"too many bytes: {nbytes:,} for {image}, which takes at most {limit:,}"
    return None


def default_workers() -> int:
    """Decoding processes: one per core this process may run on, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores))


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)  # follows links: the real file or folder
    return st.st_dev, st.st_ino


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every .jpg/.jpeg/.png below ``root`` (any case, nested folders), in a stable sorted order.

    Symbolic links are followed (datasets are often linked in), but each real folder is visited
    once and each real file listed once, under its first path in sorted order: a link to a parent
    folder (``ln -s . a``) neither multiplies the dataset nor loops forever.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(printable(f"data folder not found: {root}"))
    if not root.is_dir():
        raise DataError(printable(f"--data must be a folder of images, got a file: {root}"))
    found = []
    visited = {_identity(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            try:
                key = _identity(os.path.join(dirpath, name))
            except OSError:  # a dangling link
                continue
            if key not in visited:
                visited.add(key)
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    found.sort()
    out, seen = [], set()
    for p in found:
        try:
            key = _identity(p)
        except OSError:  # a dangling link: check_file reports it
            key = None
        if key is None or key not in seen:
            seen.add(key)
            out.append(p)
    return out


def check_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when ``path`` looks like a complete JPEG or PNG of at most ``max_pixels``, else the
    reason it is not.

    Cheap first (the header, the file's size and the last bytes); only a file whose end marker
    is not where expected is decoded with Pillow to decide.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0)
            too_large = screen_size(f, max_pixels, size)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return verdict(head, tail, too_large, lambda: path)


def verdict(head: bytes, tail: bytes, too_large: str | None, whole: Callable[[], Any]) -> str | None:
    """``check_file``'s judgement of an image from its first 16 bytes, its last ``_TAIL`` bytes and
    what ``screen_size`` said of its header and size. Only an image whose end marker is not where
    expected (truncated, or bytes after the marker) is decoded, by Pillow from ``whole()`` (a path
    or a stream), to decide."""
    if not head.startswith((_JPEG_SOI, _PNG_SIG)):
        return "not a JPEG or PNG"
    if too_large is not None:
        return too_large
    if (_JPEG_EOI in tail) if head.startswith(_JPEG_SOI) else (_PNG_IEND in tail):
        return None
    try:
        with pixel_limit_screened(), Image.open(whole()) as im:
            im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        return f"cannot decode: {e}"
    return None


def scan_images(root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """List and validate the images under ``root``; raise DataError when none is usable."""
    root = Path(root)
    candidates = list_images(root)
    if not candidates:
        raise DataError(printable(f"no .jpg, .jpeg or .png files found under {root}"))
    files, bad = [], []
    for p in candidates:
        why = check_file(p, max_pixels)
        if why is None:
            files.append(p)
        else:
            bad.append((p, why))
    if not files:
        raise DataError(printable(f"none of the {len(candidates)} image files under {root} could "
                                  f"be read (first: {bad[0][0].name}: {bad[0][1]})"))
    return Scan(root, files, bad)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: scale to 8 bits before the RGB conversion, which would clip.
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels have arbitrary colour underneath: composite on white.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB")


def center_crop_resize(im: Image.Image, image_size: int, crop: int | None) -> Image.Image:
    """Center crop ``crop`` (default: the shorter side), then an antialiased resize.

    An image smaller than the crop is first scaled up so that its shorter side equals the crop.
    Pillow's bilinear filter widens its support when it shrinks an image, so the resize is
    antialiased (the same triangle filter as DALI's antialiased linear resize).
    """
    w, h = im.size
    c = crop or min(w, h)
    if min(w, h) < c:
        s = c / min(w, h)
        w, h = max(c, round(w * s)), max(c, round(h * s))
        im = im.resize((w, h), Image.BILINEAR)
    left, top = (w - c) // 2, (h - c) // 2
    im = im.crop((left, top, left + c, top + c))
    if c != image_size:
        im = im.resize((image_size, image_size), Image.BILINEAR)
    return im


@contextlib.contextmanager
def pixel_limit_screened():
    """Pillow's own size check off while a file that passed ``check_file`` is decoded: the scan
    applied the run's one limit (``--max-pixels``) to the header already, for Pillow and DALI
    alike, and Pillow's default would otherwise refuse what a larger --max-pixels allows."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | os.PathLike, image_size: int, crop: int | None) -> np.ndarray:
    """Decode one file (one that passed ``check_file``) to a (H, W, 3) uint8 array with the
    training preprocessing."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # a member of a zip (fastwgan.data.archive.ZipMember) gives its bytes
    with pixel_limit_screened(), Image.open(path.open_bytes() if hasattr(path, "open_bytes") else path) as im:
        im = _to_rgb(im)
        im = center_crop_resize(im, image_size, crop)
        return np.asarray(im, dtype=np.uint8).copy()
