"""Shared pieces of the benchmarks (pytest-benchmark).

Benchmarks are not tests: they assert nothing about time. Each one reports a derived unit (img/s,
GB/s) in ``extra_info`` with the device name, and ratios are only taken between rows measured in
the same run on the same device.

With ``FASTWGAN_BENCH_ROWS=FILE`` every row is appended to FILE (one JSON object per line, the
fields of pytest-benchmark's JSON) as soon as it finishes: a run cut short by a time limit keeps
the rows it measured (``--benchmark-json`` is written only at the end). bench/summarize.py reads
both.
"""
import json
import os
import time
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



def timed_in_graph(fn, rep_ms: float = 20.0) -> float:
    """Median seconds per call of ``fn`` replayed from a CUDA graph of many unrolled calls
    (``triton.testing.do_bench_cudagraph``: warm-up on a side stream, then the graph timed with
    CUDA events): the device's time, without per-call host overhead or synchronisation."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e-3


def copy_seconds(nbytes: int, device: torch.device) -> float:
    """Seconds per ``copy_`` that moves ``nbytes`` (reads nbytes / 2, writes nbytes / 2), timed as
    ``timed_in_graph``: the device's copy bandwidth at that size, measured in the same run."""
    n = max(nbytes // 2 // 4, 1)
    src = torch.randn(n, device=device)  # random data: zeros can run faster (METHOD.md)
    dst = torch.empty_like(src)
    return timed_in_graph(lambda: dst.copy_(src))


@pytest.fixture(autouse=True)
def _write_row_when_done(request):
    yield
    path = os.environ.get("FASTWGAN_BENCH_ROWS")
    bm = request.node.funcargs.get("benchmark")
    stats = getattr(bm, "stats", None)
    if not path or stats is None:
        return
    row = {"name": request.node.name, "group": bm.group,
           "file": Path(str(request.node.fspath)).stem.replace("test_bench_", ""),
           "stats": {"mean": stats.stats.mean, "median": stats.stats.median, "rounds": stats.stats.rounds},
           "extra_info": bm.extra_info, "finished": time.strftime("%H:%M:%S")}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


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
