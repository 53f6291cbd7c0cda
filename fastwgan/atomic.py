"""Files written whole, and a write that failed said in one line.

* ``atomic_write``: a temporary file in the same folder, flushed to disk, renamed over the target;
  on failure the temporary is removed (no 0-byte leftovers on a full disk). A reader (sample,
  eval) sees the old file or the new one, never half of one: reading needs no lock.
* ``remove_orphans``: temporaries of a killed write (``.NAME.tmpPID`` whose process is gone).
* ``write_failure``: a full disk, a read-only or unwritable folder as one line naming the file and
  the free space there (the trainer stops with exit code 1).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Callable

# what a full disk, a read-only file system, a quota or missing permissions raise on a write
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                          errno.EFBIG})
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # .checkpoint.pt.tmp1234, .iter_000500.png.tmp1234


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], sync: bool = True) -> Path:
    """``write(tmp)`` to a temporary beside ``path``, synced to disk (``sync``: not for a cache
    that can be rebuilt), then renamed over ``path``.

    On any failure the temporary is removed and the error raised with ``path`` as its file name
    (a failed write() names no file of its own)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        e.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of writes whose process is gone (a run killed mid-write), in
    ``folder`` and its ``samples/``; returns them. Those of a live process are left alone."""
    removed = []
    for d in (Path(folder), Path(folder) / "samples"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _TEMPORARY.match(p.name)
            if m and p.is_file() and not _pid_alive(int(m.group(1))):
                p.unlink()
                removed.append(p)
    return removed


def is_write_failure(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def _free_space(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                free = shutil.disk_usage(p).free
            except OSError:
                return "free space unknown"
            for unit in ("bytes", "KB", "MB", "GB", "TB"):
                if free < 1024 or unit == "TB":
                    return f"{free:,.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
                free /= 1024
    return "free space unknown"


def write_failure(e: OSError, folder: str | os.PathLike) -> str:
    """One line for a write that failed: the file, why, and the free space on its disk."""
    target = Path(e.filename) if e.filename else Path(folder)
    what = str(target) if e.filename else f"a file in {folder}"
    return f"cannot write {what}: {e.strerror or e} ({_free_space(target.parent)} there)"
