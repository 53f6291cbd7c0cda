"""Evaluate a trained generator: FID, KID and the sliced Wasserstein distance to real images.

    python -m fastwgan.eval runs/wgan --data /data/celeba --n 10000 --json runs/wgan/eval.json

CHECKPOINT is a run directory (its checkpoint.pt is used) or a .pt file written by the trainer.
``--n`` samples are generated from fixed noise (``--seed``) and quantised to uint8 as real JPEGs
are (``fastwgan.pixels.to_uint8``). ``--metric`` picks among fid, kid and swd (default: all three
where the Inception weights are installed, else swd).

FID and KID compare the ``--n`` generated images with every real image of the data (decoded as
in training: the run's crop and image size), through Inception-v3's 2048-d pool features at
299x299 (``fastwgan.inception``: the weights of the ``fastwgan[fid]`` extra, or NVIDIA's
``inception-2015-12-05.pt`` given with ``--fid-weights``; nothing is downloaded). The real
features are cached per dataset, resolution, crop and network (``fastwgan.realstats``). FID
depends on the number of generated images: compare at equal ``--n`` (50k gives lower values
than 10k). KID is unbiased (100 subsets of up to 1000 images, cubic polynomial kernel).

SWD compares ``--n`` generated with ``--n`` real images; the table gives SWD x 1e3 per Laplacian
level (finest first) and its average: see ``fastwgan.metrics.sliced_wasserstein``.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

import torch

from fastwgan import checkpoint
from fastwgan.config import Config
from fastwgan.device import DeviceError, resolve_device
from fastwgan.inception import INSTALL, FeatureNet, InceptionError, load_feature_net
from fastwgan.metrics import (DIR_REPEATS, DIRS_PER_REPEAT, NHOOD_SIZE, NHOODS_PER_IMAGE,
                              generate_uint8, sliced_wasserstein)
from fastwgan.outputs import one_line_warnings

PROG = "python -m fastwgan.eval"
METRICS = ("fid", "kid", "swd")


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
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="fid, kid or swd; repeat or separate with commas (default: all three, or swd "
                        "alone without the Inception weights)")
    p.add_argument("--n", type=int, default=10_000,
                   help="generated images (and real images for SWD; FID and KID use every real "
                        "image) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise z, of the real-image draw and of the SWD and KID draws "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per generator batch (Inception takes 64 at a time) "
                        "(default: %(default)s)")
    p.add_argument("--crop", type=int, default=None,
                   help="center crop of the real images before resizing (default: the run's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="NVIDIA's TorchScript Inception feature extractor inception-2015-12-05.pt "
                        "(default: the weights of the fid extra, " + INSTALL + ")")
    return p


def chosen_metrics(asked: Optional[list[str]]) -> tuple[list[str], bool]:
    """The metrics to compute, in METRICS order, and whether they were asked for explicitly."""
    if not asked:
        return list(METRICS), False
    names = {m.strip() for arg in asked for m in arg.split(",") if m.strip()}
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        raise EvalError(f"--metric: unknown {', '.join(unknown) or 'empty name'} (choose from "
                        f"{', '.join(METRICS)})")
    return [m for m in METRICS if m in names], True


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_real(data: Optional[str], cfg: Config, crop: Optional[int], n: int, seed: int) -> torch.Tensor:
    """``n`` real images (uint8 (n, 3, H, W)) preprocessed as the run's training data."""
    _check_data(data)
    from fastwgan.data import DataError, load_real_images  # the loader's heavy imports, only here

    try:
        real = load_real_images(data, cfg.image_size, crop, n, seed)
    except (DataError, OSError, ValueError) as e:
        raise EvalError(_first_line(e)) from None
    if real.dim() != 4 or real.shape[0] == 0:
        raise EvalError(f"no usable real images under {data or 'the built-in synthetic set'}")
    return real


def _check_data(data: Optional[str]) -> None:
    if data is not None and not (os.path.isdir(data) or os.path.isfile(data)):  # a folder or a .zip
        raise EvalError(f"--data: no folder or zip at {data}")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def feature_net(metrics: list[str], explicit: bool, fid_weights: Optional[str],
                device: torch.device) -> Optional[FeatureNet]:
    """The Inception network when FID or KID is computed. Without the extra: an error when they
    were asked for, otherwise a note and SWD alone (``metrics`` loses them)."""
    if not {"fid", "kid"} & set(metrics):
        return None
    try:
        return load_feature_net(fid_weights, device)
    except InceptionError as e:
        if explicit or fid_weights is not None:
            raise EvalError(str(e)) from None
        _note(f"FID and KID left out: {INSTALL} brings their Inception weights")
        metrics[:] = [m for m in metrics if m not in ("fid", "kid")]
        return None


