"""Damaged checkpoints that load: refused in one line by --resume, sample and eval, before any
file is written."""
import pytest
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import sample, train
from fastwgan.eval import main as eval_main

from oddfiles import make_good_folder


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    make_good_folder(tmp / "data", n=10)
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTWGAN_CACHE", str(tmp / "cache"))
    try:
        assert train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data",
                           str(tmp / "data"), "--out", str(tmp / "run"), "--iters", "2"]) == 0
    finally:
        mp.undo()
    return torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)


def without(key):
    return lambda ck: ck.pop(key)


def wider_generator(ck):
    ck["config"]["ngf"] = 16


def set_value(key, value):
    return lambda ck: ck.__setitem__(key, value)


def wrong_square_avg(ck):
    ck["opt_d"]["state"][0]["square_avg"] = torch.zeros(3)


def drop_weight(ck):
    ck["critic"].pop(next(iter(ck["critic"])))


def int_weights(ck):
    k = next(iter(ck["generator"]))
    ck["generator"][k] = ck["generator"][k].long()


DAMAGE = {
    "no iteration": (without("iteration"), "has no 'iteration'"),
    "no rng": (without("rng"), "has no 'rng'"),
    "widths": (wider_generator, "the generator does not match its config"),
    "iteration a str": (set_value("iteration", "2"), "'iteration' is a str"),
    "critic a list": (set_value("critic", []), "'critic' is a list"),
    "square_avg shape": (wrong_square_avg, "'opt_d' does not fit the critic"),
    "missing weight": (drop_weight, "the critic does not match its config"),
    "integer weights": (int_weights, "the generator does not match its config"),
    "bad config": (lambda ck: ck["config"].__setitem__("batch_size", "x"), "config is not valid"),
}


def damaged(good, tmp_path, how):
    ck = {**good, "config": dict(good["config"]), "critic": dict(good["critic"]),
          "generator": dict(good["generator"]),
          "opt_d": {**good["opt_d"], "state": {i: dict(s) for i, s in good["opt_d"]["state"].items()}}}
    DAMAGE[how][0](ck)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ck, run / "checkpoint.pt")
    (run / "train.log").write_text("earlier\n")
    return run


def snapshot(run):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.iterdir()}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_resume_refuses_a_damaged_checkpoint_before_writing(good, tmp_path, capsys, how):
    run = damaged(good, tmp_path, how)
    before = snapshot(run)
    assert train.main(["--resume", str(run), "--iters", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and DAMAGE[how][1] in err[0], err
    assert snapshot(run) == before  # nothing written


@pytest.mark.parametrize("how", ["widths", "integer weights", "iteration a str", "critic a list"])
def test_sample_and_eval_refuse_a_damaged_checkpoint(good, tmp_path, capsys, how):
    run = damaged(good, tmp_path, how)
    assert sample.main([str(run), "--n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and DAMAGE[how][1] in err[0], err
    assert not (run / "grid.png").exists()
    assert eval_main([str(run), "--n", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and DAMAGE[how][1] in err[0], err


def test_sample_reads_a_checkpoint_without_training_state(good, tmp_path):
    """Sampling needs the config and the generator only."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": good["config"], "generator": good["generator"]}, run / "checkpoint.pt")
    assert sample.main([str(run), "--n", "4"]) == 0
    with pytest.raises(ckpt_io.CheckpointError, match="has no 'critic'"):
        ckpt_io.load(run, resume=True)
