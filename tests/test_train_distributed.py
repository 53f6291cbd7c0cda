"""``torchrun --nproc_per_node 2 -m fastwgan.train --device cpu`` end to end (gloo on the loopback).

Every launch is ``torchrun --standalone`` (a free port), each rank with OMP_NUM_THREADS=1, a
subprocess timeout, and the smoke preset's tiny networks on 16 JPEGs. What is checked: rank 0
alone writes the run folder, once; the metrics are the mean over the ranks; a two-rank run resumes
bit for bit with two ranks, and continues in one process and back with a note; a rank killed
mid-run stops the other one with a clear message within the timeout, the checkpoint intact; a
silent rank stops the other one after --dist-timeout; SIGTERM to torchrun stops both ranks after
one checkpoint; ``--max-restarts`` continues from the last checkpoint by itself.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastwgan import checkpoint as ckpt_io

from oddfiles import make_good_folder
from tiny import assert_same_training

pytestmark = pytest.mark.usefixtures("private_cache")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--preset", "smoke", "--no-progress", "--workers", "0",
        "--data-backend", "pillow"]
LAUNCH_TIMEOUT_S = 120  # one torchrun launch of two ranks (a few seconds each here)
ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def data16(tmp_path) -> str:
    make_good_folder(tmp_path / "data16", n=16)
    return str(tmp_path / "data16")


def env() -> dict:
    return {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}


def torchrun_cmd(args, nproc: int = 2, extra=()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), *extra, "-m", "fastwgan.train", *TINY, *map(str, args)]


def torchrun(*args, nproc: int = 2, timeout: int = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(args, nproc), env=env(), capture_output=True, text=True,
                          timeout=timeout)


def one_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastwgan.train", *TINY, *map(str, args)], env=env(),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# n_critic 2 with 3-step warm-up phases; 16 images in global batches of 4 (2 per rank): epochs end
# mid-run; no samples or checkpoints between the ends of the runs
COMMON = ["--n-critic", 2, "--n-critic-warmup", 3, "--batch-size", 4, "--ckpt-every", 100,
          "--sample-every", 100]


def test_two_ranks_write_once_resume_exactly_and_across_world_sizes(tmp_path, data16):
    once, twice = tmp_path / "once", tmp_path / "twice"
    tb = ["--tensorboard"] if importlib.util.find_spec("tensorboard") else []
    r = ok(torchrun(*COMMON, "--data", data16, "--out", once, "--iters", 6, "--sample-every", 3, *tb))

    # rank 0 alone writes, once: one header, one "done", one row per iteration, samples at 3 and 6
    log = (once / "train.log").read_text()
    assert log.count("--- ") == 1 and log.count("done: 6 iterations") == 1
    assert "processes: 2 (gloo), batch 4 = 2 x 2" in log and "DistributedDataParallel" in log
    assert r.stdout.count("done: 6 iterations") == 1  # the other rank prints nothing
    assert [row["iter"] for row in rows(once)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (once / "samples").iterdir()) == ["iter_000003.png", "iter_000006.png"]
    assert {p.name for p in once.iterdir()} - {"tb"} == {
        "checkpoint.pt", "config.json", "loss.png", "metrics.jsonl", "real_samples.png", "samples",
        "train.log", ".lock"}
    if tb:  # one writer of TensorBoard events
        assert len([p for p in (once / "tb").rglob("*") if p.name.startswith("events.")]) == 1
    assert json.loads((once / "config.json").read_text())["batch_size"] == 4  # the global batch
    a = ckpt_io.load(once)
    assert a["world_size"] == 2 and len(a["rank_states"]) == 2 and a["iteration"] == 6
    # the ranks drew different noise: their random streams differ
    assert not torch.equal(a["rank_states"][0]["rng"]["torch"], a["rank_states"][1]["rng"]["torch"])

    # the same 6 iterations in two launches of two ranks: bit for bit
    ok(torchrun(*COMMON, "--data", data16, "--out", twice, "--iters", 3))
    assert ckpt_io.load(twice)["data_position"] > 0
    r = ok(torchrun("--resume", twice, "--iters", 6))
    assert "not bit for bit" not in r.stdout
    b = ckpt_io.load(twice)
    assert (b["iteration"], b["data_position"]) == (6, a["data_position"])
    assert_same_training(a, b)
    for k in ("iter", "loss_d", "loss_g", "wdist", "critic_steps"):
        assert [row[k] for row in rows(twice)] == [row[k] for row in rows(once)], k

    # the two-rank checkpoint at 6 continues in one process, and back to two ranks: with a note
    r = ok(one_process("--resume", twice, "--iters", 8))
    assert "written by 2 processes, this run has 1" in r.stdout and "not bit for bit" in r.stdout
    c = ckpt_io.load(twice)
    assert (c["iteration"], c["world_size"]) == (8, 1) and "rank_states" not in c
    # the data position is a global batch count: 2 iterations of (2 + 1) batches further
    assert c["data_position"] == a["data_position"] + 2 * 3
    r = ok(torchrun("--resume", twice, "--iters", 10))
    assert "written by 1 process, this run has 2" in r.stdout
    d = ckpt_io.load(twice)
    assert (d["iteration"], d["world_size"], d["data_position"]) == (10, 2, c["data_position"] + 6)
    assert [row["iter"] for row in rows(twice)] == list(range(1, 11))


def test_fast_engine_with_sync_bn_resumes_exactly(tmp_path, data16):
    fast = ["--backend", "fast", "--sync-bn", "--data-mode", "resident", "--data", data16]
    r = ok(torchrun(*fast, "--out", tmp_path / "once", "--iters", 4))
    assert "one all-reduce per step, sync BatchNorm" in r.stdout
    assert "BatchNorm over the global batch (--sync-bn)" in r.stdout
    ok(torchrun(*fast, "--out", tmp_path / "twice", "--iters", 2))
    ok(torchrun("--resume", tmp_path / "twice", "--iters", 4))
    assert_same_training(ckpt_io.load(tmp_path / "once"), ckpt_io.load(tmp_path / "twice"))


def test_batch_that_does_not_split_is_one_line_exit_2(tmp_path, data16):
    r = torchrun("--data", data16, "--out", tmp_path / "r", "--batch-size", 7)
    assert r.returncode != 0
    assert "error: --batch-size 7 does not split over 2 processes" in r.stderr
    assert "e.g. 6 or 8" in r.stderr and r.stderr.count("does not split") == 1  # rank 0 says it
    assert "fastwgan/" not in r.stderr  # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# --- metrics averaged over the ranks -------------------------------------------------------------

LOG_POINT_SCRIPT = r"""
import json, os, sys
import torch
from fastwgan import distributed
from fastwgan.config import Config
from fastwgan.losses import LOSSES
from fastwgan.runfolder import NoRunFolder, RunLog
from fastwgan.loop import StartPoint, TrainingLoop

