"""Write a grid of generated images from a checkpoint.

    python -m fastwgan.sample runs/wgan                 # 64 images -> runs/wgan/grid.png
    python -m fastwgan.sample runs/wgan/checkpoint.pt --n 100 --out faces.png --seed 3
    python -m fastwgan.sample runs/wgan --n 5000 --out faces.png   # faces_0000.png .. faces_0004.png

More than 1024 images are drawn and written page by page, 1024 per grid file: memory stays that
of one page, whatever --n.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import math
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from fastwgan.checkpoint import CheckpointError, checkpoint_path, load_generator
from fastwgan.outputs import grid_format, save_grid
from fastwgan.runfolder import is_write_failure, write_failure


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastwgan.sample", description=__doc__,
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


@torch.no_grad()
def generate(G: torch.nn.Module, n: int, seed: int, device: torch.device, batch: int = 256) -> torch.Tensor:
    """``n`` images from z ~ N(0, 1) drawn with ``seed``, in [-1, 1], on the CPU."""
    z = torch.randn(n, G.nz, generator=torch.Generator().manual_seed(seed))
    return torch.cat([G(z[i:i + batch].to(device)).float().cpu() for i in range(0, n, batch)])


PAGE = 1024  # images per grid file (a 32x32 grid)


@torch.no_grad()
def generate_pages(G: torch.nn.Module, n: int, seed: int, device: torch.device,
                   page: Optional[int] = None, batch: int = 256) -> Iterator[torch.Tensor]:
    """``generate``'s images, ``page`` (default ``PAGE``) at a time: only one page is held. The
    noise is drawn page by page from one generator, so that up to a page the images are
    ``generate``'s."""
    page = page or PAGE
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, page):
        z = torch.randn(min(page, n - start), G.nz, generator=g)
        yield torch.cat([G(z[i:i + batch].to(device)).float().cpu() for i in range(0, len(z), batch)])


def page_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one page; ``NAME_0000.png``, ``NAME_0001.png``, ... beside it for more."""
    pages = math.ceil(n / PAGE)
    if pages == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:04d}{out.suffix}") for i in range(pages)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be at least 1 (got {args.n})")
        if args.nrow is not None and args.nrow < 1:
            raise ValueError(f"--nrow must be at least 1 (got {args.nrow})")
        if args.out:
            grid_format(args.out)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                              else ("cpu" if args.device == "auto" else args.device))
        G, cfg = load_generator(args.checkpoint, device)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else checkpoint_path(args.checkpoint).parent / "grid.png"
    nrow = args.nrow or math.ceil(math.sqrt(min(args.n, PAGE)))
    paths = page_paths(out, args.n)
    try:
        for path, images in zip(paths, generate_pages(G, args.n, args.seed, device)):
            save_grid(images, path, nrow=nrow)
    except OSError as e:
        if not is_write_failure(e):
            raise
        print(f"error: {write_failure(e, out.parent)}", file=sys.stderr)
        return 1
    where = str(out) if len(paths) == 1 else f"{len(paths)} grids, {paths[0]} .. {paths[-1].name}"
    print(f"wrote {args.n} samples ({cfg.image_size}x{cfg.image_size}) to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
