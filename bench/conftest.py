"""Shared pieces of the benchmarks (pytest-benchmark).

Benchmarks are not tests: they assert nothing about time. Each one reports a derived unit (img/s,
GB/s) in ``extra_info`` with the device name, and ratios are only taken between rows measured in
the same run on the same device.
"""
import pytest
import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def synced(fn, device: torch.device):
    """``fn`` followed by a device synchronisation, so that the timer sees the work finish."""
    if device.type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return run


@pytest.fixture
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

