"""What FID and KID cost: Inception features of N images (64x64 uint8, resized to 299 on the way),
then the Fréchet distance and KID of two such sets, each step timed once.

    python bench/fid_cost.py --n 1000 [--device cpu] [--threads 2]

Prints one line per step and the per-image rate; an evaluation of N generated images against
cached real statistics costs the features of N images plus FID and KID; the real set's features
are computed once (N_real images at the same rate). The images are the built-in synthetic faces
(the content does not change the time).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fastwgan.inception import load_feature_net
from fastwgan.metrics import fid_from_features, kernel_inception_distance


def faces(n: int, size: int = 64) -> torch.Tensor:
    from PIL import Image

    from fastwgan.data.synthetic import HEIGHT, WIDTH, render_face

    left, top = (WIDTH - 108) // 2, (HEIGHT - 108) // 2
    out = [np.asarray(render_face(0, i).crop((left, top, left + 108, top + 108))
                      .resize((size, size), Image.BILINEAR)) for i in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}, device {device}")
    net = load_feature_net(None, device)
    images = faces(args.n)
    net.features(images[:8])  # warm-up: TorchScript's profiling runs
    t = time.perf_counter()
    feats = net.features(images, args.batch_size)
    t_feat = time.perf_counter() - t
    print(f"features of {args.n} images: {t_feat:.1f} s, {args.n / t_feat:.2f} img/s, "
          f"{t_feat / args.n * 1e3:.0f} ms/img")
    half = args.n // 2
    t = time.perf_counter()
    fid = fid_from_features(feats[:half], feats[half:])
    t_fid = time.perf_counter() - t
    t = time.perf_counter()
    kid = kernel_inception_distance(feats[:half], feats[half:])
    t_kid = time.perf_counter() - t
    t = time.perf_counter()
    kid_full = kernel_inception_distance(feats, feats[::-1].copy())
    t_kid_full = time.perf_counter() - t
    print(f"FID of {half} vs {args.n - half} features: {t_fid:.2f} s (value {fid:.2f}); KID, 100 subsets "
          f"of {half}: {t_kid:.2f} s (value {kid:.4f}); KID, 100 subsets of {min(args.n, 1000)}: "
          f"{t_kid_full:.2f} s")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
