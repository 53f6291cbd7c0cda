"""The run folder: one run at a time, failed writes as one line, leftovers of killed writes."""
import builtins
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastwgan import checkpoint as ckpt_io
from fastwgan import run as run_module
from fastwgan import sample, train
from fastwgan.runlock import RunFolderError, RunLock

from tiny import TINY, run

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # every subprocess


pytestmark = pytest.mark.usefixtures("private_cache")


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for d in (out, out / "samples") if d.is_dir() for p in d.iterdir()
                  if ".tmp" in p.name)


def trainer(data, out, *extra, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "FASTWGAN_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "fastwgan.train", *TINY, "--data", data, "--out",
                             str(out), *map(str, extra)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --- the lock ---

def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "r"
    with RunLock(out):
        with pytest.raises(RunFolderError, match=f"in use by another training run \\(pid {os.getpid()}\\)"):
            RunLock(out).__enter__()
    with RunLock(out):  # released on exit
        pass
    assert not out.exists()  # created by the lock and left empty: removed again
    # a holder killed outright leaves no stale lock
    code = f"from fastwgan.runlock import RunLock; RunLock({str(out)!r}).__enter__(); print('held', flush=True); " \
           "import time; time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {p.pid}"):
            RunLock(out).__enter__()
    finally:
        p.kill()
        p.wait(timeout=TIMEOUT)
    with RunLock(out):
        pass


def test_resume_and_overwrite_take_the_lock(tmp_path, data, capsys):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    before = (out / "metrics.jsonl").read_text()
    with RunLock(out):
        assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert run("--data", data, "--out", out, "--iters", 2, "--overwrite") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another training run" in err
    assert (out / "metrics.jsonl").read_text() == before and ckpt_io.load(out)["iteration"] == 2


def test_lock_names_a_holder_caught_between_its_lock_and_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock: a second run that looks in between
    waits for the pid rather than naming "unknown"."""
    import fcntl
    import threading

    out = tmp_path / "r"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, the file still empty
        writer = threading.Timer(0.3, lambda: os.pwrite(fd, b"4242      \n", 0))
        writer.start()
        with pytest.raises(RunFolderError, match=r"\(pid 4242\)"):
            RunLock(out).__enter__()
    finally:
        writer.join()
        os.close(fd)


@pytest.mark.slow  # two trainer processes: about 10 s on 2 cores
def test_two_trainers_on_one_folder(tmp_path, data):
    """Two runs started together on one folder: the second to reach the lock stops at once
    (before looking at the data) with one line naming the first's pid; reading the folder
    (sample) needs no lock; metrics.jsonl holds one run's rows."""
    out = tmp_path / "r"
    procs = [trainer(data, out, "--iters", 100000, "--ckpt-every", 2, "--sample-every", 100000,
                     tmp_path=tmp_path) for _ in range(2)]
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        stdout, stderr = loser.communicate(timeout=TIMEOUT)
        assert loser.returncode == 2, stderr
        assert stderr.strip() == (f"error: {out} is in use by another training run (pid {winner.pid}); "
                                  "wait for it to end, or pass another --out")
        assert "data:" not in stdout  # stopped before the data was looked at
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            assert winner.poll() is None, winner.communicate()
            time.sleep(0.1)
        assert sample.main([str(out), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=TIMEOUT)
    assert winner.returncode == 128 + signal.SIGINT
    rows = [json.loads(l)["iter"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, len(rows) + 1))  # one run's rows only


# --- writes that fail ---

def failing_open(path_part, err):
    """builtins.open, except that writing a file whose name contains ``path_part`` fails with
    ``err`` after the file was created (as a full disk does)."""
    real_open = builtins.open

    def fake(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if path_part in str(file) and any(c in mode for c in "wa"):
            def write(*_a, **_k):
                raise OSError(err, os.strerror(err))
            f.write = write
        return f
    return fake


@pytest.mark.parametrize("part,err,named", [
    ("checkpoint.pt", errno.ENOSPC, "checkpoint.pt"),       # the checkpoint, written after samples
    ("iter_000004.png", errno.EROFS, "samples/iter_000004.png"),  # a sample grid
    ("metrics.jsonl", errno.EACCES, "metrics.jsonl"),         # a metrics row
])
def test_failed_write_stops_with_one_line(tmp_path, data, monkeypatch, capsys, part, err, named):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    capsys.readouterr()
    monkeypatch.setattr(builtins, "open", failing_open(part, err))  # (Pillow's too)
    assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 1
    monkeypatch.undo()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot write {out / named}: {os.strerror(err)} (")
    assert "free there" in lines[0] and "last checkpoint" in lines[0]
    assert ckpt_io.load(out)["iteration"] == 2  # intact
    assert temporaries(out) == []
    assert f"stopped: cannot write {out / named}" in (out / "train.log").read_text()


def test_resume_on_a_full_disk_leaves_no_metrics_temporary(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    monkeypatch.setattr(builtins, "open", failing_open(".metrics.jsonl.tmp", errno.ENOSPC))
    assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 1
    monkeypatch.undo()
    assert f"cannot write {out / 'metrics.jsonl'}" in capsys.readouterr().err
    assert temporaries(out) == [] and ckpt_io.load(out)["iteration"] == 2


def test_out_naming_a_file_is_refused_before_the_data(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")

    def no_data(*a, **k):
        raise AssertionError("the data was opened")

    monkeypatch.setattr(run_module, "open_dataset", no_data)
    assert run("--out", tmp_path / "file") == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --out {tmp_path / 'file'} is a file, not a folder; pass a folder for the run"


def test_full_tmpfs(tmp_path, data, capsys):
    """A real full disk: a 1 MB tmpfs (needs root and mount; skipped otherwise)."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        out = small / "r"
        assert run("--data", data, "--out", out, "--iters", 2) == 0
        with open(small / "filler", "wb") as f:  # fill the disk
            try:
                while True:
                    f.write(bytes(16384))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        capsys.readouterr()
        assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and "free there" in err[0], err
        assert ckpt_io.load(out)["iteration"] == 2
        assert temporaries(out) == []
    finally:
        subprocess.run(["umount", str(small)], timeout=60)


# --- leftovers ---

def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=TIMEOUT)
    return p.pid


def test_orphaned_temporaries_are_removed(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    gone = dead_pid()
    orphans = [out / f".checkpoint.pt.tmp{gone}", out / "samples" / f".iter_000002.png.tmp{gone}"]
    live = out / f".grid.png.tmp{os.getpid()}"  # a sample CLI writing now: not ours to remove
    for p in [*orphans, live]:
        p.write_bytes(bytes(1000))
    assert train.main(["--resume", str(out), "--iters", "3", "--no-progress"]) == 0
    assert [p.exists() for p in orphans] == [False, False] and live.exists()
    for p in orphans:
        p.write_bytes(b"")
    assert run("--data", data, "--out", out, "--iters", 2, "--overwrite") == 0
    assert [p.exists() for p in orphans] == [False, False]
