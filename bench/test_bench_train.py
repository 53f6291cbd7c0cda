"""Training throughput: the reference critic step and one full generator iteration.

At the paper's sizes on a GPU (64x64, ngf = ndf = 64, batch 64, n_critic 5); on a CPU at 32x32,
width 16, batch 16 so that the benchmark finishes in seconds. ``extra_info`` carries real images
per second (images through the critic) and the device.

    pytest bench/test_bench_train.py --benchmark-only
"""
import pytest
import torch

from fastwgan.config import Config
from fastwgan.models import Critic, Generator
from fastwgan.steps import StepConfig, critic_step, generator_step, make_optimizers

from conftest import device_name, synced


def sizes(device):
    if device.type == "cuda":
        return dict(image_size=64, width=64, batch=64)
    return dict(image_size=32, width=16, batch=16)


def setup(device, amp):
    s = sizes(device)
    torch.manual_seed(0)
    G = Generator(s["image_size"], 100, s["width"]).to(device)
    D = Critic(s["image_size"], s["width"]).to(device)
    opt_g, opt_d = make_optimizers(G, D, "wgan", 5e-5)
    real = torch.rand(s["batch"], 3, s["image_size"], s["image_size"], device=device) * 2 - 1
    cfg = StepConfig("wgan", 0.01, torch.bfloat16 if amp else None)
    return s, G, D, opt_g, opt_d, real, cfg


def info(benchmark, device, s, images_per_call, label):
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "device": device_name(device), "backend": label, "batch": s["batch"],
        "image_size": s["image_size"], "width": s["width"],
        "img_per_s": images_per_call / mean,
    })


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_reference_critic_step(benchmark, bench_device, amp):
    s, G, D, _, opt_d, real, cfg = setup(bench_device, amp)
    z = torch.randn(s["batch"], 100, device=bench_device)
    step = synced(lambda: critic_step(G, D, opt_d, real, z, cfg), bench_device)
    step()  # warm-up
    benchmark.pedantic(step, rounds=10 if bench_device.type == "cpu" else 50, iterations=1)
    info(benchmark, bench_device, s, s["batch"], f"reference eager {'bf16' if amp else 'fp32'}")


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_reference_generator_iteration(benchmark, bench_device, amp):
    """n_critic = 5 critic steps and one generator step: one generator iteration."""
    s, G, D, opt_g, opt_d, real, cfg = setup(bench_device, amp)
    n_critic = Config().n_critic
    B = s["batch"]

    def iteration():
        for _ in range(n_critic):
            critic_step(G, D, opt_d, real, torch.randn(B, 100, device=bench_device), cfg)
        return generator_step(G, D, opt_g, torch.randn(B, 100, device=bench_device), cfg)

    run = synced(iteration, bench_device)
    run()
    benchmark.pedantic(run, rounds=5 if bench_device.type == "cpu" else 20, iterations=1)
    info(benchmark, bench_device, s, n_critic * B, f"reference eager {'bf16' if amp else 'fp32'}")
    benchmark.extra_info["gen_iters_per_s"] = 1 / benchmark.stats.stats.mean
