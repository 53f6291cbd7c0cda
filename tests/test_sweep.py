"""Sweeps: a member trains as its single run would (to fp32 rounding: grouped and plain
convolutions sum in another order), on both engines; the sweep and one member resume exactly; a
member whose loss goes non-finite stops alone; the axes are checked."""
import json

import pytest
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import train
from fastwgan.sweep.engine import Member
from fastwgan.sweep.run import SweepLoop

from tiny import assert_same_training, smoke_flags, tensors

pytestmark = pytest.mark.usefixtures("private_cache")

# Measured after 3 iterations of the smoke preset (2 critic steps each), both engines, 4 members:
# at most 2.7e-5 of the tensor's largest value (wgan; 2e-6 with the gradient penalty) for
# weights, running statistics and optimizer state, 5e-7 absolute (bench/RESULTS.md). The
# tolerance is relative to each tensor's largest value: rounding scales with the tensor, and an
# element near zero carries its neighbours' (3.7x margin). Another seed differs by 1e-3.
REL = 1e-4


def sweep_flags(data, out, *flags):
    return [*smoke_flags("wgan", data), "--out", str(out), *map(str, flags)]


def assert_close_training(a: dict, b: dict) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        worst = (ta[k].double() - tb[k].double()).abs().max().item()
        assert worst <= REL * ta[k].double().abs().max().item() + 1e-9, f"{k}: {worst:.3g}"


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_member_equals_its_single_run(tmp_path, data, backend):
    """Two learning rates x two seeds: each member's folder against its single run's after 3
    iterations; the members differ from each other."""
    out = tmp_path / "sweep"
    assert train.main([*sweep_flags(data, out, "--iters", 3, "--backend", backend),
                       "--sweep", "lr=5e-5,1e-4", "--sweep-seeds", "2"]) == 0
    state = json.loads((out / "sweep.json").read_text())
    assert [m["name"] for m in state["members"]] == [
        "lr5e-05_seed0", "lr5e-05_seed1", "lr0.0001_seed0", "lr0.0001_seed1"]
    members = {}
    for m in state["members"]:
        lr, seed = m["values"]["lr"], m["values"]["seed"]
        single = tmp_path / m["name"]
        assert train.main([*sweep_flags(data, single, "--iters", 3, "--backend", backend,
                                        "--lr", lr, "--seed", seed)]) == 0
        a, b = ckpt_io.load(single), ckpt_io.load(out / m["out"])
        assert_close_training(a, b)
        assert b["config"]["lr"] == lr and b["config"]["seed"] == seed
        assert b["data_position"] == a["data_position"] and b["iteration"] == 3
        assert torch.equal(b["rng"]["torch"], a["rng"]["torch"])  # the member's own stream
        members[m["name"]] = b
        rows_a = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
        rows_b = [json.loads(line) for line in (out / m["out"] / "metrics.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in rows_a] == [r["iter"] for r in rows_b]
        for ra, rb in zip(rows_a, rows_b):
            assert rb["loss_d"] == pytest.approx(ra["loss_d"], rel=1e-3, abs=1e-6)
    other = members["lr5e-05_seed1"]["critic"]["blocks.1.conv.weight"]
    same = members["lr5e-05_seed0"]["critic"]["blocks.1.conv.weight"]
    assert (other - same).abs().max() > 1e-3
    assert (out / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_gradient_penalty_member_equals_its_single_run(tmp_path, data, backend):
    """wgan-gp with the layer-norm critic, two penalty weights: each member's eps from its own
    stream, its penalty of its own input gradient, weighted by its own gp_weight. (Measured: 2e-6
    of each tensor's largest value after 3 iterations.)"""
    flags = [*smoke_flags("wgan-gp", data), "--critic-norm", "layer", "--iters", "3", "--backend", backend]
    out = tmp_path / "sweep"
    assert train.main([*flags, "--out", str(out), "--sweep", "gp-weight=5,10"]) == 0
    for weight in (5, 10):
        single = tmp_path / f"gp{weight}"
        assert train.main([*flags, "--out", str(single), "--gp-weight", str(weight)]) == 0
        a, b = ckpt_io.load(single), ckpt_io.load(out / "members" / f"gp{weight:g}")
        assert_close_training(a, b)
        assert torch.equal(b["rng"]["torch"], a["rng"]["torch"])


@pytest.mark.parametrize("loss", ["gan", "hinge"])
def test_adam_losses_member_equals_its_single_run(tmp_path, data, loss):
    """The objectives applied to each member's column of scores (BCE on logits, hinge), Adam with
    each member's own lr. (Measured: 7e-6 of each tensor's largest value after 2 iterations.)"""
    flags = [*smoke_flags(loss, data), "--iters", "2"]
    assert train.main([*flags, "--out", str(tmp_path / "sweep"), "--sweep", "lr=1e-4,2e-4"]) == 0
    single = tmp_path / "single"
    assert train.main([*flags, "--out", str(single), "--lr", "2e-4"]) == 0
    assert_close_training(ckpt_io.load(single), ckpt_io.load(tmp_path / "sweep" / "members" / "lr0.0002"))


def test_sweep_and_one_member_resume_exactly(tmp_path, data):
    """4 iterations at once against 2 and a resume of the whole sweep to 4 (bit for bit); then one
    member resumed alone, as a single run, continues from its own checkpoint."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    axes = ["--sweep", "lr=5e-5,1e-4"]
    assert train.main([*sweep_flags(data, once, "--iters", 4), *axes]) == 0
    assert train.main([*sweep_flags(data, twice, "--iters", 2), *axes]) == 0
    assert train.main(["--resume", str(twice), "--iters", "4", "--no-progress"]) == 0
    for name in ("lr5e-05", "lr0.0001"):
        a = ckpt_io.load(once / "members" / name)
        b = ckpt_io.load(twice / "members" / name)
        assert_same_training(a, b)
        assert torch.equal(a["log_accum"]["sums"], b["log_accum"]["sums"])
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert json.loads((twice / "sweep.json").read_text())["iteration"] == 4
    member = twice / "members" / "lr0.0001"
    assert train.main(["--resume", str(member), "--iters", "6", "--no-progress"]) == 0
    alone = ckpt_io.load(member)
    assert alone["iteration"] == 6 and alone["config"]["lr"] == 1e-4
    assert train.main(["--resume", str(once), "--iters", "6", "--no-progress"]) == 0
    assert_close_training(ckpt_io.load(once / "members" / "lr0.0001"), alone)


def test_nonfinite_member_stops_alone(tmp_path, data, monkeypatch):
    """Member 1's weights made NaN after iteration 2 (its checkpoint then written): it stops at
    the next log point with its folder and that checkpoint kept; member 0 trains on, exactly as
    in a sweep where nothing went wrong (the grouped layers keep the members apart)."""
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    common = dict(preset="smoke", data=data, data_mode="resident", workers=0, progress=False,
                  iters=4, sweep={"lr": [5e-5, 1e-4]}, log=lambda line: None)
    train(out=str(clean), **common)
    iteration = SweepLoop.iteration

    def poison(self, it):
        iteration(self, it)
        if it == 1:  # after iteration 2 and its checkpoint (ckpt_every 2)
            m: Member = self.members[1]
            with torch.no_grad():
                for p in m.G.parameters():
                    p.fill_(float("nan"))

    monkeypatch.setattr(SweepLoop, "iteration", poison)
    summary = train(out=str(poisoned), **common)
    state = json.loads((poisoned / "sweep.json").read_text())
    assert [m["state"] for m in state["members"]] == ["done", "stopped"]
    assert "NaN or Inf" in state["members"][1]["stopped"]
    assert [r["state"] for r in summary["members"]] == ["done", "stopped"]
    kept = ckpt_io.load(poisoned / "members" / "lr0.0001")
    assert kept["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in kept["generator"].values())
    assert_same_training(ckpt_io.load(clean / "members" / "lr5e-05"),
                         ckpt_io.load(poisoned / "members" / "lr5e-05"))


@pytest.mark.parametrize("axes, message", [
    (["ngf=8,16"], "one value for every member"),
    (["batch-size=8,16"], "one value for every member"),
    (["nope=1,2"], "is not a setting"),
    (["lr"], "NAME=V1,V2"),
    (["lr=a,b"], "not a list of numbers"),
])
def test_an_axis_that_cannot_differ_is_one_line(tmp_path, data, capsys, axes, message):
    assert train.main([*sweep_flags(data, tmp_path / "s"), "--sweep", *axes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "s").exists()


def test_an_axis_the_loss_does_not_use_is_refused(tmp_path, data, capsys):
    flags = [*smoke_flags("gan", data), "--out", str(tmp_path / "s"), "--sweep", "clip=0.01,0.02"]
    assert train.main(flags) == 2
    assert "does not use it" in capsys.readouterr().err


def test_more_members_than_fit_is_one_line_before_allocating(tmp_path, data, capsys, monkeypatch):
    from fastwgan.runconfig import preset_config
    from fastwgan.sweep import memory

    per = memory.member_bytes(preset_config("smoke"))["total"]
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(3.5 * per / memory.SAFETY))
    assert train.main([*sweep_flags(data, tmp_path / "s"), "--sweep-seeds", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 members need" in err[0] and "at most 3 fit" in err[0]
    assert not (tmp_path / "s").exists()


def test_paper_config_member_size():
    """The estimate for the paper's networks (64x64, width 64, batch 64, RMSprop): about 0.3 GiB
    per member, so about 196 members in 80 GB (README "Sweeps")."""
    from fastwgan.runconfig import preset_config
    from fastwgan.sweep import memory

    cfg = preset_config("paper")
    per = memory.member_bytes(cfg)
    n_params = 3_570_000 + 2_760_000  # FACTS.md: generator 3.57 M, critic 2.76 M
    assert per["parameters"] == pytest.approx(n_params * 5 * 4, rel=0.01)
    assert 150 <= memory.largest_k(cfg, 80 * 10**9) <= 250


def test_a_signal_stops_every_member_with_its_checkpoint(tmp_path, data, monkeypatch):
    """SIGTERM during iteration 2: every member writes its checkpoint there, the sweep exits 143,
    and --resume continues it as if uninterrupted."""
    import os
    import signal

    once, stopped = tmp_path / "once", tmp_path / "stopped"
    axes = ["--sweep", "lr=5e-5,1e-4"]
    assert train.main([*sweep_flags(data, once, "--iters", 4), *axes]) == 0
    iteration = SweepLoop.iteration

    def interrupted(self, it):
        if it == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        iteration(self, it)

    monkeypatch.setattr(SweepLoop, "iteration", interrupted)
    assert train.main([*sweep_flags(data, stopped, "--iters", 4), *axes]) == 128 + signal.SIGTERM
    monkeypatch.setattr(SweepLoop, "iteration", iteration)
    for name in ("lr5e-05", "lr0.0001"):
        assert ckpt_io.load(stopped / "members" / name)["iteration"] == 2
    assert train.main(["--resume", str(stopped), "--no-progress"]) == 0
    for name in ("lr5e-05", "lr0.0001"):
        assert_same_training(ckpt_io.load(once / "members" / name),
                             ckpt_io.load(stopped / "members" / name))