world = distributed.init_from_env("cpu")
cfg = Config(out=sys.argv[1], iters=10)


class Engine:  # what a log point reads of an engine: this rank's loss sums
    loss = LOSSES["wgan"]
    G = D = None
    sums = torch.tensor([1.0, 3.0, 5.0, 7.0]) * (world.rank + 1)  # rank 1's are twice rank 0's

    def parameter_sets(self):
        return {"critic": [torch.ones(3)]}


class Rows(NoRunFolder):
    def metrics_row(self, row):
        with open(os.path.join(sys.argv[1], f"rank{world.rank}.json"), "w") as f:
            json.dump(row, f)


loop = TrainingLoop(cfg, Engine(), Rows(cfg), world, RunLog(None), StartPoint(0, 0.0, 2, 1))
loop.t_log = loop.t_start = 0.0
loop.images_since_log, loop.show_bar = 0, False
loop.bar = type("Bar", (), {"set_postfix_str": lambda *a: None, "write": print})()
loop.log_point(1)
assert loop.sums.abs().sum() == 0  # zeroed for the next interval

# a rank whose weights drifted: every rank stops at the next log point, with the reason
Engine.parameter_sets = lambda self: {"critic": [torch.ones(3) * (1 + world.rank)]}
try:
    loop.log_point(2)
except Exception as e:
    with open(os.path.join(sys.argv[1], f"stop{world.rank}.txt"), "w") as f:
        f.write(f"{type(e).__name__}: {e}")
