"""Shared pieces of the benchmarks (pytest-benchmark).

Benchmarks are not tests: they assert nothing about time. Each one reports a derived unit (img/s,
GB/s) in ``extra_info`` with the device name, and ratios are only taken between rows measured in
the same run on the same device.
"""
from pathlib import Path

import pytest
import torch

from summarize import comparison_table, derived_units_table


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



@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    """The derived units of every benchmark that ran, and the end-to-end comparison (img/s,
    speed-up against the eager fp32 reference, the paper recipe's projected time), reference row
    first: what pytest-benchmark's tables of seconds leave out."""
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's, where it is loaded
    done = [b.as_dict(include_data=False) for b in getattr(session, "benchmarks", []) if b]
    if not done:
        return
    comparison = comparison_table(done)
    others = [(Path(b["fullname"].split("::")[0]).stem, b) for b in done
              if "speedup_vs_reference_eager_fp32" not in b.get("extra_info", {})]
    if others:
        terminalreporter.write_sep("-", "derived units")
        terminalreporter.write(derived_units_table(others))
    if comparison:
        terminalreporter.write_sep("-", "end to end: against the eager fp32 reference")
        terminalreporter.write(comparison)
