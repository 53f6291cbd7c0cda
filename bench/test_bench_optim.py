"""The critic's optimizer step: fused RMSProp + clip against torch's, per step.

Rows (provider):
    torch-foreach          torch.optim.RMSprop(foreach=True) then _foreach_clamp_min_/_max_
    torch-compile          the same step under torch.compile (Inductor fuses it)
    torch-foreach-graph    the same step, capturable, replayed from a CUDA graph
    fastwgan-ref           RMSpropClip(impl="ref"): the twin, torch's calls on one flat buffer
    fastwgan-triton        RMSpropClip(impl="triton"): one launch over the flat buffer
    fastwgan-triton-graph  the same, replayed from a CUDA graph (how the trainer runs it)

Sizes: the parameters of the critic the trainer builds (fastwgan.build): the paper's 64x64 DCGAN
critic (2.76 M) and the same shapes ten times. Without a GPU the sizes shrink to the cpu preset's
critic (32x32, width 32: 0.17 M) so that the file runs in seconds,
and the Triton, torch.compile and graph rows are skipped with the reason.

Each round runs STEPS steps and then synchronises once, so a row's time per step includes the
host work of eager steps but not one synchronisation per step. extra_info holds the time per
step (us), the bandwidth at 20 bytes per parameter (read p, g, v; write p, v) and the device.

``test_bench_rmsprop_clip_graph`` times the capturable torch step and the fused kernel inside
CUDA graphs (``triton.testing.do_bench_cudagraph``: the device's time per step, no launch
overhead), beside the device's copy bandwidth at the same byte count measured in the same test
(``copy_gbps``; ``of_copy`` the fraction of it reached). GPU only.
"""
import pytest
import torch

from conftest import copy_seconds, device_name, synced, timed_in_graph
from fastwgan.build import build_critic
from fastwgan.optim import RMSpropClip
from fastwgan.runconfig import preset_config

LR, CLIP = 5e-5, 0.01
BYTES_PER_PARAM = 20
PROVIDERS = ["torch-foreach", "torch-compile", "torch-foreach-graph",
             "fastwgan-ref", "fastwgan-triton", "fastwgan-triton-graph"]
SIZES = {"critic": 1, "critic-x10": 10}  # copies of the critic's parameter shapes


def _shapes(device: torch.device, copies: int) -> list[tuple[int, ...]]:
    critic = build_critic(preset_config(None if device.type == "cuda" else "cpu"))
    return [tuple(p.shape) for p in critic.parameters()] * copies


def _params(shapes, device):
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device))
        p.grad = torch.randn(s, generator=gen).to(device)
        params.append(p)
    return params


def _torch_step(params, capturable=False):
    opt = torch.optim.RMSprop(params, lr=LR, foreach=True, capturable=capturable)

    def step():
        opt.step()
        with torch.no_grad():
            torch._foreach_clamp_min_(params, -CLIP)
            torch._foreach_clamp_max_(params, CLIP)

    return step


def _captured(step, device, warmup=3):
    """``step`` replayed from a CUDA graph; warm-up on a side stream first (compiles, initialises state)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _make_step(provider, params, device):
    if provider == "torch-foreach":
        return _torch_step(params)
    if provider == "torch-compile":
        return torch.compile(_torch_step(params))
    if provider == "torch-foreach-graph":
        return _captured(_torch_step(params, capturable=True), device)
    impl = "ref" if provider == "fastwgan-ref" else "triton"
    opt = RMSpropClip(params, lr=LR, clip=CLIP, impl=impl)
    if provider == "fastwgan-triton-graph":
        return _captured(opt.step, device)
    return opt.step


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_rmsprop_clip_step(benchmark, bench_device, provider, size):
    cuda = bench_device.type == "cuda"
    if not cuda and provider == "fastwgan-triton":
        pytest.skip("needs CUDA: under the Triton interpreter (about 1.4 ms per program) timings are meaningless")
    if not cuda and provider == "torch-compile":
        pytest.skip("needs CUDA: the comparison is against Inductor's Triton kernels, not its CPU code")
    if not cuda and provider.endswith("-graph"):
        pytest.skip("CUDA graphs need a CUDA device")

    shapes = _shapes(bench_device, SIZES[size])
    params = _params(shapes, bench_device)
    n_params = sum(p.numel() for p in params)
    step = _make_step(provider, params, bench_device)
    steps = 20 if cuda else 2  # CPU rows only check that the file runs: keep them short

    def run():
        for _ in range(steps):
            step()

    run_synced = synced(run, bench_device)
    run_synced()  # first call outside the timer: Triton / Inductor compilation
    benchmark.pedantic(run_synced, rounds=50 if cuda else 5, warmup_rounds=3 if cuda else 1)

    benchmark.extra_info.update(provider=provider, size=size, n_params=n_params,
                                device=device_name(bench_device), steps_per_round=steps)
    if benchmark.stats is not None:  # None under --benchmark-disable
        us = benchmark.stats.stats.mean / steps * 1e6
        benchmark.extra_info.update(us_per_step=round(us, 2),
                                    gb_per_s=round(BYTES_PER_PARAM * n_params / (us * 1e-6) / 1e9, 1))
    assert max(p.detach().abs().max().item() for p in params) <= CLIP  # the rows did clip


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("provider", ["torch-foreach", "fastwgan-triton"])
def test_bench_rmsprop_clip_graph(benchmark, bench_device, provider, size):
    if bench_device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device: the in-graph rows run on a GPU only")
    shapes = _shapes(bench_device, SIZES[size])
    params = _params(shapes, bench_device)
    n_params = sum(p.numel() for p in params)
    if provider == "torch-foreach":
        step = _torch_step(params, capturable=True)
    else:
        step = RMSpropClip(params, lr=LR, clip=CLIP, impl="triton").step
    nbytes = BYTES_PER_PARAM * n_params
    seconds = {}
    # the measurement itself is the benchmark's one round: the number is the graph's per-step time
    benchmark.pedantic(lambda: seconds.update(step=timed_in_graph(step),
                                              copy=copy_seconds(nbytes, bench_device)),
                       rounds=1, iterations=1)
    gbps, copy_gbps = nbytes / seconds["step"] / 1e9, nbytes / seconds["copy"] / 1e9
    benchmark.extra_info.update(provider=f"{provider}-graph", size=size, n_params=n_params,
                                device=device_name(bench_device), timing="cuda graph",
                                us=round(seconds["step"] * 1e6, 2), us_per_step=round(seconds["step"] * 1e6, 2),
                                gb_per_s=round(gbps, 1), copy_gbps=round(copy_gbps, 1),
                                of_copy=round(gbps / copy_gbps, 3))
    assert max(p.detach().abs().max().item() for p in params) <= CLIP  # the steps did clip
