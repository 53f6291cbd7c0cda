"""One run at a time in a run folder (``--out``).

``RunLock``: an exclusive advisory lock (``fcntl.flock``) on ``.lock`` in the folder, taken by
training, resuming and ``--overwrite`` before any data is decoded. The kernel releases it when the
process ends, however it ends: a crash never leaves a stale lock. A second run on the folder stops
at once, naming the holder's pid (written into the lock file). Reading (sample, eval) takes no
lock: every file is replaced by a rename (fastwgan.atomic).
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".lock"
PID_WIDTH = 10  # the holder's pid in the lock file, padded to this width


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
