"""Where a training iteration's time goes, kernel by kernel: the fast engine with CUDA graphs in
bf16 against the eager fp32 reference, at the benchmark's sizes (test_bench_train.py).

    python bench/profile_step.py --out bench-out/profile.md [--iterations 10]
    python bench/profile_step.py --engine fast-graphs --amp --out bench-out/profile.md  # one engine

For each engine: wall time per iteration, the device's busy time per iteration (the sum of its
kernels' durations; their share of the wall time says how much is launch overhead and idling),
and the kernels that take the most time, grouped by name. On a CPU the same report lists the
operators' CPU time instead (no device activity to record).

Each engine is profiled in a process of its own (without ``--engine`` this script starts one per
engine and appends each report to ``--out`` as it comes): a profiler fault, or a crash in one
engine, cannot take the other's report with it. The profiler is initialised before anything is
captured (``torch.profiler._utils._init_for_cuda_graphs``: a graph captured before the profiler's
first use does not show its kernels when replayed under it), and the warm-up iterations, which
capture the graphs, run before the profiled ones.
"""
from __future__ import annotations

import argparse
import subprocess
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


ENGINES = {  # device type -> (engine, bf16) profiled, each in its own process
    "cuda": [("fast-graphs", True), ("reference", False)],
    "cpu": [("fast", False), ("reference", False)],
}


def init_profiler_for_graphs() -> None:
    """Before any CUDA graph is captured: the profiler's first use must come before the capture
    for the replayed kernels to be recorded (pytorch/pytorch#100441)."""
    from torch.profiler._utils import _init_for_cuda_graphs

    _init_for_cuda_graphs()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="markdown report (default: print only); each engine's "
                   "report is appended to it")
    p.add_argument("--iterations", type=int, default=10, help="iterations profiled per engine (default: 10)")
    p.add_argument("--engine", choices=["fast-graphs", "fast", "reference"],
                   help="profile this engine only, in this process (default: each engine of the "
                   "device in a process of its own)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (with --engine)")
    p.add_argument("--timeout", type=float, default=120, help="seconds per engine's process (default: 120)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) if args.out else None
    if args.engine is None:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        title = f"# Profile of one training iteration on {name} (torch {torch.__version__})\n"
        print(title)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(title + "\n")
        for engine, amp in ENGINES[device.type]:
            cmd = [sys.executable, __file__, "--engine", engine, "--iterations", str(args.iterations)]
            cmd += (["--amp"] if amp else []) + (["--out", str(out)] if out else [])
            try:
                subprocess.run(cmd, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                note = f"## {engine}: profiling did not finish in {args.timeout:.0f} s\n"
                print(note)
                if out:
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(note + "\n")
        return 0
    if device.type == "cuda":
        init_profiler_for_graphs()
    try:
        text = profile_engine(device, args.engine, args.amp, args.iterations)
    except Exception as e:  # noqa: BLE001 - reported in the file, the other engine's process goes on
        text = f"## {args.engine}: profiling failed: {type(e).__name__}: {e}\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
