"""Generated images to pixels: the one float-to-uint8 conversion, for sample grids and metrics alike.

One rule for both, so that a sample grid shows the pixels the metrics (SWD, FID) measure.
"""
from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 levels ``floor(x * 127.5 + 128)``, clamped to [0, 255], on the
    images' device (floats are detached; uint8 passes through unchanged).

    The rounding is to the nearest level, half up on a tie. It is the exact inverse of the training
    loader's ``u / 127.5 - 1``: every level ``u`` comes back as itself. StyleGAN2-ADA converts its
    snapshots and metric inputs by the same rule (``x * 127.5 + 128``, clamped, cast), so numbers
    compare with theirs.
    """
    if images.dtype == torch.uint8:
        return images
    return (images.detach().float() * 127.5 + 128.0).clamp_(0, 255).to(torch.uint8)
