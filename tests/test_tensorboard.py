"""--tensorboard: the event files read back with TensorBoard's own reader match metrics.jsonl, and a
resumed run continues the same curves without duplicate steps."""
import json
import shutil
import sys

import pytest

from fastwgan import train
from fastwgan.tensorboard import SCALAR_TAGS, scalar_items

import tiny

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install 'fastwgan[tensorboard]')")

pytestmark = pytest.mark.usefixtures("private_cache")


def run(*args):
    return tiny.run("--tensorboard", *args)


def read_events(out):
    acc = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def assert_scalars_match(out):
    acc, rows = read_events(out), metrics(out)
    expected = {}
    for r in rows:
        for tag, value in scalar_items(r):
            expected.setdefault(tag, []).append((r["iter"], value))
    assert set(expected) <= set(acc.Tags()["scalars"])
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag  # each step once, in order
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag
    return acc, rows


def test_events_match_metrics(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 4, "--tb-histograms", 2, "--eval-every", 4,
               "--eval-n", 16) == 0
    acc, rows = assert_scalars_match(out)
    tags = acc.Tags()
    for key in ("wdist", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "swd"):
        assert SCALAR_TAGS[key] in tags["scalars"], key
    assert "eval/swd_level0" in tags["scalars"] and len(rows[-1]["swd_levels"]) >= 1
    assert [e.step for e in acc.Images("samples")] == [2, 4]  # --sample-every 2 (smoke)
    assert [e.step for e in acc.Images("real_samples")] == [0]
    img = acc.Images("samples")[0]
    assert (img.width, img.height) == (8 * 34 + 2, 8 * 34 + 2)  # the 8x8 grid of 32x32 images
    hist = [t for t in tags["histograms"]]
    assert any(t.startswith("weights/G/") for t in hist) and any(t.startswith("grads/D/") for t in hist)
    assert [e.step for e in acc.Histograms(hist[0])] == [2, 4]


def test_resume_purges_the_steps_after_the_checkpoint(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 2) == 0
    shutil.copy(out / "checkpoint.pt", tmp_path / "at2.pt")
    assert train.main(["--resume", str(out), "--iters", "4", "--no-progress"]) == 0
    # back to iteration 2, as after a crash between checkpoints: steps 3 and 4 are trained again
    shutil.copy(tmp_path / "at2.pt", out / "checkpoint.pt")
    assert train.main(["--resume", str(out), "--iters", "5", "--no-progress"]) == 0
    acc, rows = assert_scalars_match(out)
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5]
    assert [e.step for e in acc.Images("real_samples")] == [0]
    assert [e.step for e in acc.Images("samples")] == [2, 4, 5]
    # into another folder: the curves go along
    assert train.main(["--resume", str(out), "--out", str(tmp_path / "b"), "--iters", "6", "--no-progress"]) == 0
    assert [r["iter"] for r in assert_scalars_match(tmp_path / "b")[1]] == [1, 2, 3, 4, 5, 6]


def test_fresh_run_starts_new_curves(tmp_path, data):
    out = tmp_path / "r"
    assert run("--data", data, "--out", out, "--iters", 3) == 0
    assert run("--data", data, "--out", out, "--iters", 2, "--overwrite") == 0
    assert [r["iter"] for r in assert_scalars_match(out)[1]] == [1, 2]


def test_missing_package_is_one_line(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert run("--data", data, "--out", tmp_path / "r", "--iters", 1) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --tensorboard needs the tensorboard package: pip install 'fastwgan[tensorboard]'"
    assert not (tmp_path / "r").exists()


def test_off_by_default(tmp_path, data):
    assert train.main([*tiny.TINY, "--data", data, "--out", str(tmp_path / "r"), "--iters", "1"]) == 0
    assert not (tmp_path / "r" / "tb").exists()