def fid_and_kid(net: FeatureNet, fake: torch.Tensor, data: Optional[str], cfg: Config,
                crop: Optional[int], args: argparse.Namespace) -> dict[str, Any]:
    """FID and KID of the generated uint8 images against every real image of ``data``."""
    from fastwgan.data import DataError, open_dataset
    from fastwgan.fid import cpu_estimate, fid_kid, real_statistics

    _check_data(data)
    try:
        dataset = open_dataset(data, log=_note)
    except (DataError, OSError, ValueError) as e:
        raise EvalError(_first_line(e)) from None
    if not dataset.files:
        raise EvalError(f"no usable real images under {data or 'the built-in synthetic set'}")
    try:
        real = real_statistics(dataset, cfg.image_size, crop, net, log=_note)
        _note(f"FID/KID: Inception features of {fake.shape[0]} generated images"
              f"{cpu_estimate(net, cfg.image_size, fake.shape[0])}")
        result = fid_kid(net, real, fake, seed=args.seed)
    except (DataError, OSError) as e:
        raise EvalError(_first_line(e)) from None
    except Exception as e:  # any TorchScript file can be passed: say it did not work as one
        raise EvalError(_model_failed(e)) from None
    return {**result, "network": net.name, "network_sha1": net.sha1, "real_stats": str(real.path)}


def _model_failed(e: Exception) -> str:
    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return f"the Inception model failed on the images: {last}"


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    swd, inc = result.get("swd"), result.get("inception")
    lines = [f"{result['checkpoint']} (iteration {result['iteration']}): {result['n']} generated images, "
             f"real images from {result['data'] or 'the built-in synthetic set'}, seed {result['seed']}"]
    if inc is not None:
        if result.get("fid") is not None:
            lines.append(f"FID {result['fid']:.3f} ({result['n']} generated vs all {inc['real_n']} real "
                         f"images, Inception features of {inc['network']})")
        if result.get("kid") is not None:
            lines.append(f"KID x 1e3 {result['kid'] * 1e3:.3f} (unbiased, {inc['kid_subsets']} subsets of "
                         f"{inc['kid_subset_size']})")
    if swd is not None:
        lines += [f"SWD x 1e3 (Karras et al. 2018: {result['swd_n']} generated vs {result['swd_n']} real, "
                  f"{swd['nhoods_per_image']} {swd['nhood_size']}x{swd['nhood_size']} neighbourhoods per "
                  f"image and level, {swd['directions']} projections)",
                  f"{'resolution':>12}  {'SWD':>10}"]
        for res, v in zip(swd["resolutions"], swd["levels"]):
            lines.append(f"{res:>12}  {v:>10.3f}")
        lines.append(f"{'average':>12}  {swd['mean']:>10.3f}")
    return "\n".join(lines)


def _note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise EvalError(f"--n must be at least 1 (got {args.n})")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.crop is not None and args.crop < 1:
        raise EvalError(f"--crop must be positive (got {args.crop})")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise EvalError(f"--json: no folder for {args.json}")


def swd_against_real(fake: torch.Tensor, data: Optional[str], cfg: Config, crop: Optional[int],
                     args: argparse.Namespace, device: torch.device) -> tuple[dict, int]:
    """SWD of the generated images against as many real ones (fewer when the data has fewer)."""
    real = load_real(data, cfg, crop, fake.shape[0], args.seed)
    n = real.shape[0]
    if n < fake.shape[0]:
        _note(f"only {n} real images available: comparing {n} generated with {n} real for SWD")
    if real.shape[1:] != fake.shape[1:]:
        raise EvalError(f"real images are {tuple(real.shape[1:])}, generated ones {tuple(fake.shape[1:])}")
    _note(f"SWD of {n} generated vs {n} real images on {device}")
    swd = sliced_wasserstein(real.to(device), fake[:n], seed=args.seed, batch_size=args.batch_size)
    return {**swd, "nhood_size": NHOOD_SIZE, "nhoods_per_image": NHOODS_PER_IMAGE,
            "directions": DIR_REPEATS * DIRS_PER_REPEAT}, n


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    metrics, explicit = chosen_metrics(args.metric)
    device = resolve_device(args.device)
    net = feature_net(metrics, explicit, args.fid_weights, device)
    try:
        gen, cfg, iteration, path = checkpoint.load_generator(args.checkpoint, device)
    except checkpoint.CheckpointError as e:
        raise EvalError(str(e).splitlines()[0]) from None
    data = args.data if args.data is not None else cfg.data
    crop = args.crop if args.crop is not None else cfg.crop
    _check_data(data)
    fake = generate_uint8(gen, args.n, z_seed=args.seed, batch_size=args.batch_size, device=device)
    result: dict[str, Any] = {
        "checkpoint": str(path), "iteration": iteration, "n": args.n, "seed": args.seed,
        "data": data,  # None: the built-in synthetic set
        "image_size": cfg.image_size, "crop": crop, "device": str(device), "metrics": metrics,
        "fid": None, "kid": None, "inception": None, "fid_weights": args.fid_weights,
        "swd": None, "swd_n": None,
    }
    if net is not None:
        if args.n < 2:
            raise EvalError(f"FID and KID need at least 2 generated images (got {args.n})")
        inc = fid_and_kid(net, fake, data, cfg, crop, args)
        fid, kid = inc.pop("fid"), inc.pop("kid")
        result["fid"] = fid if "fid" in metrics else None
        result["kid"] = kid if "kid" in metrics else None
        result["inception"] = inc
    if "swd" in metrics:
        result["swd"], result["swd_n"] = swd_against_real(fake, data, cfg, crop, args, device)
    return result


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
