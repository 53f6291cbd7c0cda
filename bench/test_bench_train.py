"""End-to-end training throughput: generator iterations/s and real images/s, every engine.

One generator iteration = n_critic (5) critic steps + one generator step, of the networks the
trainer builds (fastwgan.build): the paper's recipe on a GPU (64x64, batch 64, width 64); on a CPU
the cpu preset's (32x32, batch 64, width 32). The
images are the built-in synthetic faces: 4,000 generated CelebA-sized (178x218) JPEGs, decoded
once as training decodes CelebA (center crop 108, resize; DALI where installed, else Pillow) and
kept on the device; every row draws its real batches from them with the resident sampler, so the
rows compare training speed, not decoding (the loaders have their own benchmark,
test_bench_data.py).

Rows, all in one run on one device: the reference eager in fp32 and bf16, the reference under
``torch.compile(mode="max-autotune")``, the fast engine without graphs, and with graphs in fp32
and bf16; for ``--loss wgan-gp`` (its defaults: no warm-up phases, critic without BatchNorm) the
reference eager and the fast engine with graphs, in fp32, the latter's ratio taken to the former. ``extra_info`` carries img/s, gen_iters/s, the achieved TFLOP/s (the convolutions'
operations as torch's FlopCounterMode counts them: about 1.65 GFLOP per real image at 64x64) and,
on a GPU whose peak is known, the model FLOPs utilisation against its dense bf16 peak, the
ratio to the eager fp32 reference of the same run (when it ran first, as it does in file order) and
the projected time of the paper's schedule: 1e5 generator iterations, of which 224 are
100-critic-step phases, at the row's own sizes (the paper's recipe on a GPU; on a CPU the cpu
preset's networks, which the summary's column title says).

    pytest bench/test_bench_train.py --benchmark-only
"""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastwgan.build import build_engine, build_networks
from fastwgan.data.sampler import ResidentSampler
from fastwgan.losses import LOSSES
from fastwgan.runconfig import preset_config
from fastwgan.steps import StepConfig, make_optimizers

from conftest import device_name, synced

RECIPE_ITERS, RECIPE_PHASES = 100_000, 224  # 25 first + 199 multiples of 500 (FACTS.md)
_BASELINE: dict[str, float] = {}  # device [loss] -> eager fp32 reference seconds per iteration
_FLOPS: dict[str, int] = {}  # device [loss] -> floating-point operations of one iteration (n_critic 5)
_DATA: dict[tuple[str, int], tuple[torch.Tensor, str]] = {}  # (device, size) -> (images, loader)
# dense bf16 tensor-core peaks by datasheet (TFLOP/s), most specific name first: the denominator of
# the model FLOPs utilisation (MFU) of every row, fp32 rows included
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0)]


def bf16_peak(device) -> float | None:
    name = device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def real_images(device, image_size: int) -> tuple[torch.Tensor, str]:
    """The synthetic CelebA-sized JPEGs decoded as for training: uint8 (N, H, W, 3) on ``device``,
    and the loader's description (generated and decoded once, then read from the cache)."""
    key = (str(device), image_size)
    if key not in _DATA:
        from fastwgan.data import Batches, open_dataset

        batches = Batches(open_dataset(None), image_size, 108, 64, seed=0, device=device,
                          mode="resident")
        _DATA[key] = batches.data, batches.describe()
    return _DATA[key]


def bench_config(device, loss: str = "wgan"):
    """What the trainer would train here with ``--loss loss``: the paper's recipe on a GPU, the
    cpu preset on a CPU."""
    return preset_config(None if device.type == "cuda" else "cpu", loss)


def make(device, engine: str, amp: bool, compile_mode: str | None = None, loss: str = "wgan"):
    cfg = bench_config(device, loss)
    torch.manual_seed(0)
    G, D = build_networks(cfg, device)
    data, _ = real_images(device, cfg.image_size)
    # each engine's own layout: the reference's modules are NCHW, the fast engine's channels_last
    # on CUDA (NCHW on a CPU)
    fast_layout = engine != "reference" and device.type == "cuda"
    sampler = ResidentSampler(data, cfg.batch_size, device=device, channels_last=fast_layout)
    # every row with cuDNN's autotuner (the fast engine turns it on; the reference gets it too)
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if amp else None
    if compile_mode:
        G.forward = torch.compile(G.forward, mode=compile_mode)
        D.forward = torch.compile(D.forward, mode=compile_mode)
    backend = "reference" if engine == "reference" else "fast"
    return cfg, build_engine(cfg, G, D, sampler, device, dtype, backend=backend,
                             graphs=engine == "fast-graphs")


def row_key(device, loss: str) -> str:
    return str(device) if loss == "wgan" else f"{device} {loss}"


def baseline_seconds(device, rounds: int = 5, loss: str = "wgan") -> float:
    """Seconds per generator iteration of the eager fp32 reference, timed by hand."""
    cfg, eng = make(device, "reference", amp=False, loss=loss)
    run = synced(lambda: eng.iteration(cfg.steady_n_critic), device)
    run()
    t0 = time.perf_counter()
    for _ in range(rounds):
        run()
    return (time.perf_counter() - t0) / rounds


def iteration_flops(device, loss: str = "wgan") -> int:
    """Operations of one generator iteration (5 critic steps and the generator step) as torch's
    FlopCounterMode counts them (convolutions forward and backward, 2 per multiply-add), on a
    throwaway engine: the work every engine does, whatever its kernels."""
    key = row_key(device, loss)
    if key not in _FLOPS:
        cfg, eng = make(device, "reference", amp=False, loss=loss)
        with FlopCount() as counter:
            eng.iteration(cfg.steady_n_critic)
        _FLOPS[key] = counter.total
    return _FLOPS[key]


