"""Periodic work off the training loop's critical path: sample grids written while training goes
on, loss.png at checkpoints only, img_per_s on the wall clock with maint_s beside it, the run's
writes on disk before it says it stopped."""
import json
import re
import signal
import threading
import time

import pytest

from fastwgan import loop, runfolder
from fastwgan import checkpoint as ckpt_io

from tiny import after_iteration, run

pytestmark = pytest.mark.usefixtures("private_cache")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_sample_grid_is_written_while_training_goes_on(tmp_path, data, monkeypatch):
    third_iteration = threading.Event()
    after_iteration(monkeypatch, 3, third_iteration.set)
    seen, save = [], runfolder.save_grid

    def save_grid(images, path, nrow):
        if path.name == "iter_000002.png":  # its write waits for the next iterations to run
            seen.append((third_iteration.wait(30), threading.current_thread() is threading.main_thread()))
        return save(images, path, nrow=nrow)

    monkeypatch.setattr(runfolder, "save_grid", save_grid)
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 4, "--sample-every", 2, "--ckpt-every", 100) == 0
    assert seen == [(True, False)]  # written off the loop's thread, after iteration 3 had run
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["iter_000002.png", "iter_000004.png"]


def test_loss_plot_at_checkpoints_and_the_end_only(tmp_path, data, monkeypatch):
    drawn, plot = [], runfolder.plot_losses

    def plot_losses(rows, path, title=""):
        drawn.append(max(r["iter"] for r in rows))
        return plot(rows, path, title)

    monkeypatch.setattr(runfolder, "plot_losses", plot_losses)
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 7, "--sample-every", 1, "--ckpt-every", 3) == 0
    assert drawn == [3, 6, 7]  # not at each of the 7 sample grids
    assert (out / "loss.png").stat().st_size > 0


def test_img_per_s_on_the_wall_clock_with_maint_s_beside_it(tmp_path, data, monkeypatch, capsys):
    pause = 0.25
    samples = runfolder.RunFolder.samples

    def slow_samples(self, G, iteration):  # periodic work on the loop's thread
        time.sleep(pause)
        samples(self, G, iteration)

    monkeypatch.setattr(runfolder.RunFolder, "samples", slow_samples)
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 4, "--log-every", 1, "--sample-every", 1,
               "--ckpt-every", 100, "--batch-size", 8) == 0
    r, before = rows(out), 0.0
    for row in r:
        interval = row["time"] - before  # the wall clock between two log points
        before = row["time"]
        # every image of the interval over all of its time, the periodic work included (up to
        # the rounding of time to 1 ms and of img_per_s to 0.1)
        images = row["critic_steps"] * 8
        assert images / (interval + 0.0011) - 0.06 <= row["img_per_s"] <= images / (interval - 0.0011) + 0.06, row
        assert 0 <= row["maint_s"] <= interval + 0.002
    # a grid is drawn after its log point: its time is in the next row
    assert r[0]["maint_s"] < pause and all(row["maint_s"] >= pause for row in r[1:])
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    m = re.match(r"done: 4 iterations, ([\d.]+) s: ([\d.]+) s of training and ([\d.]+) s of periodic "
                 r"work \(samples, checkpoints\)\.", done[0])
    assert m, done
    total, training, periodic = map(float, m.groups())
    assert periodic >= 4 * pause and training + periodic == pytest.approx(total, abs=0.15)


def test_the_checkpoint_is_on_disk_before_the_stop_is_said(tmp_path, data, monkeypatch):
    write = ckpt_io.write_serialized

    def slow_write(buf, path):  # a slow disk: the writer is still at it when the loop stops
        time.sleep(0.5)
        return write(buf, path)

    monkeypatch.setattr(ckpt_io, "write_serialized", slow_write)
    after_iteration(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGINT))
    out, said = tmp_path / "r", []

    class Stop(loop.Stop):
        def __init__(self, message, code):
            if "checkpoint written" in message:
                said.append(ckpt_io.load(out)["iteration"])
            super().__init__(message, code)

    monkeypatch.setattr(loop, "Stop", Stop)
    assert run("--data", data, "--out", out, "--iters", 8, "--ckpt-every", 100) == 128 + signal.SIGINT
    assert said == [3]
