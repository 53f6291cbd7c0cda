"""One point of the scaling benchmark: training throughput at the world size torchrun starts.

    torchrun --standalone --nproc_per_node N bench/scaling.py --config paper --out point.json

Every rank builds the fast engine (CUDA graphs, bf16 where --amp) on random uint8 images kept on
its device (the resident sampler: the rows measure training, not decoding), takes its share of
the global batch, and runs the same iterations of n_critic 5. Rank 0 writes one JSON object:
img/s over all ranks, seconds per generator iteration, and the time of one all-reduce of the
critic's flat gradient buffer alone (what a critic step adds to one process's step), measured on
the same ranks after the timed iterations. On a CPU (--device cpu, gloo, the plain-PyTorch twins,
tiny sizes) the same script is a dry run of the launch and the JSON, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

CONFIGS = {  # the paper's recipe at 64x64, and a large batch at 128x128 (where more GPUs help)
    "paper": dict(image_size=64, ngf=64, ndf=64, batch_size=64),
    "large": dict(image_size=128, ngf=64, ndf=64, batch_size=256),
    "cpu": dict(image_size=16, ngf=8, ndf=8, batch_size=8),  # a dry run of the script on a CPU
}
N_IMAGES = 4096  # random images per rank: enough for i.i.d. draws, small in device memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=tuple(CONFIGS), default="paper")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--iters", type=int, default=30, help="timed generator iterations")
    p.add_argument("--out", required=True, help="JSON file rank 0 writes")
    args = p.parse_args(argv)

    from fastwgan.config import Config
    from fastwgan.data.sampler import ResidentSampler
    from fastwgan.distributed import (all_reduce_mean_, exit_process, init_from_env,
                                      seed_device_rng, shutdown, split_batch)
    from fastwgan.fast import FastEngine
    from fastwgan.models import Critic, Generator

    world = init_from_env(args.device)
    try:
        device = world.device
        cfg = Config(**CONFIGS[args.config], n_critic=5, n_critic_warmup=100, amp=args.amp)
        local = split_batch(cfg.batch_size, world.world_size)
        torch.manual_seed(0)
        G = Generator(cfg.image_size, cfg.nz, cfg.ngf).to(device)
        D = Critic(cfg.image_size, cfg.ndf).to(device)
        seed_device_rng(0, world)
        g = torch.Generator(device).manual_seed(world.rank)
        data = torch.randint(0, 256, (N_IMAGES, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                             device=device, generator=g)
        sampler = ResidentSampler(data, local, device=device, channels_last=device.type == "cuda")
        dtype = torch.bfloat16 if args.amp and device.type == "cuda" else None
        engine = FastEngine(cfg, G, D, sampler, device, dtype, graphs=True, world=world)
        for _ in range(3):  # warm-up: kernels compile, cuDNN picks algorithms, graphs are captured
            engine.iteration(cfg.n_critic)
        synchronize(device)
        all_reduce_mean_(torch.zeros(1, device=device), world)  # every rank ready
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            engine.iteration(cfg.n_critic)
        synchronize(device)
        seconds = (time.perf_counter() - t0) / args.iters

        # one all-reduce of the critic's flat gradient buffer, alone
        flat = torch.zeros(sum(q.numel() for q in D.parameters()), device=device)
        for _ in range(3):
            all_reduce_mean_(flat, world)
        synchronize(device)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            all_reduce_mean_(flat, world)
        synchronize(device)
        allreduce_s = (time.perf_counter() - t0) / reps

        if world.is_writer:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            point = {
                "config": args.config, "world_size": world.world_size, "backend": world.backend,
                "device": name, "engine": engine.describe(), "batch": cfg.batch_size,
                "per_rank_batch": local, "image_size": cfg.image_size, "amp": dtype is not None,
                "s_per_iter": seconds, "img_per_s": cfg.n_critic * cfg.batch_size / seconds,
                "allreduce_ms": allreduce_s * 1e3,
                "critic_step_ms": seconds / (cfg.n_critic + 1) * 1e3,  # about: G and D steps alike
            }
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(point, f)
            print(json.dumps(point))
    finally:
        shutdown(world)
    if world.distributed:
        exit_process(0)  # see its docstring
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
