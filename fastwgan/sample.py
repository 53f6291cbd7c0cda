"""Write a grid of generated images from a checkpoint, or walks through the latent space.

    python -m fastwgan.sample runs/wgan                 # 64 images -> runs/wgan/grid.png
    python -m fastwgan.sample runs/wgan/checkpoint.pt --n 100 --out faces.png --seed 3
    python -m fastwgan.sample runs/wgan --n 5000 --out faces.png   # faces_0000.png .. faces_0004.png
    python -m fastwgan.sample runs/wgan --interpolate 8 --out walk.png --gif walk.gif

More than 1024 images are drawn and written page by page, 1024 per grid file: memory stays that
of one page, whatever --n.

--interpolate K draws K pairs of noise vectors and writes one row per pair: the images along the
great circle between the two (spherical interpolation, the path a Gaussian z keeps its typical
norm on), --steps images per row. The first and last image of row i are the plain samples 2i and
2i+1 of the same --seed. --gif also writes the walk as an animation, all rows at once.
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

import numpy as np
import torch

from fastwgan.atomic import atomic_write, is_write_failure, write_failure
from fastwgan.checkpoint import CheckpointError, load_generator
from fastwgan.config import ConfigError, OneLineParser
from fastwgan.device import DeviceError, resolve_device
from fastwgan.outputs import grid_format, make_grid, save_grid

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
                   help="output image, .png or .jpg (default: grid.png, or walk.png with "
                        "--interpolate, beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run the generator (default: auto, CUDA when there is one)")
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: a square grid)")
    p.add_argument("--interpolate", type=int, default=None, metavar="K",
                   help="instead of --n samples, K rows each walking between two random z")
    p.add_argument("--steps", type=int, default=10,
                   help="images per interpolation row, both ends included (default: 10)")
    p.add_argument("--gif", metavar="GIF", default=None,
                   help="with --interpolate: also write the walk as an animated GIF")
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


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of ``z0`` and ``z1`` (K, nz) at fractions ``t`` (S,):
    (K, S, nz). The ends are ``z0`` and ``z1`` exactly; (nearly) parallel pairs fall back to a
    straight line, which is then the same path."""
    a, b = z0[:, None, :].double(), z1[:, None, :].double()
    t = t.double()[None, :, None]
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1, 1))
    so = torch.sin(omega)
    parallel = so.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(so), so)
    curve = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    line = (1 - t) * a + t * b
    out = torch.where(parallel, line, curve).to(z0.dtype)
    out[:, 0], out[:, -1] = z0, z1
    return out


def interpolation_noise(k: int, steps: int, nz: int, seed: int) -> torch.Tensor:
    """(K, steps, nz): row i walks from noise vector 2i to 2i + 1 of ``noise(2K, nz, seed)``."""
    z = noise(2 * k, nz, seed)
    return slerp(z[0::2], z[1::2], torch.linspace(0, 1, steps))


def interpolate(G: torch.nn.Module, k: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
    """The images of ``interpolation_noise``: (K, steps, 3, H, W) in [-1, 1] on the CPU."""
    images = render(G, interpolation_noise(k, steps, G.nz, seed).flatten(0, 1), device)
    return images.reshape(k, steps, *images.shape[1:])


def save_gif(walk: torch.Tensor, path: str | Path, ms_per_frame: int = 120) -> Path:
    """The walk (K, S, 3, H, W) as an animated GIF: frame j shows step j of every row (a column
    of the grid), forth and back, looping."""
    from PIL import Image

    k, s = walk.shape[:2]
    cols = math.ceil(math.sqrt(k))
    frames = [Image.fromarray(make_grid(walk[:, j], nrow=cols)) for j in range(s)]
    frames += frames[-2:0:-1]  # back again, without repeating the ends
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: frames[0].save(  # whole or not at all, as the grids
        tmp, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0))


def check_args(args) -> None:
    """Raise ValueError for a bad value, before the checkpoint is read."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1 (got {args.n})")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more (got {args.seed})")
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow must be at least 1 (got {args.nrow})")
    if args.interpolate is not None and args.interpolate < 1:
        raise ValueError(f"--interpolate must be at least 1 (got {args.interpolate})")
    if not 2 <= args.steps <= 64:
        raise ValueError(f"--steps must be from 2 to 64 (got {args.steps})")
    if args.gif is not None:
        if args.interpolate is None:
            raise ValueError("--gif needs --interpolate K")
        if Path(args.gif).suffix.lower() != ".gif":
            raise ValueError(f"--gif {args.gif}: the file name must end in .gif")
    if args.out:
        grid_format(args.out)


PAGE = 1024  # images per grid file (a 32x32 grid)


@torch.no_grad()
def generate_pages(G: torch.nn.Module, n: int, seed: int, device: torch.device,
                   page: Optional[int] = None, batch: int = 256) -> Iterator[torch.Tensor]:
    """``generate``'s images, ``page`` (default ``PAGE``) at a time: only one page is held. The
    noise of one stream is drawn page by page, so the pages together are ``generate(G, n, seed)``."""
    page = page or PAGE
    rng = np.random.default_rng([NOISE_STREAM, seed])
    for start in range(0, n, page):
        z = torch.from_numpy(rng.standard_normal((min(page, n - start), G.nz), dtype=np.float32))
        yield render(G, z, device, batch)


def page_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one page; ``NAME_0000.png``, ``NAME_0001.png``, ... beside it for more."""
    pages = math.ceil(n / PAGE)
    if pages == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:04d}{out.suffix}") for i in range(pages)]


def write_pages(G: torch.nn.Module, args, cfg, device: torch.device, folder: Path) -> None:
    out = Path(args.out) if args.out else folder / "grid.png"
    nrow = args.nrow or math.ceil(math.sqrt(min(args.n, PAGE)))
    paths = page_paths(out, args.n)
    for path, images in zip(paths, generate_pages(G, args.n, args.seed, device)):
        save_grid(images, path, nrow=nrow)
    where = str(out) if len(paths) == 1 else f"{len(paths)} grids, {paths[0]} .. {paths[-1].name}"
    print(f"wrote {args.n} samples ({cfg.image_size}x{cfg.image_size}) to {where}")


def write_interpolation(G: torch.nn.Module, args, cfg, device: torch.device, folder: Path) -> None:
    walk = interpolate(G, args.interpolate, args.steps, args.seed, device)
    out = Path(args.out) if args.out else folder / "walk.png"
    save_grid(walk.flatten(0, 1), out, nrow=args.steps)
    print(f"wrote {args.interpolate} interpolations of {args.steps} steps "
          f"({cfg.image_size}x{cfg.image_size}) to {out}")
    if args.gif:
        print(f"wrote the animation to {save_gif(walk, args.gif)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        device = resolve_device(args.device)
        G, cfg, _, file = load_generator(args.checkpoint, device)
    except (CheckpointError, ConfigError, DeviceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = file.parent
    try:
        if args.interpolate is not None:
            write_interpolation(G, args, cfg, device, folder)
        else:
            write_pages(G, args, cfg, device, folder)
    except OSError as e:
        if not is_write_failure(e):
            raise
        print(f"error: {write_failure(e, folder)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
