"""BatchNorm + activation of every DCGAN 64x64 block: fused Triton against eager and torch.compile.

Rows: (block shape, activation) x batch {64, 128} x dtype x {fwd, fwd+bwd} x provider, where
provider is "triton" (``bn_act``), "eager" (F.batch_norm then F.relu / F.leaky_relu) or "compile"
(torch.compile of that same eager function: Inductor's fused BN+activation, the baseline to beat).
Training mode (batch statistics, running stats updated), channels_last, fp32 parameters.

extra_info: microseconds (median) and GB/s. The byte count is the fused kernels' traffic, the same
for every provider so that GB/s compares like time: forward 3 passes over the activation (read x
for the statistics, read x again, write y), backward 5 (read x and dy for the sums, read them
again, write dx): fwd+bwd 8. Compare providers only within one run on one device (the group).

On CPU only the eager rows of one small block run (a smoke run that keeps the file honest); the
Triton rows would time the interpreter and the compile rows would time Inductor's C++ backend,
neither of which says anything about the GPU.

``test_bench_bn_act_graph`` times the Triton and eager rows again inside CUDA graphs
(``triton.testing.do_bench_cudagraph``: many calls unrolled in one graph, timed with CUDA events),
so that neither the host's launch overhead nor a synchronisation per call is in the number, and
sets beside each the device's copy bandwidth at the same byte count (a ``copy_`` moving the same
bytes, timed the same way in the same test): ``of_copy`` is the fraction of that ceiling reached.
Batch 64 only. These rows skip on a CPU (no CUDA graphs).

    pytest bench/test_bench_bn_act.py --benchmark-only [--benchmark-json out.json]
    FASTWGAN_BENCH_DTYPES=bfloat16 pytest bench/...   # one dtype (default: bfloat16,float32)
"""
from __future__ import annotations

import datetime
import os

import pytest
import torch

from conftest import copy_seconds, device_name, synced, timed_in_graph
from fastwgan.kernels import bn_act, bn_act_ref

BLOCKS = [  # (net, H = W, C, act): every BatchNorm block of the 64x64 DCGAN, ngf = ndf = 64
    ("generator", 4, 512, "relu"),
    ("generator", 8, 256, "relu"),
    ("generator", 16, 128, "relu"),
    ("generator", 32, 64, "relu"),
    ("critic", 32, 64, "leaky_relu"),  # the critic's first layer has no BN; here for completeness
    ("critic", 16, 128, "leaky_relu"),
    ("critic", 8, 256, "leaky_relu"),
    ("critic", 4, 512, "leaky_relu"),
]
BATCHES = [64, 128]
DTYPES = [getattr(torch, name) for name in
          os.environ.get("FASTWGAN_BENCH_DTYPES", "bfloat16,float32").split(",")]
MODES = ["fwd", "fwd+bwd"]
PROVIDERS = ["triton", "eager", "compile"]
PASSES = {"fwd": 3, "fwd+bwd": 8}  # activation-sized reads and writes, see the docstring
CPU_SMOKE = (("generator", 4, 512, "relu"), 64, torch.float32)  # the only rows run on CPU
SLOPE = 0.2


def _eager_fn(act):
    def bn_then_act(x, w, b, rm, rv):
        return bn_act_ref(x, w, b, rm, rv, True, 0.1, 1e-5, act, SLOPE)

    return bn_then_act


