"""Evaluate a trained generator: sliced Wasserstein distance to real images, and FID on request.

    python -m fastwgan.eval runs/wgan --data /data/celeba --n 10000 --json runs/wgan/eval.json

CHECKPOINT is a run directory (its checkpoint.pt is used) or a .pt file written by the trainer.
``--n`` samples are generated from fixed noise (``--seed``) and compared with ``--n`` real
images decoded as in training (image size and crop from the checkpoint's config). The table
gives SWD x 1e3 per Laplacian level (finest first) and its average: see
``fastwgan.metrics.sliced_wasserstein`` for when two numbers are comparable.

FID needs Inception weights on disk (nothing is downloaded): ``--fid-weights`` takes the
TorchScript feature extractor ``inception-2015-12-05.pt`` used by the StyleGAN2-ADA, StyleGAN3
and EDM metrics (called on uint8 images with ``return_features=True``, 2048-d pool features).
FID depends on the number of images: compare at equal ``--n`` (the usual 50k gives lower values
than 10k).
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import json
import os
import sys
import warnings
from typing import Any, Optional, Sequence

import torch

from fastwgan import checkpoint
from fastwgan.config import Config
from fastwgan.device import DeviceError, resolve_device
from fastwgan.metrics import (DIR_REPEATS, DIRS_PER_REPEAT, NHOOD_SIZE, NHOODS_PER_IMAGE,
                              fid_from_features, generate_uint8, sliced_wasserstein)
from fastwgan.outputs import one_line_warnings

PROG = "python -m fastwgan.eval"


class EvalError(Exception):
    """Anything the user can fix (a path, a flag, a file): printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise EvalError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory or checkpoint .pt file")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder (or .zip) of real images (default: the run's own --data, which is the "
                        "built-in synthetic set when the run used it)")
    p.add_argument("--n", type=int, default=10_000,
                   help="generated images, and real images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise z, of the real-image draw and of the SWD draws "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per generator/feature batch (default: %(default)s)")
    p.add_argument("--crop", type=int, default=None,
                   help="center crop of the real images before resizing (default: the run's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="TorchScript Inception feature extractor (inception-2015-12-05.pt): "
                        "adds FID")
    return p


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_real(data: Optional[str], cfg: Config, crop: Optional[int], n: int, seed: int) -> torch.Tensor:
    """``n`` real images (uint8 (n, 3, H, W)) preprocessed as the run's training data."""
    if data is not None and not (os.path.isdir(data) or os.path.isfile(data)):  # a folder or a .zip
        raise EvalError(f"--data: no folder or zip at {data}")
    from fastwgan.data import DataError, load_real_images  # the loader's heavy imports, only here

    try:
        real = load_real_images(data, cfg.image_size, crop, n, seed)
    except (DataError, OSError, ValueError) as e:
        raise EvalError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if real.dim() != 4 or real.shape[0] == 0:
        raise EvalError(f"no usable real images under {data or 'the built-in synthetic set'}")
    return real


def load_inception(path: str, device: torch.device) -> torch.jit.ScriptModule:
    """The TorchScript Inception feature extractor at ``path`` (never downloaded)."""
    if not os.path.isfile(path):
        raise EvalError(f"--fid-weights: no file at {path}")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch, but it is the format these weights ship in
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location=device).eval()
    except Exception:
        raise EvalError(f"--fid-weights {path} is not a TorchScript module: expected the feature "
                        f"extractor inception-2015-12-05.pt of the StyleGAN2-ADA/StyleGAN3/EDM "
                        f"metrics (a pytorch-fid .pth state_dict is not supported)") from None


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                       device: torch.device) -> torch.Tensor:
    """Pool features (N, 2048) of uint8 images (N, 3, H, W); the model resizes to 299 itself."""
    feats = [model(images[i:i + batch_size].to(device), return_features=True).double().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(feats)


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    swd = result["swd"]
    lines = [f"{result['checkpoint']} (iteration {result['iteration']}): {result['n']} generated vs "
             f"{result['n']} real images from {result['data'] or 'the built-in synthetic set'}, "
             f"seed {result['seed']}",
             f"SWD x 1e3 (Karras et al. 2018: {swd['nhoods_per_image']} {swd['nhood_size']}x"
             f"{swd['nhood_size']} neighbourhoods per image and level, {swd['directions']} projections)",
             f"{'resolution':>12}  {'SWD':>10}"]
    for res, v in zip(swd["resolutions"], swd["levels"]):
        lines.append(f"{res:>12}  {v:>10.3f}")
    lines.append(f"{'average':>12}  {swd['mean']:>10.3f}")
    if result.get("fid") is not None:
        lines.append(f"FID {result['fid']:.3f} ({result['n']} images, "
                     f"features of {os.path.basename(result['fid_weights'])})")
    return "\n".join(lines)


def _note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 1:
        raise EvalError(f"--n must be at least 1 (got {args.n})")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.crop is not None and args.crop < 1:
        raise EvalError(f"--crop must be positive (got {args.crop})")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise EvalError(f"--json: no folder for {args.json}")
    device = resolve_device(args.device)
    inception = load_inception(args.fid_weights, device) if args.fid_weights else None
    try:
        gen, cfg, iteration, path = checkpoint.load_generator(args.checkpoint, device)
    except checkpoint.CheckpointError as e:
        raise EvalError(str(e).splitlines()[0]) from None

    data = args.data if args.data is not None else cfg.data
    crop = args.crop if args.crop is not None else cfg.crop
    real = load_real(data, cfg, crop, args.n, args.seed)
    n = real.shape[0]
    if n < args.n:
        _note(f"only {n} real images available: comparing {n} generated with {n} real")
    fake = generate_uint8(gen, n, z_seed=args.seed, batch_size=args.batch_size, device=device)
    if real.shape[1:] != fake.shape[1:]:
        raise EvalError(f"real images are {tuple(real.shape[1:])}, generated ones {tuple(fake.shape[1:])}")

    _note(f"SWD of {n} generated vs {n} real images on {device}")
    swd = sliced_wasserstein(real.to(device), fake, seed=args.seed, batch_size=args.batch_size)
    fid = None
    if inception is not None:
        if n < 2:
            raise EvalError(f"FID needs at least 2 images (got {n})")
        try:
            feats = [inception_features(inception, x, args.batch_size, device) for x in (real, fake)]
        except Exception as e:  # any TorchScript file can be passed: say it did not work as one
            raise EvalError(f"--fid-weights {args.fid_weights}: the model failed on uint8 images "
                            f"with return_features=True: {str(e).strip().splitlines()[-1]}") from None
        fid = fid_from_features(*feats)
    return {
        "checkpoint": str(path),
        "iteration": iteration,
        "n": n,
        "seed": args.seed,
        "data": data,  # None: the built-in synthetic set
        "image_size": cfg.image_size,
        "crop": crop,
        "device": str(device),
        "swd": {**swd, "nhood_size": NHOOD_SIZE, "nhoods_per_image": NHOODS_PER_IMAGE,
                "directions": DIR_REPEATS * DIRS_PER_REPEAT},
        "fid": fid,
        "fid_weights": args.fid_weights,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with one_line_warnings(f"{PROG}: warning: "):
            result = evaluate(args)
    except (EvalError, DeviceError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        except OSError as e:
            print(f"{PROG}: error: cannot write --json {args.json}: {e.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
