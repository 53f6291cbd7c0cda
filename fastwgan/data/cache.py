"""The decoded-dataset cache: a resident decode written once as .npy, read back by the next run.

Each cache file is named by a key of the file list (path, size, modification time of each file)
and the preprocessing (``cache_key``), so a changed, added or removed file, another image size or
another crop gives another file. Beside each ``<name>.npy`` is ``<name>.failed.json``: the files that passed
the scan but did not decode (each replaced by the next image), so that a run from the cache
reports them as the run that decoded them did. The Pillow loader caches (N, 3, H, W) as
``decoded-<key>.npy``, the DALI loader (N, H, W, 3) as ``dali-<key>.npy``
(``dali.dali_cache_key``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fastwgan.atomic import atomic_write

CACHE_VERSION = 2  # 2: a list of the files that did not decode beside each cache


def cache_key(files: Sequence[Path], image_size: int, crop: int | None) -> str:
    """Changes when a file is added, removed or modified, or the preprocessing changes."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "size": image_size, "crop": crop}).encode())
    for p in files:
        st = p.stat()
        # the name as the file system's bytes: a name that is not UTF-8 (legal on Linux) hashes too
        h.update(os.fsencode(str(p)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _failed_path(npy: Path) -> Path:
    return npy.with_name(npy.stem + ".failed.json")


def read_failed(npy: Path) -> list[tuple[str, str]] | None:
    """The files a cached decode replaced (written beside the .npy before it); None when that
    list is missing or unreadable, and the cache cannot say: decode again."""
    try:
        return [tuple(x) for x in json.loads(_failed_path(npy).read_text())]
    except (OSError, ValueError, TypeError):
        return None


def write_failed(npy: Path, failed: Sequence[tuple[str, str]]) -> None:
    text = json.dumps([list(x) for x in failed])
    atomic_write(_failed_path(npy), lambda tmp: tmp.write_text(text), sync=False)


def read_cache(path: Path, shape: tuple[int, ...], mmap: bool = False,
               ) -> tuple[np.ndarray, list[tuple[str, str]]] | None:
    """A current decoded cache at ``path``: the uint8 images of ``shape`` and the files that did not
    decode; None when it is missing, damaged, of another shape, or without its list."""
    if not path.exists():
        return None
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):
        return None  # a damaged cache file is rebuilt
    known = read_failed(path)
    if arr.shape != shape or arr.dtype != np.uint8 or known is None:
        return None
    return arr, known


def write_cache(path: Path, arr: np.ndarray, bad: Sequence[tuple[str, str]]) -> None:
    """The decoded images and their list of files that did not decode, each written atomically;
    the list first, so that a cache file is never found without it."""
    write_failed(path, bad)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a name
            np.save(f, arr)

    atomic_write(path, write, sync=False)  # (a full disk: no partial cache left behind)
