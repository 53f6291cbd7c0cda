"""Training data straight from a .zip of images (CelebA's ``img_align_celeba.zip``, the dataset zips
of StyleGAN2-ADA), without unpacking it.

``scan_zip`` lists the .jpg/.jpeg/.png members (nested folders included) and screens each as
``files.check_file`` screens a file: empty, not a JPEG or PNG, no end marker and not decodable by
Pillow, or damaged inside the zip (a CRC error) are left out and counted in one warning. Before a
member is read whole, its size as the zip's central directory states it (``zipfile`` never gives
more) is held against what an image of its header's size can take (``files.byte_limit``), and a
large member that inflates far more than an encoded image can (``MAX_INFLATION``) is left out too:
a zip bomb is never unpacked. A file that is not a zip, a damaged zip, or one without a usable
image is a one-line DataError.

Each member becomes a ``ZipMember``, which the loaders take where a folder gives a ``Path``: it
reads its bytes (``open_bytes``), names itself ``<zip>/<member>`` in messages, and its ``stat``
carries the member's size and the zip's size, modification time and the member's CRC, so that the
decoded cache (keyed on every file's name, size and time) follows the zip. The Pillow loader reads
members in its worker processes, each opening the zip once. The DALI loader reads them in the
training process and hands their encoded bytes to its decode graph through an external source
(``dali.EncodedBatches``), in place of its file reader: the same images in the same order as from
the files unpacked, with the same fallback to Pillow for a member that does not decode.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Sequence

from fastwgan.data.files import (_TAIL, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, MIN_BYTES_LIMIT,
                                 DataError, Scan, printable, screen_size, verdict)

# How many times its stored size a member may inflate to. JPEG and PNG data are compressed
# already: deflate gains about 5% on them (measured, 1024x1024: JPEG q90 and q100, a default PNG);
# a PNG saved without compression, of a smooth image, inflates 10x. Checked only for members of
# over ``files.MIN_BYTES_LIMIT``, so that no small image is refused for how it was stored.
MAX_INFLATION = 100

_OPEN: dict[tuple[str, int], zipfile.ZipFile] = {}  # (zip, process id) -> its open ZipFile


def _zip(path: str) -> zipfile.ZipFile:
    """The zip, opened once per process: a handle inherited through fork shares its file offset
    with the parent's, so each worker process opens its own."""
    key = (path, os.getpid())
    if key not in _OPEN:
        _OPEN[key] = zipfile.ZipFile(path)
    return _OPEN[key]


class ZipMember:
    """One image inside a zip, in place of a file path (picklable: the zip's path and the name)."""

    __slots__ = ("archive", "member", "_stat")

    def __init__(self, archive: str, member: str, size: int, version: int):
        self.archive, self.member = archive, member
        # st_mtime_ns: not a time but what changes with the zip (its size, time, the member's CRC)
        self._stat = SimpleNamespace(st_size=size, st_mtime_ns=version)

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name

    def stat(self) -> SimpleNamespace:
        return self._stat

    def read_bytes(self) -> bytes:
        return _zip(self.archive).read(self.member)

    def open_bytes(self) -> io.BytesIO:
        """What ``Image.open`` reads in place of the file."""
        return io.BytesIO(self.read_bytes())

    def __str__(self) -> str:
        return f"{self.archive}/{self.member}"

    def __repr__(self) -> str:
        return f"ZipMember({self.archive!r}, {self.member!r})"

    def __getstate__(self):
        return self.archive, self.member, self._stat.st_size, self._stat.st_mtime_ns

    def __setstate__(self, state):
        self.__init__(*state)

    def __eq__(self, other) -> bool:
        return isinstance(other, ZipMember) and (self.archive, self.member) == (other.archive, other.member)

    def __hash__(self) -> int:
        return hash((self.archive, self.member))


def is_zip(data: str | os.PathLike) -> bool:
    """``--data`` names a zip: by its extension (then it must be one), or a file that is one."""
    p = Path(data)
    return p.suffix.lower() == ".zip" or (p.is_file() and zipfile.is_zipfile(p))


def from_archive(files: Sequence) -> bool:
    return bool(files) and isinstance(files[0], ZipMember)


def check_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """``files.check_file`` for the bytes of a member: None when it looks like a complete JPEG or
    PNG of at most ``max_pixels``, else the reason it does not."""
    if not data:
        return "empty file"
    return verdict(data[:16], data[-_TAIL:], screen_size(io.BytesIO(data), max_pixels),
                   lambda: io.BytesIO(data))


def screen_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """What ``check_bytes`` would say of the member's size, from the zip's central directory and
    the member's header alone, before it is read whole: None, or the reason to leave it out."""
    size, stored = info.file_size, info.compress_size
    if size > MIN_BYTES_LIMIT and size > MAX_INFLATION * max(stored, 1):
        return (f"inflates {size / max(stored, 1):,.0f} times in the zip, from {stored:,} bytes "
                f"to {size:,}: not an encoded image")
    with zf.open(info) as f:  # reads the header's bytes, not the member
        return screen_size(f, max_pixels, size)


def _image_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    out = []
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue  # folders, macOS resource forks, hidden files
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            out.append(info)
    return sorted(out, key=lambda i: i.filename)


def scan_zip(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """The images inside a zip, screened; DataError for a zip that cannot train."""
    path = Path(path)
    if not path.exists():
        raise DataError(printable(f"data not found: {path}"))
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise DataError(printable(f"--data {path} is not a zip file"))
    st = path.stat()
    try:
        with zipfile.ZipFile(path) as zf:
            members = _image_members(zf)
            if not members:
                raise DataError(printable(f"no .jpg, .jpeg or .png files found inside {path}"))
            files, bad = [], []
            for info in members:
                version = hash((st.st_size, st.st_mtime_ns, info.CRC)) & (2**63 - 1)
                m = ZipMember(str(path), info.filename, info.file_size, version)
                try:
                    why = (screen_member(zf, info, max_pixels)  # before the member is read whole
                           or check_bytes(zf.read(info), max_pixels))
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
                    why = f"damaged in the zip: {str(e).splitlines()[0][:100]}"
                (bad.append((m, why)) if why else files.append(m))
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        reason = str(e).splitlines()[0][:100] or type(e).__name__
        raise DataError(printable(f"--data {path}: cannot read the zip, it is damaged or "
                                  f"truncated ({reason})")) from None
    if not files:
        raise DataError(printable(f"none of the {len(members)} image files inside {path} could be "
                                  f"read (first: {bad[0][0].name}: {bad[0][1]})"))
    return Scan(path, files, bad)


def archive_note(backend: str) -> str:
    """The loader note for a zip: who reads its members (the log's ``loader:`` line)."""
    if backend == "dali":
        return "DALI decodes the zip's members (their bytes read from the zip by the training process)"
    return "Pillow decodes the zip's members (each decoding process opens the zip once)"