def bn_inputs(batch: int, C: int, hw: int, dtype: torch.dtype, device: torch.device):
    """A conv output and its gradient (random, channels_last, ``dtype``), fp32 BatchNorm
    parameters and running statistics: (x, dy, weight, bias, running_mean, running_var)."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, C, hw, hw)
    x = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    w = torch.ones(C, device=device, requires_grad=True)
    b = torch.zeros(C, device=device, requires_grad=True)
    return x, dy, w, b, torch.zeros(C, device=device), torch.ones(C, device=device)


def _provider_fn(provider, act):
    if provider == "triton":
        def fused(x, w, b, rm, rv):
            return bn_act(x, w, b, rm, rv, True, 0.1, 1e-5, act, SLOPE, impl="triton")

        return fused
    if provider == "eager":
        return _eager_fn(act)
    torch._dynamo.reset()  # a fresh cache per row: no recompile limit, no dynamic shapes
    return torch.compile(_eager_fn(act), dynamic=False)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("batch", BATCHES, ids=lambda n: f"b{n}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}-{b[1]}x{b[1]}x{b[2]}")
def test_bench_bn_act(benchmark, bench_device, block, batch, dtype, mode, provider):
    net, hw, C, act = block
    if bench_device.type != "cuda":
        if provider != "eager":
            what = "the Triton interpreter" if provider == "triton" else "Inductor's C++ backend"
            pytest.skip(f"{provider} rows need a GPU: on CPU they would time {what}")
        if (block, batch, dtype) != CPU_SMOKE:
            pytest.skip("on CPU only the eager rows of one small block run (smoke run)")

    x, dy, w, b, rm, rv = bn_inputs(batch, C, hw, dtype, bench_device)
    fn = _provider_fn(provider, act)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(x, w, b, rm, rv)
    else:
        xg = x.detach().requires_grad_()

        def step():
            y = fn(xg, w, b, rm, rv)
            return torch.autograd.grad(y, (xg, w, b), dy)

    cuda = bench_device.type == "cuda"
    timed = synced(step, bench_device)
    for _ in range(3 if cuda else 1):  # compile (Triton, Inductor) and warm up outside the timer
        timed()
    benchmark.group = f"bn_act {net} {hw}x{hw}x{C} b{batch} {str(dtype).split('.')[-1]} {mode}"
    benchmark.pedantic(timed, rounds=30 if cuda else 3, iterations=20 if cuda else 2,
                       warmup_rounds=2 if cuda else 0)

    seconds = benchmark.stats.stats.median
    nbytes = PASSES[mode] * x.numel() * x.element_size()
    benchmark.extra_info.update(
        kernel="bn_act", provider=provider, mode=mode, net=net, act=act,
        shape=list(x.shape), dtype=str(dtype).split(".")[-1], layout="channels_last",
        us=round(seconds * 1e6, 2), gbps=round(nbytes / seconds / 1e9, 1),
        device=device_name(bench_device), torch=torch.__version__,
        date=datetime.date.today().isoformat())
    assert seconds > 0


@pytest.mark.parametrize("provider", ["triton", "eager"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}-{b[1]}x{b[1]}x{b[2]}")
def test_bench_bn_act_graph(benchmark, bench_device, block, dtype, mode, provider):
    if bench_device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device: the in-graph rows run on a GPU only")
    net, hw, C, act = block
    batch = 64
    x, dy, w, b, rm, rv = bn_inputs(batch, C, hw, dtype, bench_device)
    fn = _provider_fn(provider, act)
    xg = x.detach().requires_grad_()

    def step():
        if mode == "fwd":
            with torch.no_grad():
                return fn(x, w, b, rm, rv)
        return torch.autograd.grad(fn(xg, w, b, rm, rv), (xg, w, b), dy)

    nbytes = PASSES[mode] * x.numel() * x.element_size()
    seconds = {}
    # the measurement itself is the benchmark's one round: the number is the graph's per-call time
    benchmark.pedantic(lambda: seconds.update(kernel=timed_in_graph(step),
                                              copy=copy_seconds(nbytes, bench_device)),
                       rounds=1, iterations=1)
    benchmark.group = f"bn_act graph {net} {hw}x{hw}x{C} b{batch} {str(dtype).split('.')[-1]} {mode}"
    gbps, copy_gbps = nbytes / seconds["kernel"] / 1e9, nbytes / seconds["copy"] / 1e9
    benchmark.extra_info.update(
        kernel="bn_act", provider=f"{provider}-graph", mode=mode, net=net, act=act,
        shape=list(x.shape), dtype=str(dtype).split(".")[-1], layout="channels_last",
        timing="cuda graph", us=round(seconds["kernel"] * 1e6, 2), gbps=round(gbps, 1),
        copy_gbps=round(copy_gbps, 1), of_copy=round(gbps / copy_gbps, 3),
        device=device_name(bench_device), torch=torch.__version__,
        date=datetime.date.today().isoformat())
    assert seconds["kernel"] > 0
