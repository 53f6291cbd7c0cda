"""The kernel ledger (bench/ledger.py, bench/kernel_count.py): counts checked by hand on a tiny
network, FLOPs equal to torch's FlopCounterMode, fused ops counted as their Triton launches."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("bench_ledger", BENCH / "ledger.py")
ledger = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ledger)

from kernel_count import KernelLedger  # noqa: E402

from fastwgan.kernels import _launches as launches  # noqa: E402
from fastwgan.kernels.bn_act import bn_act, bn_act_ref  # noqa: E402
from fastwgan.kernels.rmsprop_clip import rmsprop_clip_ref  # noqa: E402
from fastwgan.runconfig import preset_config  # noqa: E402


def tiny_config():
    return preset_config("cpu", "wgan", image_size=32, batch_size=8, ngf=8, ndf=8)


def test_a_tiny_network_counted_by_hand():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    x = torch.randn(2, 3, 5, 5)
    torch.relu(conv(x)).sum().backward()  # the weight's .grad exists: the next one accumulates
    with KernelLedger() as count:
        torch.relu(conv(x)).sum().backward()
    t = count.tally
    # forward: convolution, relu, sum (1 each); the loss's seed gradient: ones_like (1);
    # backward: sum's expand is a view (0), threshold_backward (1), convolution_backward returns
    # the weight's gradient only (1: x needs none), accumulated into .grad with add_ (1)
    assert t.kernels == 7
    assert {k: v[0] for k, v in t.by_kind.items() if v[0]} == {
        "conv": 2, "bn_act": 2, "bookkeeping": 2, "gradient glue": 1}
    # conv forward reads x (600 B) and w (432), writes y (288); backward reads dy, x, w and
    # writes dw (288 + 600 + 432 + 432)
    assert t.by_kind["conv"][1] == 1320 + 1752
    # 2 * 4 * 9 outputs of 27 multiply-adds each, 2 FLOPs per multiply-add, forward and dw
    assert t.by_kind["conv"][2] == (2 * 4 * 9 * 27) * 2 * 2


def test_flops_equal_flop_counter_mode_on_a_critic_step():
    cfg = tiny_config()
    eng = ledger.make_engine(cfg, "fast fp32", torch.device("cpu"))
    with KernelLedger():
        eng.iteration(1)  # state; under a ledger, as every run of this engine
    state = [t.clone() for t in (eng.opt_d.buffers().param, eng.opt_d.buffers().square_avg)]
    rng = torch.get_rng_state()
    with KernelLedger() as count:
        eng.critic()
    with torch.no_grad():
        eng.opt_d.buffers().param.copy_(state[0])
        eng.opt_d.buffers().square_avg.copy_(state[1])
    torch.set_rng_state(rng)
    with FlopCounterMode(display=False) as reference, KernelLedger():
        eng.critic()
    assert count.tally.flops == reference.get_total_flops() > 0


def test_bn_act_twin_counts_as_its_triton_launches():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w, b = torch.rand(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    with KernelLedger() as count:
        y = bn_act(x, w, b, rm, rv, act="leaky_relu", impl="ref")
        y.backward(torch.ones_like(y))
    ops = {op: k for op, (k, _) in count.tally.by_op.items() if k}
    # stats partial (its last program finalizes), apply; grad partial (the same), dx; the seed
    assert ops == {"bn_act: triton bn_stats_partial+finalize": 1, "bn_act: triton bn_act_fwd": 1,
                   "bn_act: triton bn_act_bwd_partial+finalize": 1,
                   "bn_act: triton bn_act_bwd_dx": 1, "bookkeeping: ones_like": 1}
    # the same values as the twin outside a ledger
    x2 = x.detach().clone().requires_grad_()
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    y2 = bn_act_ref(x2, w2, b2, torch.zeros(3), torch.ones(3), act="leaky_relu")
    y2.backward(torch.ones_like(y2))
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    for a, r in ((x, x2), (w, w2), (b, b2)):
        torch.testing.assert_close(a.grad, r.grad, rtol=0, atol=0)


def test_rmsprop_twin_counts_as_one_launch():
    p, g, v = torch.zeros(100), torch.ones(100), torch.zeros(100)
    with KernelLedger() as count:
        rmsprop_clip_ref(p, g, v, 1e-3, 0.99, 1e-8, 0.01)
    assert (count.tally.kernels, count.tally.bytes) == (1, 20 * 100)
    assert dict(count.tally.by_kind)["optimizer"][0] == 1
    assert not launches.listening()


@pytest.mark.parametrize("engine", ["eager fp32", "fast bf16"])
def test_rows_per_step_and_an_iteration_is_its_steps(engine):
    cfg = tiny_config()
    rows = ledger.engine_rows(cfg, engine, torch.device("cpu"))
    by_step = {r["step"]: r for r in rows}
    assert set(by_step) == {"critic", "generator", "iteration"}
    n = cfg.steady_n_critic
    for key in ("kernels", "flops", "bytes"):
        assert by_step["iteration"][key] == n * by_step["critic"][key] + by_step["generator"][key]
    for r in rows:
        assert sum(k["kernels"] for k in r["by_kind"].values()) == r["kernels"]
        assert r["modeled_us"]["H100 SXM"]["total"] > 0
    text = ledger.table(rows, cfg, torch.device("cpu"))
    assert "modeled" in text and f"| {engine} | critic | {by_step['critic']['kernels']} |" in text
