"""The kernel ledger of a training step: for each engine and step, the kernels it would launch on
CUDA, its FLOPs and its bytes, by kind, counted on any device (bench/kernel_count.py).

    python bench/ledger.py                      # the paper's networks: 64x64, batch 64, width 64
    python bench/ledger.py --json ledger.json   # one row per engine and step
    python bench/ledger.py --preset cpu --engines "fast bf16" --detail

Engines: the reference (eager) in fp32 and bf16, the fast engine in bf16 and fp32, built by
fastwgan.build as the trainer builds them, counted in eager steps (the fast engine's CUDA graphs
replay the same kernels). Steps: one critic step, one generator step, one iteration (n_critic
critic steps and the generator step), each counted after one iteration of warm-up. On a CPU the
fused kernels' twins count as the Triton launches they stand for; torch's optimizers are counted
with their foreach path, CUDA's default. On a GPU each row also carries the profiler's count of
device kernels and copies (``profiled``): the check of the mapping.

The modeled time on a named GPU is printed apart, labeled modeled, with its assumptions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_count import (EAGER_LAUNCH_US, GPUS, GRAPH_NODE_US, KINDS, KernelLedger,  # noqa: E402
                          assumptions, modeled_us)

from fastwgan.build import build_engine, build_networks  # noqa: E402
from fastwgan.data.sampler import ResidentSampler  # noqa: E402
from fastwgan.models import set_impl  # noqa: E402
from fastwgan.runconfig import preset_config  # noqa: E402

ENGINES = {"eager fp32": ("reference", None), "eager bf16": ("reference", torch.bfloat16),
           "fast bf16": ("fast", torch.bfloat16), "fast fp32": ("fast", None)}
STEPS = ("critic", "generator", "iteration")
# the paper's recipe: 1e5 generator iterations, 224 of them with 100 critic steps (FACTS.md)
RECIPE_CRITIC_STEPS, RECIPE_GENERATOR_STEPS = 521_280, 100_000


def make_engine(cfg, engine: str, device: torch.device):
    """``engine`` as the trainer builds it, fed by a resident sampler over fixed random images."""
    backend, amp = ENGINES[engine]
    torch.manual_seed(0)
    G, D = build_networks(cfg, device)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (256, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         generator=gen)
    sampler = ResidentSampler(data, cfg.batch_size, device=device,
                              channels_last=backend == "fast" and device.type == "cuda")
    eng = build_engine(cfg, G, D, sampler, device, amp, backend=backend, graphs=False)
    if backend == "fast" and device.type != "cuda":
        # the blocks call the fused op, as on CUDA; a listening ledger counts its twin as the
        # kernels (fastwgan.kernels.bn_act), so the engine runs under a ledger only
        set_impl(G, "triton")
        set_impl(D, "triton")
        eng.step_cfg.one_batch = True  # the kernels' critic step (fastwgan.fast)
    for opt in (eng.opt_g, eng.opt_d):  # torch's default on CUDA, whatever the device here
        for group in opt.param_groups:
            if "foreach" in group and not group.get("fused"):
                group["foreach"] = True
    return eng


def host_tensors(eng) -> list[torch.Tensor]:
    """A torch optimizer's ``step`` counters, on the host on CUDA too unless fused or capturable."""
    out = []
    for opt in (eng.opt_g, eng.opt_d):
        for group in opt.param_groups:
            if group.get("fused") or group.get("capturable") or "foreach" not in group:
                continue
            out += [opt.state[p]["step"] for p in group["params"] if "step" in opt.state.get(p, {})]
    return out


@contextlib.contextmanager
def phases(eng, ledger: KernelLedger):
    """Tell ``ledger`` which phase runs: the batch and z are data, each optimizer's step and
    zero_grad are optimizer and gradient glue (instance attributes, removed afterwards)."""
    def tagged(fn, kind):
        def inner(*args, **kwargs):
            with ledger.phase(kind):
                return fn(*args, **kwargs)
        return inner

    patched = [(eng, "_real", "data"), (eng, "noise", "data")]
    for opt in (eng.opt_g, eng.opt_d):
        patched += [(opt, "step", "optimizer"), (opt, "zero_grad", "gradient glue")]
    for obj, name, kind in patched:
        setattr(obj, name, tagged(getattr(obj, name), kind))
    try:
        yield
    finally:
        for obj, name, _ in patched:
            delattr(obj, name)


def step_fn(eng, cfg, step: str):
    return {"critic": eng.critic, "generator": eng.generator,
            "iteration": lambda: eng.iteration(cfg.steady_n_critic)}[step]


