"""Finding and validating image files, and the Pillow decode that every loader is checked against.

A training run must not die on the 150,000th file because it is truncated. ``scan_images`` checks
every file cheaply before training (signature and end marker, Pillow for what is unclear) and
leaves out the bad ones, which the caller reports in one warning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_TAIL = 64  # bytes read from the end of a file to find its end marker (encoders may pad after it)


class DataError(Exception):
    """Data that cannot train at all (no folder, no usable image): one line, exit code 2."""


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
        return (f"skipped {len(self.bad)} unusable file(s) of {len(self.files) + len(self.bad)} "
                f"under {self.root}: {shown}{more}")


def default_workers() -> int:
    """Decoding processes: one per core this process may run on, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores))


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every .jpg/.jpeg/.png below ``root`` (any case, nested folders), in a stable sorted order."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a folder of images, got a file: {root}")
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append(Path(dirpath) / name)
    out.sort()
    return out


def check_file(path: Path) -> str | None:
    """None when ``path`` looks like a complete JPEG or PNG, else the reason it is not.

    Cheap first (the first and last bytes); only a file whose end marker is not where expected is
    decoded with Pillow to decide.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if head.startswith(_JPEG_SOI):
        if _JPEG_EOI in tail:
            return None
    elif head.startswith(_PNG_SIG):
        if _PNG_IEND in tail:
            return None
    else:
        return "not a JPEG or PNG"
    # Signature fine, end marker missing: truncated, or trailing bytes after the marker.
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        return f"cannot decode: {e}"
    return None


def scan_images(root: str | os.PathLike) -> Scan:
    """List and validate the images under ``root``; raise DataError when none is usable."""
    root = Path(root)
    candidates = list_images(root)
    if not candidates:
        raise DataError(f"no .jpg, .jpeg or .png files found under {root}")
    files, bad = [], []
    for p in candidates:
        why = check_file(p)
        if why is None:
            files.append(p)
        else:
            bad.append((p, why))
    if not files:
        raise DataError(f"none of the {len(candidates)} image files under {root} could be read "
                        f"(first: {bad[0][0].name}: {bad[0][1]})")
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


def load_image(path: str | os.PathLike, image_size: int, crop: int | None) -> np.ndarray:
    """Decode one file to a (H, W, 3) uint8 array with the training preprocessing."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # a member of a zip (fastwgan.data.archive.ZipMember) gives its bytes
    with Image.open(path.open_bytes() if hasattr(path, "open_bytes") else path) as im:
        im = _to_rgb(im)
        im = center_crop_resize(im, image_size, crop)
        return np.asarray(im, dtype=np.uint8).copy()
