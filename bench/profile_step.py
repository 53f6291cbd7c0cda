"""Where a training iteration's time goes, kernel by kernel: the fast engine with CUDA graphs in
bf16 against the eager fp32 reference, at the benchmark's sizes (test_bench_train.py).

    python bench/profile_step.py --out bench-out/profile.md [--iterations 10]

For each engine: wall time per iteration, the device's busy time per iteration (the sum of its
kernels' durations; their share of the wall time says how much is launch overhead and idling),
and the kernels that take the most time, grouped by name. On a CPU the same report lists the
operators' CPU time instead (no device activity to record).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from test_bench_train import make


def _device_events(prof, cuda: bool):
    """(name, microseconds) of every device kernel (on a CPU: of every operator, self time)."""
    out = []
    for e in prof.events():
        if cuda:
            if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            us = e.time_range.elapsed_us()
        else:
            us = e.self_cpu_time_total
        out.append((e.name, us))
    return out


def profile_engine(device: torch.device, engine: str, amp: bool, iterations: int) -> str:
    cfg, eng = make(device, engine, amp)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):  # warm-up: compilation, cuDNN's choices, graph capture
        eng.iteration(cfg.n_critic)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(iterations):
            eng.iteration(cfg.n_critic)
        sync()
        wall = (time.perf_counter() - t0) / iterations
    events = _device_events(prof, cuda)
    by_name: dict[str, list[float]] = defaultdict(list)
    for name, us in events:
        by_name[name].append(us)
    busy = sum(us for _, us in events) / iterations / 1e6
    what = "kernels" if cuda else "operators (CPU self time)"
    mode = getattr(eng, "describe", lambda: engine)()
    lines = [f"## {mode}, {'bf16' if amp else 'fp32'}: batch {cfg.batch_size}, {cfg.image_size}x{cfg.image_size}, "
             f"width {cfg.ngf}, n_critic {cfg.n_critic}, {iterations} iterations profiled",
             f"wall time per iteration: {wall * 1e3:.3f} ms (under the profiler)",
             f"{what} per iteration: {len(events) / iterations:.0f}, busy {busy * 1e3:.3f} ms "
             f"({100 * busy / wall:.0f}% of the wall time)", "",
             f"| {what} | calls/iter | ms/iter | us/call | share |", "| --- | --- | --- | --- | --- |"]
    total = sum(us for _, us in events) or 1.0
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]
    for name, uss in top:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {len(uss) / iterations:.0f} | {sum(uss) / iterations / 1e3:.3f} | "
                     f"{sum(uss) / len(uss):.1f} | {100 * sum(uss) / total:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="markdown report (default: print only)")
    p.add_argument("--iterations", type=int, default=10, help="iterations profiled per engine (default: 10)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [("fast-graphs", True), ("reference", False)] if device.type == "cuda" else [
        ("fast", False), ("reference", False)]
    parts = [f"# Profile of one training iteration on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
             f" (torch {torch.__version__})\n"]
    for engine, amp in runs:
        try:
            parts.append(profile_engine(device, engine, amp, args.iterations))
        except Exception as e:  # noqa: BLE001 - one engine's failure leaves the other's report
            parts.append(f"## {engine}: profiling failed: {type(e).__name__}: {e}\n")
    text = "\n".join(parts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
