"""Write a grid of generated images from a checkpoint.

    python -m fastwgan.sample runs/wgan                 # 64 images -> runs/wgan/grid.png
    python -m fastwgan.sample runs/wgan/checkpoint.pt --n 100 --out faces.png --seed 3
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fastwgan.checkpoint import CheckpointError, checkpoint_path, load_generator
from fastwgan.config import ConfigError, OneLineParser
from fastwgan.outputs import grid_format, save_grid

# The sample noise has a stream of its own (numpy's SeedSequence of (NOISE_STREAM, seed), PCG64),
# so that no --seed reproduces the training grid, which is drawn with torch's generator from the
# run's seed + 1. An offset on the torch seed would not do: torch's CPU generator keeps only the
# low 32 bits of a seed.
NOISE_STREAM = 0x5A4D1E


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m fastwgan.sample", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory or its checkpoint.pt")
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--out", metavar="IMAGE", default=None,
                   help="output image, .png or .jpg (default: grid.png beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run the generator (default: auto, CUDA when there is one)")
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: a square grid)")
    return p


def noise(n: int, nz: int, seed: int) -> torch.Tensor:
    """``n`` noise vectors z ~ N(0, 1) for ``seed``: float32 (n, nz) on the CPU."""
    rng = np.random.default_rng([NOISE_STREAM, seed])
    return torch.from_numpy(rng.standard_normal((n, nz), dtype=np.float32))


@torch.no_grad()
def render(G: torch.nn.Module, z: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """G(z) in batches, in [-1, 1], float32 on the CPU (G in eval mode: the batch does not matter)."""
    return torch.cat([G(z[i:i + batch].to(device)).float().cpu() for i in range(0, len(z), batch)])


def generate(G: torch.nn.Module, n: int, seed: int, device: torch.device, batch: int = 256) -> torch.Tensor:
    """``n`` images from the noise of ``seed``, in [-1, 1], on the CPU."""
    return render(G, noise(n, G.nz, seed), device, batch)


def check_args(args) -> None:
    """Raise ValueError for a bad value, before the checkpoint is read."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1 (got {args.n})")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more (got {args.seed})")
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow must be at least 1 (got {args.nrow})")
    if args.out:
        grid_format(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                              else ("cpu" if args.device == "auto" else args.device))
        G, cfg = load_generator(args.checkpoint, device)
    except (CheckpointError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = checkpoint_path(args.checkpoint).parent
    size = f"{cfg.image_size}x{cfg.image_size}"
    out = Path(args.out) if args.out else folder / "grid.png"
    nrow = args.nrow or math.ceil(math.sqrt(args.n))
    save_grid(generate(G, args.n, args.seed, device), out, nrow=nrow)
    print(f"wrote {args.n} samples ({size}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