class FlopCount(TorchDispatchMode):
    """FlopCounterMode's formulas without its module tracker, whose backward hooks fail inside
    the gradient penalty's torch.autograd.grad (torch 2.13: "A leaf node was passed to
    _will_engine_execute_node ...")."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def measure(benchmark, device, cfg, eng, label):
    run5 = synced(lambda: eng.iteration(cfg.steady_n_critic), device)
    run100 = synced(lambda: eng.iteration(cfg.critic_warmup), device)
    for _ in range(2):  # warm-up: compilation, cuDNN algorithm search, graph capture
        run5()
    cpu = device.type == "cpu"
    benchmark.pedantic(run5, rounds=15 if cpu else 30, iterations=1 if cpu else 5)
    t5 = benchmark.stats.stats.mean
    t100 = None
    if cfg.warmup_phases:  # (wgan-gp has none: its fast engine captures no step graphs for them)
        t0 = time.perf_counter()
        run100()
        t100 = time.perf_counter() - t0
    key = row_key(device, cfg.loss)
    if label.endswith("reference eager fp32"):
        _BASELINE[key] = t5
    elif key not in _BASELINE:  # this row alone (-k): time the baseline here, in the same run
        _BASELINE[key] = baseline_seconds(device, loss=cfg.loss)
    phases = RECIPE_PHASES if cfg.warmup_phases else 0  # wgan-gp's recipe: 1e5 plain iterations
    images = cfg.n_critic * cfg.batch_size
    benchmark.extra_info.update({
        "device": device_name(device), "engine": label, "batch": cfg.batch_size,
        "data": real_images(device, cfg.image_size)[1],
        "image_size": cfg.image_size, "width": cfg.ngf,
        "img_per_s": images / t5, "gen_iters_per_s": 1 / t5,
        "s_per_100_critic_iteration": t100,
        "recipe_projected_min": ((RECIPE_ITERS - phases) * t5 + phases * (t100 or 0)) / 60,
        "speedup_vs_reference_eager_fp32": _BASELINE[key] / t5,
        "tflops": iteration_flops(device, cfg.loss) / t5 / 1e12,
    })
    peak = bf16_peak(device)
    if peak:
        benchmark.extra_info["mfu"] = benchmark.extra_info["tflops"] / peak


def test_reference_eager_fp32(benchmark, bench_device):
    cfg, eng = make(bench_device, "reference", amp=False)
    measure(benchmark, bench_device, cfg, eng, "reference eager fp32")


def test_reference_eager_bf16(benchmark, bench_device):
    cfg, eng = make(bench_device, "reference", amp=True)
    measure(benchmark, bench_device, cfg, eng, "reference eager bf16")


def test_fast_eager(benchmark, bench_device):
    cfg, eng = make(bench_device, "fast", amp=False)
    measure(benchmark, bench_device, cfg, eng, f"fast eager fp32 ({eng.impl} kernels)")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_fast_graphs(benchmark, bench_device, amp):
    cfg, eng = make(bench_device, "fast-graphs", amp=amp)
    for _ in range(2):  # warm-up and capture: a failed capture (eager fallback) is no graphs row
        eng.iteration(cfg.steady_n_critic)
    torch.cuda.synchronize()
    assert eng.capture_error is None and eng.use_graphs, eng.capture_error
    measure(benchmark, bench_device, cfg, eng, f"fast graphs {'bf16' if amp else 'fp32'}")


def test_wgan_gp_reference_eager(benchmark, bench_device):
    cfg, eng = make(bench_device, "reference", amp=False, loss="wgan-gp")
    measure(benchmark, bench_device, cfg, eng, "wgan-gp reference eager fp32")


@pytest.mark.gpu
def test_wgan_gp_fast_graphs(benchmark, bench_device):
    cfg, eng = make(bench_device, "fast-graphs", amp=False, loss="wgan-gp")
    for _ in range(2):  # warm-up and capture (the double backward included)
        eng.iteration(cfg.steady_n_critic)
    torch.cuda.synchronize()
    assert eng.capture_error is None and eng.use_graphs, eng.capture_error
    measure(benchmark, bench_device, cfg, eng, "wgan-gp fast graphs fp32")


# --- single steps (the reference), for the per-phase cost ---

@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_reference_critic_step(benchmark, bench_device, amp):
    cfg = bench_config(bench_device)
    loss = LOSSES[cfg.loss]
    torch.backends.cudnn.benchmark = True  # as every row of make()
    torch.manual_seed(0)
    G, D = build_networks(cfg, bench_device)
    opt_g, opt_d = make_optimizers(G, D, loss.optimizer, cfg.learning_rate, cfg.adam_betas)
    B, size = cfg.batch_size, cfg.image_size
    real = torch.rand(B, 3, size, size, device=bench_device) * 2 - 1
    z = torch.randn(B, cfg.nz, device=bench_device)
    step_cfg = StepConfig(cfg.clip, torch.bfloat16 if amp else None)
    step = synced(lambda: loss.critic_step(G, D, opt_d, real, z, step_cfg), bench_device)
    step()
    benchmark.pedantic(step, rounds=5 if bench_device.type == "cpu" else 50, iterations=1)
    benchmark.extra_info.update({"device": device_name(bench_device), "batch": B,
                                 "img_per_s": B / benchmark.stats.stats.mean})


# Last: Inductor's max-autotune may take minutes to compile (device_check.sh runs it on its own).
@pytest.mark.gpu
def test_reference_compiled(benchmark, bench_device):
    mode = os.environ.get("FASTWGAN_BENCH_COMPILE_MODE", "max-autotune")
    cfg, eng = make(bench_device, "reference", amp=False, compile_mode=mode)
    measure(benchmark, bench_device, cfg, eng, f"reference torch.compile({mode}) fp32")