distributed.shutdown(world)
distributed.exit_process(0)
"""


def test_log_point_averages_the_ranks_losses(tmp_path):
    script = tmp_path / "log_point.py"
    script.write_text(LOG_POINT_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", str(script), str(tmp_path)],
                       env=env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    ok(r)
    row = json.loads((tmp_path / "rank0.json").read_text())
    # mean of (1, 3, 5, 7) and (2, 6, 10, 14) = (1.5, 4.5, 7.5, 10.5); 2 critic steps, 1 G step
    assert row["loss_d"] == 0.75 and row["d_real"] == 2.25 and row["d_fake"] == 3.75
    assert row["loss_g"] == 10.5 and row["wdist"] == 2.25 - 3.75
    other = json.loads((tmp_path / "rank1.json").read_text())
    keys = ("loss_d", "loss_g", "d_real", "d_fake", "wdist", "critic_steps")
    assert [other[k] for k in keys] == [row[k] for k in keys]  # every rank has the mean
    for rank in range(2):
        stop = (tmp_path / f"stop{rank}.txt").read_text()
        assert stop.startswith("Stop: the weights differ across processes (critic on rank 1")
        assert "(at iteration 2)" in stop


# --- faults ---------------------------------------------------------------------------------------

def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (their environment names their RANK)."""
    found = {}
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            stat = (pid / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != launcher.pid:
                continue
            environ = (pid / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for var in environ:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(pid.name)
    return found


def start_long_run(out: Path, data: str, *args, extra=()) -> subprocess.Popen:
    cmd = torchrun_cmd(["--data", data, "--out", out, "--iters", 100_000, "--log-every", 1,
                        "--sample-every", 100_000, *args], extra=extra)
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout_s: float, what: str, launcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if launcher.poll() is not None:
            out, err = launcher.communicate()
            pytest.fail(f"torchrun ended (exit {launcher.returncode}) before {what}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            launcher.kill()
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


def checkpoint_at_least(out: Path, iteration: int):
    def ready():
        try:
            return ckpt_io.load(out)["iteration"] >= iteration
        except ckpt_io.CheckpointError:
            return False
    return ready


def finish(launcher: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    try:
        return launcher.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for pid in rank_pids(launcher).values():
            os.kill(pid, signal.SIGKILL)
        launcher.kill()
        pytest.fail(f"torchrun still running {timeout_s} s after the fault: a hang")


def test_killed_rank_stops_the_other_with_a_clear_message(tmp_path, data16):
    out = tmp_path / "r"
    launcher = start_long_run(out, data16, "--ckpt-every", 3, "--dist-timeout", 30)
    wait_for(checkpoint_at_least(out, 3), 90, "first checkpoint", launcher)
    os.kill(rank_pids(launcher)[1], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = finish(launcher, 60)
    assert launcher.returncode != 0
    assert "rank 0: error: lost another process of the run" in err, err[-3000:]
    assert "last checkpoint written (if any) is kept" in err
    assert time.monotonic() - t0 < 60
    assert ckpt_io.load(out, resume=True)["iteration"] >= 3  # loads, whole
    assert "stopped: lost another process" in (out / "train.log").read_text()


def test_silent_rank_stops_the_other_after_the_timeout(tmp_path, data16):
    out = tmp_path / "r"
    launcher = start_long_run(out, data16, "--ckpt-every", 3, "--dist-timeout", 5)
    wait_for(checkpoint_at_least(out, 3), 90, "first checkpoint", launcher)
    pids = rank_pids(launcher)
    os.kill(pids[1], signal.SIGSTOP)  # alive, answering nothing
    try:
        deadline = time.monotonic() + 45
        while Path(f"/proc/{pids[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        rank0_gone = not Path(f"/proc/{pids[0]}").exists()
    finally:
        os.kill(pids[1], signal.SIGKILL)
    _, err = finish(launcher, 60)
    assert rank0_gone, "rank 0 still waiting 45 s after its partner stopped answering"
    assert "rank 0: error: lost another process of the run" in err and "Timed out" in err, err[-3000:]
    assert ckpt_io.load(out, resume=True)["iteration"] >= 3


def test_sigterm_to_torchrun_stops_both_ranks_after_one_checkpoint(tmp_path, data16):
    out = tmp_path / "r"
    # no log point and no checkpoint of its own: the loss sums at the stop are mid-interval
    launcher = start_long_run(out, data16, "--ckpt-every", 100_000, "--log-every", 100_000)
    wait_for(lambda: (out / "train.log").exists() and "processes: 2" in (out / "train.log").read_text(),
             90, "the start of training", launcher)
    time.sleep(1.0)
    launcher.send_signal(signal.SIGTERM)
    _, err = finish(launcher, 60)
    assert "rank 0: SIGTERM: stopped at iteration" in err and "checkpoint written" in err, err[-3000:]
    ck = ckpt_io.load(out, resume=True)
    assert ck["world_size"] == 2 and f"stopped at iteration {ck['iteration']};" in err
    # both ranks' parts of the same checkpoint; the partial sums averaged over them
    sums = [s["sums"] for s in ck["rank_states"]]
    assert not torch.equal(sums[0], sums[1])
    assert torch.equal(ck["log_accum"]["sums"], torch.stack(sums).mean(0))
    # the run continues from it, exactly where it stopped
    it = ck["iteration"]
    ok(torchrun("--resume", out, "--iters", it + 2))
    assert ckpt_io.load(out)["iteration"] == it + 2


def test_sigterm_to_one_rank_stops_both_at_the_same_iteration(tmp_path, data16):
    """A signal that reaches one process only (a scheduler's, a user's kill): the stop vote takes
    it to the other, both stop after the same iteration and write one checkpoint together."""
    out = tmp_path / "r"
    launcher = start_long_run(out, data16, "--ckpt-every", 100_000, "--log-every", 100_000)
    wait_for(lambda: (out / "train.log").exists() and "processes: 2" in (out / "train.log").read_text(),
             90, "the start of training", launcher)
    time.sleep(1.0)
    os.kill(rank_pids(launcher)[1], signal.SIGTERM)
    _, err = finish(launcher, 60)
    ck = ckpt_io.load(out, resume=True)
    it = ck["iteration"]
    assert f"rank 0: SIGTERM (by another process of the run): stopped at iteration {it};" in err, err[-3000:]
    # rank 1 stopped with it (rank 0 speaks for both): its part of the same checkpoint
    assert ck["world_size"] == 2 and len(ck["rank_states"]) == 2
    assert err.count("exitcode  : 143") == 2, err[-3000:]  # 128 + SIGTERM, both ranks
    assert (out / "train.log").read_text().count("stopped: SIGTERM") == 1  # rank 0 writes the log
    ok(torchrun("--resume", out, "--iters", it + 1))
    assert ckpt_io.load(out)["iteration"] == it + 1


def test_torchrun_restart_continues_from_the_last_checkpoint(tmp_path, data16):
    out = tmp_path / "r"
    launcher = start_long_run(out, data16, "--ckpt-every", 3, extra=["--max-restarts", "1"])
    # the first start: kill rank 1 after a checkpoint; torchrun restarts both ranks, which continue
    wait_for(checkpoint_at_least(out, 3), 90, "first checkpoint", launcher)
    first = rank_pids(launcher)
    os.kill(first[1], signal.SIGKILL)
    log = out / "train.log"
    wait_for(lambda: "torchrun restart 1: continuing from the last checkpoint" in log.read_text(), 90,
             "the restart", launcher)
    resumed_at = ckpt_io.load(out)["iteration"]
    wait_for(checkpoint_at_least(out, resumed_at + 3), 90, "a checkpoint after the restart", launcher)
    assert set(rank_pids(launcher).values()).isdisjoint(first.values())  # new processes
    launcher.send_signal(signal.SIGTERM)
    finish(launcher, 60)
    text = log.read_text()
    assert text.count("--- ") == 2 and "resumed from iteration" in text


def test_sync_bn_in_one_process_says_it_does_nothing(tmp_path, data16):
    r = ok(one_process("--data", data16, "--out", tmp_path / "r", "--iters", 1, "--sync-bn"))
    assert "one process has nothing to synchronise" in r.stdout
    assert "processes:" not in r.stdout and ckpt_io.load(tmp_path / "r")["world_size"] == 1
