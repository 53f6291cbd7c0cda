"""FID and KID of a generator: the real set's Inception features (computed once, cached), the
generated side, and the two distances from the same features.

The real set is every usable image of the run's data (for CelebA: the images trained on; the
published tables use all 162,770 images of the train split), decoded as in training (the run's
crop, resized to its image size, uint8) and seen by the network through the same resize to 299 as
the generated images (``fastwgan.inception``). Both sides are uint8 images at the run's resolution.

The features (float32, N x 2048: 8 KB an image, 1.3 GB for CelebA's train split) and their mean
and covariance (float64) are cached in ``<cache>/fid/real-<key>-<net>.npz``, ``<key>`` being the
decoded cache's (``fastwgan.data.cache.cache_key``: every file's path, size and modification
time, the image size and the crop) and ``<net>`` the start of the weights file's SHA-1: another
file, resolution, crop or network gives another entry. KID needs the features themselves (it
draws subsets of them), FID only the mean and covariance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fastwgan.atomic import atomic_write
from fastwgan.data.cache import cache_key
from fastwgan.data.dataset import Dataset
from fastwgan.data.synthetic import default_cache_root
from fastwgan.inception import FEATURE_DIM, FeatureNet
from fastwgan.metrics import (KID_SUBSET_SIZE, KID_SUBSETS, feature_statistics, frechet_distance,
                              generate_uint8, kernel_inception_distance)

STATS_VERSION = 1
DECODE_CHUNK = 2048  # images decoded at a time (25 MB at 64x64): the whole set never is


@dataclass
class RealStats:
    """Features (N, 2048) float32, their mean (D,) and covariance (D, D) in float64."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    path: Path
    from_cache: bool

    @property
    def n(self) -> int:
        return self.features.shape[0]


def stats_path(dataset: Dataset, image_size: int, crop: Optional[int], net: FeatureNet) -> Path:
    key = cache_key(dataset.files, image_size, crop)
    return default_cache_root() / "fid" / f"real-{key}-{net.sha1[:12]}.npz"


def _read(path: Path, n: int) -> Optional[RealStats]:
    """The cached entry of ``n`` images; None when missing, damaged or of another format."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            if int(z["version"]) != STATS_VERSION or z["features"].shape != (n, FEATURE_DIM):
                return None
            return RealStats(z["features"], z["mu"], z["sigma"], path, from_cache=True)
    except (OSError, ValueError, KeyError):
        return None  # rebuilt


def _write(stats: RealStats) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, version=STATS_VERSION, features=stats.features, mu=stats.mu, sigma=stats.sigma)

    stats.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stats.path, write, sync=False)  # a cache: rebuilt if lost


def real_statistics(dataset: Dataset, image_size: int, crop: Optional[int], net: FeatureNet,
                    batch_size: int = 64, workers: int = -1,
                    log: Optional[Callable[[str], None]] = None, say_time: bool = True) -> RealStats:
    """The features and statistics of every image of ``dataset``, from the cache when current.

    ``log`` is told before a computation (``say_time``: with its estimated time on a CPU) and
    after it."""
    from fastwgan.data.pillow import decode_all  # the loader's imports, only when decoding

    path = stats_path(dataset, image_size, crop, net)
    hit = _read(path, len(dataset.files))
    if hit is not None:
        return hit
    files = dataset.files
    if log is not None:
        log(f"FID: Inception features of all {len(files)} real images, once (cached in {path})"
            f"{cpu_estimate(net, image_size, len(files)) if say_time else ''}")
    t = time.perf_counter()
    feats = []
    for i in range(0, len(files), DECODE_CHUNK):
        images = torch.from_numpy(decode_all(files[i:i + DECODE_CHUNK], image_size, crop, workers))
        feats.append(net.features(images, batch_size))
    features = np.concatenate(feats)
    mu, sigma = feature_statistics(features)
    stats = RealStats(features, mu, sigma, path, from_cache=False)
    _write(stats)
    if log is not None:
        log(f"FID: real features done in {time.perf_counter() - t:.1f} s")
    return stats


def cpu_estimate(net: FeatureNet, image_size: int, n_images: int) -> str:
    """For a computation of ``n_images`` features: '' on a GPU; on a CPU ': Inception-v3 ...
    about 5.1 min on this CPU (3.3 img/s measured)', timed on one batch (see
    ``FeatureNet.images_per_second``)."""
    if net.device.type != "cpu":
        return ""
    rate = net.images_per_second(image_size, min(64, max(n_images, 1)))  # the work's batch size
    minutes = n_images / rate / 60
    return (f": Inception-v3 at 299x299 is about 6 GFLOP an image, about {minutes:.1f} min on this "
            f"CPU ({rate:.1f} img/s measured)")


def fid_kid(net: FeatureNet, real: RealStats, fake_uint8: torch.Tensor, seed: int = 0,
            batch_size: int = 64) -> dict:
    """FID and KID of uint8 generated images (N, 3, H, W) against the real set's features.

    Both sides are uint8 at the run's resolution (the generated ones quantised by
    ``fastwgan.pixels.to_uint8``, as the real ones are by JPEG decoding), resized alike to 299."""
    fake = net.features(fake_uint8, batch_size)
    fid = frechet_distance(real.mu, real.sigma, *feature_statistics(fake))
    kid = kernel_inception_distance(real.features, fake, seed=seed)
    return {"fid": fid, "kid": kid, "real_n": real.n, "kid_subsets": KID_SUBSETS,
            "kid_subset_size": min(KID_SUBSET_SIZE, real.n, fake.shape[0])}


def fid_for_training(generator: torch.nn.Module, net: FeatureNet, real: RealStats, n: int,
                     z_seed: int = 0, seed: int = 0) -> dict:
    """``fid_kid`` of ``n`` samples of ``generator`` from the same z (``z_seed``) every time, so
    that successive numbers differ only by the generator. Eval mode, restored afterwards."""
    fake = generate_uint8(generator, n, z_seed)
    return fid_kid(net, real, fake, seed)


@dataclass
class TrainingFID:
    """FID and KID at the trainer's evaluations: the network, the real set's features, and ``n``
    samples from the same z each time."""

    net: FeatureNet
    real: RealStats
    n: int
    z_seed: int
    seed: int

    def __call__(self, generator: torch.nn.Module) -> dict:
        r = fid_for_training(generator, self.net, self.real, self.n, self.z_seed, self.seed)
        return {"fid": r["fid"], "kid": r["kid"]}


def evaluations_left(done: int, iters: int, every: int) -> int:
    """Evaluations after iteration ``done`` up to ``iters``: every ``every`` and at the last."""
    return iters // every - done // every + (iters % every != 0)


__all__ = ["TrainingFID", "evaluations_left", "RealStats", "real_statistics", "stats_path", "cpu_estimate", "fid_kid",
           "fid_for_training"]
