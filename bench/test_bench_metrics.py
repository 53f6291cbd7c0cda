"""Sliced Wasserstein distance throughput (images per second, both sets counted once per pair).

On a GPU at the evaluation's size (10000 image pairs at 64x64, as ``python -m fastwgan.eval``); on a
CPU 512 pairs at 64x64 so that the benchmark finishes in a minute. ``extra_info`` carries the pairs
per second, the size and the device.

    pytest bench/test_bench_metrics.py --benchmark-only
"""
import torch

from fastwgan.metrics import sliced_wasserstein

from conftest import device_name, synced


def test_sliced_wasserstein(benchmark, bench_device):
    n = 10_000 if bench_device.type == "cuda" else 512
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g).to(bench_device)
    b = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g).to(bench_device)
    run = synced(lambda: sliced_wasserstein(a, b), bench_device)
    run()  # warm-up
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update({
        "device": device_name(bench_device), "n": n, "image_size": 64,
        "pairs_per_s": n / benchmark.stats.stats.mean,
    })
