"""What a new user meets first: one-line errors for bad flags, --amp on a CPU without bf16,
--threads, the resume message, sample seeds apart from the training grid, DALI as an extra."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastwgan import device, sample, train
from fastwgan.config import Config
from fastwgan.data.batches import dali_missing_note

from tiny import run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize("argv", [
    ["--image-size", "48"],        # not among the choices
    ["--batch-size", "x"],         # not a number
    ["--data-mode", "disk"],
    ["--no-such-flag"],
    ["--threads", "-1"],
    ["--tb-histograms", "-2"],
    ["--tb-histograms", "5"],     # without --tensorboard
])
def test_bad_train_flag_is_one_line(argv, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "usage" not in err


@pytest.mark.parametrize("argv", [["--n", "x"], ["--device", "tpu"], ["--steps", "1"], ["--gif", "w.gif"],
                                  ["--seed", "-1"]])
def test_bad_sample_flag_is_one_line(argv, capsys):
    assert sample.main(["runs/none", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "usage" not in err


@pytest.mark.parametrize("text,expected", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n", False),                 # AVX2 only
    ("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),               # Arm
    ("", None),                                                             # says nothing
])
def test_cpu_bf16_from_the_flags(tmp_path, text, expected):
    (tmp_path / "cpuinfo").write_text(text)
    assert device.cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is expected
    assert device.cpu_has_native_bf16(str(tmp_path / "missing")) is None


def test_amp_on_a_cpu_without_bf16_keeps_fp32(monkeypatch):
    lines = []
    cfg = Config(amp=True)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.amp_dtype(cfg, torch.device("cpu"), lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("warning: --amp") and "fp32" in lines[0]
    lines.clear()
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.amp_dtype(cfg, torch.device("cpu"), lines.append) is torch.bfloat16 and not lines


def test_threads_flag_and_log(tmp_path, data):
    before = torch.get_num_threads()
    try:
        assert run("--data", data, "--out", tmp_path / "r", "--iters", 1, "--threads", 1) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert ", 1 CPU threads, engine:" in (tmp_path / "r" / "train.log").read_text()


def test_resume_says_what_was_dropped_only_when_something_was(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    shutil.copy(out / "checkpoint.pt", tmp_path / "at2.pt")
    assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 0
    log = (out / "train.log").read_text()
    assert "resumed from iteration 2" in log and "not kept" not in log  # nothing logged past 2
    # back to the checkpoint of iteration 2: rows 3 and 4 are dropped, and the log says so
    shutil.copy(tmp_path / "at2.pt", out / "checkpoint.pt")
    assert train.main(["--resume", str(out), "--iters", "3", "--no-progress"]) == 0
    last = (out / "train.log").read_text()[len(log):]
    assert "resumed from iteration 2 (what the log above says of later iterations was not kept)" in last


def test_sample_seeds_never_reproduce_the_training_grid(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0  # seed 0: the grid's noise is seed 1
    trained = np.asarray(Image.open(out / "samples" / "iter_000002.png"))
    for seed in range(3):
        grid = tmp_path / f"g{seed}.png"
        assert sample.main([str(out), "--n", "64", "--nrow", "8", "--seed", str(seed), "--out", str(grid)]) == 0
        assert not np.array_equal(np.asarray(Image.open(grid)), trained), seed
    # and a seed gives the same images every time
    assert sample.main([str(out), "--n", "64", "--nrow", "8", "--seed", "0", "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").read_bytes() == (tmp_path / "g0.png").read_bytes()


def test_a_cuda_run_without_dali_says_so_in_one_line():
    note = dali_missing_note("auto", "pillow", torch.device("cuda"))
    assert "Pillow" in note and "pip install 'fastwgan[dali]'" in note and "\n" not in note
    assert dali_missing_note("auto", "pillow", torch.device("cpu")) == ""  # the CPU default
    assert dali_missing_note("pillow", "pillow", torch.device("cuda")) == ""  # asked for
    assert dali_missing_note("auto", "dali", torch.device("cuda")) == ""


def test_without_dali_everything_imports_and_its_tests_skip_with_the_reason():
    """DALI is an extra: with ``nvidia.dali`` made unimportable, the trainer picks Pillow and the
    DALI tests are skipped, saying how to install it."""
    code = ("import sys; sys.modules['nvidia.dali'] = None\n"
            "import fastwgan.train, fastwgan.eval, fastwgan.sample, fastwgan.data.dali\n"
            "from fastwgan.data import resolve_backend\n"
            "print('backend', resolve_backend('auto'))\n"
            "import pytest\n"
            "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', 'tests/test_dali.py']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 5, p.stdout + p.stderr  # pytest's "no tests ran": the module skipped
    assert "backend pillow" in p.stdout and "1 skipped" in p.stdout
    assert "NVIDIA DALI is not installed (pip install 'fastwgan[dali]')" in p.stdout


def test_idle_cores_from_the_kernels_counters(tmp_path, monkeypatch):
    # two readings of /proc/stat's first line: 100 jiffies passed, 40 of them idle or iowait
    stat = tmp_path / "stat"
    lines = iter(["cpu  100 0 50 800 50 0 0 0 0 0\n", "cpu  150 0 60 830 60 0 0 0 0 0\n"])
    monkeypatch.setattr(device.time, "sleep", lambda s: stat.write_text(next(lines)))
    stat.write_text(next(lines))
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    assert device.idle_cores(0.0, str(stat)) == pytest.approx(2 * 40 / 100)
    assert device.idle_cores(0.0, str(tmp_path / "missing")) is None


@pytest.mark.parametrize("idle, requested, env, expected, noted", [
    (0.9, 0, None, 1, True),      # one of two cores busy: one thread, and the log says why
    (1.8, 0, None, 2, False),     # a quiet machine keeps torch's default
    (None, 0, None, 2, False),    # a system that does not say: the default
    (0.2, 0, "2", 2, False),      # OMP_NUM_THREADS decides
    (0.2, 2, None, 2, False),     # so does --threads
])
def test_threads_follow_the_load_at_the_start(monkeypatch, idle, requested, env, expected, noted):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        if env is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", env)
        threads, note = device.threads_for_load(requested, idle=lambda: idle)
        assert threads == expected == torch.get_num_threads()
        assert (note is not None) == noted
        if noted:
            assert note.startswith("note: 1.1 of 2 cores were busy at the start: training with 1 CPU thread")
    finally:
        torch.set_num_threads(before)
