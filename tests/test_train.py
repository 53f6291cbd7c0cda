"""The trainer end to end: outputs, exact resume, signals, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastwgan import build
from fastwgan import run as run_module
from fastwgan import checkpoint as ckpt_io
from fastwgan import sample, train

from oddfiles import make_good_folder, make_odd_folder
from tiny import TINY, after_iteration, run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("private_cache")


def test_every_output(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert run("--data", data, "--out", out, "--iters", 4) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["iters"] == 4 and cfg["ngf"] == 8 and cfg["data"] == data
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"time", "wdist", "loss_d", "loss_g", "img_per_s"} <= set(r)
        assert r["wdist"] == pytest.approx(-r["loss_d"], abs=1e-6)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["iter_000002.png", "iter_000004.png"]
    for png in ["real_samples.png", "loss.png", "samples/iter_000004.png"]:
        assert (out / png).stat().st_size > 100
    ck = ckpt_io.load(out)
    assert ck["iteration"] == 4 and {"generator", "critic", "opt_g", "opt_d", "rng", "config"} <= set(ck)
    assert "done: 4 iterations" in capsys.readouterr().out
    # the sample CLI reads it
    assert sample.main([str(out), "--n", "10", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists()
    # the same --out again is refused rather than overwritten
    assert run("--data", data, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err


def states(path):
    ck = ckpt_io.load(path)
    return ck, {**{f"G.{k}": v for k, v in ck["generator"].items()},
                **{f"D.{k}": v for k, v in ck["critic"].items()}}


def test_resume_is_exact(tmp_path, data):
    # n_critic 2 with 3-step warm-up phases; 10 images in batches of 4: epochs end mid-run
    common = ["--data", data, "--n-critic", 2, "--n-critic-warmup", 3, "--batch-size", 4,
              "--ckpt-every", 100, "--sample-every", 100]
    assert run(*common, "--out", tmp_path / "once", "--iters", 6) == 0
    assert run(*common, "--out", tmp_path / "twice", "--iters", 3) == 0
    assert run("--resume", tmp_path / "twice", "--iters", 6, "--no-progress") == 0
    a, sa = states(tmp_path / "once")
    b, sb = states(tmp_path / "twice")
    assert a["iteration"] == b["iteration"] == 6 and a["data_position"] == b["data_position"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for opt in ("opt_g", "opt_d"):
        for i, s in a[opt]["state"].items():
            assert torch.equal(s["square_avg"], b[opt]["state"][i]["square_avg"])
    rows = [json.loads(l) for l in (tmp_path / "twice" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_networks(tmp_path, data, capsys):
    assert run("--data", data, "--out", tmp_path / "r", "--iters", 2) == 0
    assert train.main(["--resume", str(tmp_path / "r"), "--ngf", "16"]) == 2
    assert "differs from the checkpoint" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("flag,value", [
    ("--lr", "0"), ("--lr", "-1"), ("--n-critic", "0"), ("--batch-size", "1"), ("--image-size", "48"),
    ("--clip", "0"), ("--iters", "0"), ("--preset", "nope"), ("--device", "tpu"), ("--batch-size", "x"),
    ("--seed", "-1"), ("--seed", str(2**32)), ("--workers", "-5"), ("--clip", "inf"), ("--lr", "inf"),
])
def test_bad_flags_exit_2(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        code = train.main([flag, value])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_bad_folders_exit_2(tmp_path, capsys):
    assert run("--data", tmp_path / "missing", "--out", tmp_path / "a") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.jpg").write_text("not an image")
    assert run("--data", tmp_path / "junk", "--out", tmp_path / "b") == 2
    assert "could be read" in capsys.readouterr().err


def test_odd_folder_trains(tmp_path, capsys):
    make_odd_folder(tmp_path / "odd")
    assert run("--data", tmp_path / "odd", "--out", tmp_path / "r", "--iters", 2, "--crop", 40) == 0
    assert "skipped 4 unusable file(s)" in capsys.readouterr().out


def test_nan_stops_and_keeps_last_checkpoint(tmp_path, data, monkeypatch, capsys):
    import dataclasses

    from fastwgan.losses import LOSSES

    real_step = LOSSES["wgan"].generator_step
    calls = []

    def poisoned(G, D, opt, z, cfg):
        calls.append(1)
        out = real_step(G, D, opt, z, cfg)
        if len(calls) >= 3:  # from the third generator step on
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))
            out["loss_g"] = out["loss_g"] * float("nan")
        return out

    monkeypatch.setitem(LOSSES, "wgan", dataclasses.replace(LOSSES["wgan"], generator_step=poisoned))
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 6, "--ckpt-every", 2) == 1
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and "iteration 2" in err
    assert ckpt_io.load(out)["iteration"] == 2  # the good one, untouched


def test_sigint_writes_checkpoint_and_resumes(tmp_path, data):
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "fastwgan.train", *TINY, "--data", data, "--out", str(out),
                          "--iters", "100000", "--ckpt-every", "100000", "--sample-every", "100000",
                          "--log-every", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGINT, stderr
    assert "SIGINT" in stderr and "--resume" in stderr
    it = ckpt_io.load(out)["iteration"]
    assert it >= 3
    assert train.main(["--resume", str(out), "--iters", str(it + 1), "--no-progress"]) == 0
    assert ckpt_io.load(out)["iteration"] == it + 1


def test_sample_cli_errors(tmp_path, capsys):
    assert sample.main([str(tmp_path / "none.pt")]) == 2
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert sample.main([str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "damaged" in err and "weights_only" not in err
    (tmp_path / "empty.pt").write_bytes(b"")
    assert sample.main([str(tmp_path / "empty.pt")]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_sample_cli_formats(tmp_path, data, capsys):
    from PIL import Image

    assert run("--data", data, "--out", tmp_path / "r", "--iters", 1) == 0
    ck = str(tmp_path / "r")
    assert sample.main([ck, "--n", "4", "--out", str(tmp_path / "g.jpg")]) == 0
    assert Image.open(tmp_path / "g.jpg").format == "JPEG"
    for bad in (["--nrow", "0"], ["--out", str(tmp_path / "g.txt")]):
        assert sample.main([ck, *bad]) == 2
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "g.txt").exists()


def test_resume_into_another_run_is_refused(tmp_path, data, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run("--data", data, "--out", a, "--iters", 2) == 0
    assert run("--data", data, "--out", b, "--iters", 4) == 0
    before = (b / "metrics.jsonl").read_text()
    assert train.main(["--resume", str(a), "--out", str(b), "--iters", "3", "--no-progress"]) == 2
    assert "already holds another run" in capsys.readouterr().err
    assert (b / "metrics.jsonl").read_text() == before and ckpt_io.load(b)["iteration"] == 4
    # into a new folder: the history goes along
    assert train.main(["--resume", str(a), "--out", str(c), "--iters", "3", "--no-progress"]) == 0
    rows = [json.loads(l) for l in (c / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3] and ckpt_io.load(a)["iteration"] == 2
    # --overwrite replaces b with a's continuation, and none of b's own files remain
    assert train.main(["--resume", str(a), "--out", str(b), "--iters", "3", "--no-progress",
                       "--overwrite"]) == 0
    assert sorted(p.name for p in (b / "samples").iterdir()) == ["iter_000003.png"]  # the last
    assert ckpt_io.load(b)["iteration"] == 3


def test_overwrite_leaves_nothing_of_the_old_run(tmp_path, data, capsys):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 4) == 0
    old_real = (out / "real_samples.png").read_bytes()
    assert run("--data", data, "--out", out, "--iters", 2, "--overwrite", "--image-size", 64) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["iter_000002.png"]
    assert (out / "real_samples.png").read_bytes() != old_real  # 64x64 now
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]
    log = (out / "train.log").read_text()
    assert log.count("--- ") == 1 and "done: 2 iterations" in log and "iter 2/2" in log
    assert not (out / ".replaced").exists()  # the old run, kept aside until the first checkpoint


def test_overwrite_that_fails_to_start_loses_nothing(tmp_path, data, monkeypatch):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0

    def broken(*a, **k):
        raise train.Stop("the engine could not start", 1)

    monkeypatch.setattr(build, "build_engine", broken)
    assert run("--data", data, "--out", out, "--iters", 2, "--overwrite") == 1
    assert ckpt_io.load(out / ".replaced")["iteration"] == 2
    assert (out / ".replaced" / "samples" / "iter_000002.png").exists()
    assert "kept in" in (out / "train.log").read_text()


def test_second_signal_stops_at_once(tmp_path, data, monkeypatch, capsys):
    real_make_engine = build.build_engine

    def twice_interrupted(*a, **k):
        engine = real_make_engine(*a, **k)
        iteration = engine.iteration

        def interrupted(n):
            iteration(n)
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the second: at once

        engine.iteration = interrupted
        return engine

    monkeypatch.setattr(build, "build_engine", twice_interrupted)
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 5, "--ckpt-every", 100) == 128 + signal.SIGTERM
    assert "interrupted" in capsys.readouterr().err
    assert "stopped at once by a second SIGTERM" in (out / "train.log").read_text()
    assert not (out / "checkpoint.pt").exists()


def test_interrupted_run_logs_the_same_rows(tmp_path, data, monkeypatch):
    """A checkpoint between log points keeps the partial averages: the resumed run's rows are the
    uninterrupted run's."""
    common = ["--data", data, "--log-every", 4, "--ckpt-every", 100, "--sample-every", 100]
    assert run(*common, "--out", tmp_path / "once", "--iters", 8) == 0

    real_make_engine = build.build_engine
    after_iteration(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGINT))
    assert run(*common, "--out", tmp_path / "twice", "--iters", 8) == 128 + signal.SIGINT
    monkeypatch.setattr(build, "build_engine", real_make_engine)
    assert ckpt_io.load(tmp_path / "twice")["iteration"] == 3
    assert train.main(["--resume", str(tmp_path / "twice"), "--no-progress"]) == 0
    rows = [[json.loads(l) for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("once", "twice")]
    keys = ("iter", "loss_d", "loss_g", "wdist", "critic_steps")
    assert [[r[k] for k in keys] for r in rows[1]] == [[r[k] for k in keys] for r in rows[0]]


def test_gan_notes_ignored_flags(tmp_path, data, capsys):
    assert run("--data", data, "--out", tmp_path / "r", "--iters", 1, "--loss", "gan", "--n-critic", 5) == 0
    assert "--n-critic ignored" in capsys.readouterr().out


def test_ctrl_c_before_training_is_one_line(tmp_path, data, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "open_dataset", interrupted)
    assert run("--data", data, "--out", tmp_path / "r") == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a run that never started leaves no folder


def test_help_groups_flags():
    r = subprocess.run([sys.executable, "-m", "fastwgan.train", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0
    for title in ("run and outputs:", "data:", "model (DCGAN", "training:", "--n-critic-warmup", "--amp"):
        assert title in r.stdout


@pytest.mark.parametrize("extra", [["--amp"], ["--loss", "gan"]])
def test_amp_and_gan_train(tmp_path, data, extra):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2, *extra) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_d"] == r["loss_d"] for r in rows)  # finite, not NaN
    if "gan" in extra:
        assert rows[0]["wdist"] is None and rows[0]["critic_steps"] == 1


def test_eval_every_writes_swd(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 4, "--eval-every", 2, "--eval-n", 16,
               "--log-every", 3) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [2, 3, 4]  # eval points get a row of their own
    assert [("swd" in r) for r in rows] == [True, False, True]
    assert rows[0]["swd"] > 0 and len(rows[0]["swd_levels"]) == 2  # 32 and 16
    assert rows[0]["swd"] == pytest.approx(sum(rows[0]["swd_levels"]) / 2)


@pytest.mark.parametrize("backend", ["pillow", "dali"])
def test_damaged_jpeg_is_reported_once(tmp_path, backend, capsys):
    """A JPEG with good markers but damaged data passes the scan; the resident decode replaces it
    by the next image and says so in one line, on the first run and from the cache alike."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastwgan[dali]')")
    files = make_good_folder(tmp_path / "d", n=10)
    raw = bytearray(files[3].read_bytes())
    rng = __import__("random").Random(0)
    for i in range(600, len(raw) - 2):
        raw[i] = rng.randrange(256)
    files[3].write_bytes(bytes(raw))
    for attempt in range(2):
        out = tmp_path / f"r{attempt}"
        assert run("--data", tmp_path / "d", "--out", out, "--iters", 1, "--data-mode", "resident",
                   "--data-backend", backend) == 0
        log = capsys.readouterr().out
        assert log.count("could not be decoded") == 1 and "1 of 10 image(s)" in log and "003.jpg" in log, log
        assert ("from the cache" in log) == (attempt == 1)
        assert "could not be decoded" in (out / "train.log").read_text()