def count(eng, cfg, step: str):
    """The ledger of one ``step`` of ``eng``."""
    ledger = KernelLedger(host_tensors(eng))
    with phases(eng, ledger), ledger:
        step_fn(eng, cfg, step)()
    return ledger.tally


def profiled(eng, cfg, step: str) -> int:
    """Device kernels and copies the profiler sees in one ``step`` (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_fn(eng, cfg, step)()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def engine_rows(cfg, engine: str, device: torch.device) -> list[dict]:
    """One row per step of ``engine`` (see the module docstring)."""
    eng = make_engine(cfg, engine, device)
    with KernelLedger():  # warm-up: optimizer state, compilation, cuDNN's choices
        eng.iteration(cfg.steady_n_critic)
    launch_us = GRAPH_NODE_US if ENGINES[engine][0] == "fast" else EAGER_LAUNCH_US
    rows = []
    for step in STEPS:
        tally = count(eng, cfg, step)
        row = {"engine": engine, "step": step, "kernels": tally.kernels, "flops": tally.flops,
               "bytes": tally.bytes,
               "by_kind": {k: dict(zip(("kernels", "bytes", "flops"), tally.by_kind[k]))
                           for k in KINDS if k in tally.by_kind},
               "modeled_us": {g.name: modeled_us(tally, g, launch_us) for g in GPUS},
               "by_op": {k: v for k, v in sorted(tally.by_op.items())}}
        if device.type == "cuda":
            row["profiled"] = profiled(eng, cfg, step)
        rows.append(row)
    return rows


def recipe_minutes(rows: list[dict], engine: str, gpu: str) -> float:
    """Modeled minutes of the paper's recipe: its critic and generator steps at the modeled time."""
    us = {r["step"]: r["modeled_us"][gpu]["total"] for r in rows if r["engine"] == engine}
    return (RECIPE_CRITIC_STEPS * us["critic"] + RECIPE_GENERATOR_STEPS * us["generator"]) / 60e6


def table(rows: list[dict], cfg, device: torch.device, detail: bool = False) -> str:
    """The ledger as markdown: counts (exact), then the modeled time, apart."""
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    head = [f"Kernel ledger: {cfg.image_size}x{cfg.image_size}, batch {cfg.batch_size}, width "
            f"{cfg.ngf}, n_critic {cfg.steady_n_critic}, counted on {where} (torch {torch.__version__})",
            "", "| engine | step | kernels | " + " | ".join(KINDS) + " | GFLOP | MB |"
            + (" profiled |" if device.type == "cuda" else ""),
            "| --- " * (6 + len(KINDS) + (device.type == "cuda")) + "|"]
    for r in rows:
        kinds = " | ".join(str(r["by_kind"].get(k, {}).get("kernels", 0)) for k in KINDS)
        line = (f"| {r['engine']} | {r['step']} | {r['kernels']} | {kinds} | "
                f"{r['flops'] / 1e9:.1f} | {r['bytes'] / 1e6:.0f} |")
        head.append(line + (f" {r['profiled']} |" if "profiled" in r else ""))
    head += ["", "Modeled (not measured) time per step, us, and the paper's recipe (521,280 critic "
             "and 100,000 generator steps), minutes:", "",
             "| engine | GPU | critic us | generator us | iteration us | launch share | recipe min |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for engine in dict.fromkeys(r["engine"] for r in rows):
        by_step = {r["step"]: r for r in rows if r["engine"] == engine}
        for g in GPUS:
            m = {s: by_step[s]["modeled_us"][g.name] for s in STEPS}
            share = m["iteration"]["launch"] / m["iteration"]["total"]
            head.append(f"| {engine} | {g.name} | {m['critic']['total']:,.0f} | "
                        f"{m['generator']['total']:,.0f} | {m['iteration']['total']:,.0f} | "
                        f"{share:.0%} | {recipe_minutes(rows, engine, g.name):.1f} |")
    head += ["", assumptions()]
    if detail:
        head += ["", "| engine | step | kind: op | kernels | MB |", "| --- | --- | --- | --- | --- |"]
        head += [f"| {r['engine']} | {r['step']} | {op} | {k} | {b / 1e6:.1f} |"
                 for r in rows for op, (k, b) in r["by_op"].items() if k]
    return "\n".join(head)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="a config preset (default: the paper's networks)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated, from: {', '.join(ENGINES)} (default: all)")
    p.add_argument("--json", default=None, help="write one row per engine and step to this file")
    p.add_argument("--detail", action="store_true", help="also list the kernels op by op")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = preset_config(args.preset, "wgan")
    rows = []
    for engine in (e.strip() for e in args.engines.split(",")):
        rows += engine_rows(cfg, engine, device)
    print(table(rows, cfg, device, args.detail))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "by_op"} for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
