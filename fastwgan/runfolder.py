"""The run folder (``--out``): one run at a time, files written whole, write failures in one line.

* ``RunLock``: an exclusive advisory lock (``fcntl.flock``) on ``.lock`` in the folder, taken by
  training, resuming and ``--overwrite`` before any data is decoded. The kernel releases it when
  the process ends, however it ends: a crash never leaves a stale lock. A second run on the
  folder stops at once, naming the holder's pid. Reading (sample, eval) takes no lock: every file
  is replaced by a rename, so a reader sees the old file or the new one, never half of one.
* ``atomic_write``: a temporary file in the same folder, flushed to disk, renamed over the target;
  on failure the temporary is removed (no 0-byte leftovers on a full disk).
* ``remove_orphans``: temporaries of a killed write (``.NAME.tmpPID`` whose process is gone).
* ``write_failure``: a full disk, a read-only or unwritable folder as one line naming the file and
  the free space there (the trainer stops with exit code 1).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

LOCK_NAME = ".lock"
PID_WIDTH = 10  # the holder's pid in the lock file, padded to this width
# what a full disk, a read-only file system, a quota or missing permissions raise on a write
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                          errno.EFBIG})
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # .checkpoint.pt.tmp1234, .iter_000500.png.tmp1234


class RunFolderError(Exception):
    """An --out that cannot hold this run (a file, busy, unwritable): one line, exit code 2."""


class RunLock:
    """``with RunLock(out):`` the run folder held exclusively (created if needed).

    A folder this lock created and the run left empty (it stopped before writing anything) is
    removed again on release."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: Optional[int] = None
        self.created = False

    def __enter__(self) -> "RunLock":
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, not a folder; pass a folder for the run")
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as e:
            raise RunFolderError(f"cannot write in --out {self.out}: {e.strerror or e}") from None
        return self

    def _lock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunFolderError(f"{self.out} is in use by another training run (pid {holder}); "
                                     "wait for it to end, or pass another --out") from None
            try:  # the file we locked may have been removed by a run that was leaving: lock anew
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # the pid in place, at a fixed width, then the rest cut: a reader never finds the file
        # empty or holding parts of two pids (except before the first holder's write)
        record = f"{os.getpid():<{PID_WIDTH}}\n".encode()
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))
        self.fd = fd

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        if self.created and [p.name for p in self.out.iterdir()] == [LOCK_NAME]:
            self.path.unlink()  # (while still held: no run can have locked it meanwhile)
            self.out.rmdir()
        os.close(self.fd)  # releases the lock
        self.fd = None


def _holder(fd: int, wait_s: float = 1.0) -> str:
    """The pid in a lock file another process holds; it writes it just after taking the lock,
    so a file still empty is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, PID_WIDTH + 1, 0).decode(errors="replace").strip()
        if text or time.monotonic() > deadline:
            return text or "unknown"
        time.sleep(0.02)


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
