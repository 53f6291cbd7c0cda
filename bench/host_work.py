"""The training loop's host work besides its steps, measured in the loop's own thread.

1. Periodic work at the paper's size (64x64 DCGAN, a checkpoint of about 50 MB): a sample grid
   and loss.png drawn in the loop and a checkpoint written and synced there (what the loop did
   before the writer thread), against ``RunFolder.samples`` / ``RunFolder.checkpoint``, which
   hand the encoding and writing to the writer thread (fastwgan.background); the writer's own
   time (``wait``) is printed beside, as it runs while training goes on.
2. The stop agreement of ``--world`` processes (gloo on this host): a blocking all-reduce of the
   stop flag at every iteration (``any_rank``) against ``StopVote``, over iterations of
   ``--iteration-ms`` (a sleep standing in for the device's work): host time per iteration
   spent in the agreement, and the collectives made.

    python bench/host_work.py [--rows 400] [--repeats 5] [--world 2] [--iterations 500]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fastwgan import checkpoint as ckpt_io
from fastwgan import distributed
from fastwgan.engine import ReferenceEngine
from fastwgan.outputs import MetricsLog, plot_losses, save_grid
from fastwgan.parity import FixedBatches, engine_pair, fixed_batches
from fastwgan.runconfig import preset_config
from fastwgan.runfolder import RunFolder


def paper_run(out: Path, rows: int):
    """A run folder with ``rows`` metrics rows, and the networks and optimizer states of the
    paper's recipe after one iteration (a full-size checkpoint)."""
    cfg = preset_config("paper", out=str(out), batch_size=16)
    (G, D), _ = engine_pair(cfg)
    engine = ReferenceEngine(cfg, G, D, FixedBatches(fixed_batches(cfg, 2)), torch.device("cpu"), None)
    engine.iteration(1)
    folder = RunFolder(cfg)
    (out / "samples").mkdir(parents=True)
    folder.metrics = MetricsLog(out / "metrics.jsonl")
    for i in range(rows):
        folder.metrics.append({"iter": 50 * (i + 1), "wdist": 1 / (i + 1), "loss_d": -0.1, "loss_g": 0.2})
    state = {"generator": G.state_dict(), "critic": D.state_dict(), "opt_g": engine.opt_g.state_dict(),
             "opt_d": engine.opt_d.state_dict()}
    return folder, G, state


def in_the_loop(folder: RunFolder, G, state, i: int) -> None:
    """The periodic work as the loop did it itself: forward, PNG, loss.png, checkpoint."""
    G.eval()
    with torch.no_grad():
        fake = G(folder.fixed_z)
    G.train()
    save_grid(fake, folder.out / "samples" / f"iter_{i:06d}.png", nrow=8)
    plot_losses(folder.metrics.read(), folder.out / "loss.png", title="wgan, 64x64")
    ckpt_io.save_atomic(state, folder.out / ckpt_io.CHECKPOINT_NAME)


def handed_over(folder: RunFolder, G, state, i: int) -> None:
    folder.samples(G, i)
    folder.checkpoint(state)


def periodic(rows: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, G, state = paper_run(Path(tmp), rows)
        size = len(ckpt_io.serialize(state).getbuffer()) / 2**20
        in_the_loop(folder, G, state, 0)  # first use: matplotlib's import, the PNG encoder
        loop_s, handed_s, writer_s, forward_s = [], [], [], []
        for i in range(1, repeats + 1):
            t = time.perf_counter()
            with torch.no_grad():
                G.eval()(folder.fixed_z)
            G.train()
            forward_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            in_the_loop(folder, G, state, i)
            loop_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            handed_over(folder, G, state, i)
            handed_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            folder.wait()
            writer_s.append(time.perf_counter() - t)
        folder.close()
    med = statistics.median
    print(f"periodic work, sample grid + loss.png ({rows} rows) + checkpoint ({size:.0f} MB), "
          f"median of {repeats}, seconds in the loop's thread:")
    print(f"  written in the loop:        {med(loop_s):.3f} (min {min(loop_s):.3f}, max {max(loop_s):.3f})")
    print(f"  handed to the writer:       {med(handed_s):.3f} (min {min(handed_s):.3f}, max {max(handed_s):.3f})")
    print(f"  the writer's work after it: {med(writer_s):.3f} (beside training)")
    print(f"  of both, the grid's forward pass (in the loop either way): {med(forward_s):.3f}")


def _agreement(rank: int, world_size: int, store: str, iterations: int, iteration_s: float, out: str):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    world = distributed.init(rank, world_size, "cpu", init_method=f"file://{store}",
                             timeout=timedelta(seconds=60))
    import torch.distributed as dist

    calls = [0]
    all_reduce = dist.all_reduce

    def counted(*a, **k):
        calls[0] += 1
        return all_reduce(*a, **k)

    dist.all_reduce = counted
    result = {}
    for name in ("any_rank", "StopVote"):
        vote = distributed.StopVote(world)
        agree = ((lambda done: distributed.any_rank(False, world)) if name == "any_rank"
                 else (lambda done: vote(done, False, last=done == iterations)))
        calls[0], spent = 0, 0.0
        dist.barrier()
        for done in range(1, iterations + 1):
            time.sleep(iteration_s)  # the device's work, which the host waits for at some point
            t = time.perf_counter()
            agree(done)
            spent += time.perf_counter() - t
        result[name] = (spent / iterations, calls[0])
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    distributed.shutdown(world)
    sys.stdout.flush()
    os._exit(0)


def agreement(world_size: int, iterations: int, iteration_ms: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_agreement, nprocs=world_size, start_method="spawn",
                           args=(world_size, os.path.join(tmp, "store"), iterations,
                                 iteration_ms / 1000, tmp))
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world_size)]
    print(f"stop agreement, {world_size} processes (gloo), {iterations} iterations of {iteration_ms} ms:")
    for name in ("any_rank", "StopVote"):
        per_rank = ", ".join(f"rank {r} {res[name][0] * 1e3:.3f} ms" for r, res in enumerate(results))
        print(f"  {name:9s} host time per iteration: {per_rank}; all-reduces: {results[0][name][1]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400, help="metrics rows in loss.png")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--world", type=int, default=2, help="processes for the stop agreement")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--iteration-ms", type=float, default=4.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    periodic(args.rows, args.repeats)
    agreement(args.world, args.iterations, args.iteration_ms)


if __name__ == "__main__":
    main()
