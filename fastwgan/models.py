"""The DCGAN generator and critic of the WGAN paper's code (Arjovsky et al. 2017).

Both networks are built from blocks: a convolution (ConvTranspose2d in the generator, Conv2d in the
critic) followed by BatchNorm in training mode and ReLU or LeakyReLU(0.2). ``impl`` selects how a
block computes the normalisation and activation ("ref": the nn modules; "triton": one fused
kernel from ``fastwgan.kernels.bn_act``). It never changes parameter or buffer names, so a
state_dict saved under one impl loads into the other. ``set_sync_bn`` makes the blocks normalise
over the batch of every process of a group (sync BatchNorm), under either impl.

Layers and initialisation follow martinarjovsky/WassersteinGAN ``models/dcgan.py``: every
convolution is bias-free, conv weights ~ N(0, 0.02), BatchNorm weight ~ N(1, 0.02), bias 0.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
import torch.nn.functional as F

from fastwgan.weight_cast import conv_forward

IMPLS = ("ref", "triton")
NORMS = ("batch", "layer", "none")  # the critic's normalisation (the generator's is always batch)


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _check_size(image_size: int) -> None:
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two, 16 or more (got {image_size})")


class LayerNorm2d(nn.Module):
    """Layer normalisation over (C, H, W) of each sample, then a per-channel scale (1) and offset
    (0): the normalisation of the GP paper's critic (igul222/improved_wgan_training,
    ``tflib/ops/layernorm.py``, eps 1e-5). Per sample, so the gradient penalty stays per sample."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        y = F.layer_norm(x, x.shape[1:], eps=self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


class Block(nn.Module):
    """conv -> [BatchNorm | LayerNorm2d] -> activation, the unit both networks are made of.

    ``conv`` is an nn.Conv2d or nn.ConvTranspose2d; ``bn`` is an nn.BatchNorm2d or None; ``ln``
    a LayerNorm2d or None (a critic without BatchNorm). ``act`` is "relu", "leaky_relu" (slope
    0.2) or "none". ``impl`` changes only how BatchNorm and the activation are computed.
    """

    def __init__(self, conv: nn.Module, bn: nn.BatchNorm2d | None, act: str, impl: str = "ref",
                 ln: LayerNorm2d | None = None):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.ln = ln
        self.act = act
        self.negative_slope = 0.2
        self.impl = _check_impl(impl)
        # a torch.distributed group: training statistics over all its processes (set_sync_bn)
        self.sync_group = None
        # the batch is this many equal groups of images, each normalised by its own statistics
        # (row_groups): the critic's real and fake halves in one batch
        self.row_groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_forward(self.conv, x)
        if self.ln is not None:
            y = self.ln(y)
        if self.bn is not None and (self.impl == "triton" or self.sync_group is not None
                                    or self.row_groups > 1):
            from fastwgan.kernels.bn_act import bn_act

            bn = self.bn
            return bn_act(y, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                          training=bn.training, momentum=bn.momentum, eps=bn.eps,
                          act=self.act, negative_slope=self.negative_slope, impl=self.impl,
                          process_group=self.sync_group, groups=self.row_groups,
                          grads_into_params=getattr(self, "cast_into_grad", False),
                          num_batches_tracked=bn.num_batches_tracked if bn.track_running_stats else None)
        if self.bn is not None:
            y = self.bn(y)
        if self.act == "relu":
            return F.relu(y)
        if self.act == "leaky_relu":
            return F.leaky_relu(y, self.negative_slope)
        return y

    def extra_repr(self) -> str:
        return f"act={self.act}, impl={self.impl}" + (", sync_bn" if self.sync_group is not None else "")


def _up(cin, cout, k, s, p, impl):
    return Block(nn.ConvTranspose2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), "relu", impl)


def _down(cin, cout, k, s, p, impl, norm="batch"):
    return Block(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout) if norm == "batch" else None,
                 "leaky_relu", impl, ln=LayerNorm2d(cout) if norm == "layer" else None)


def init_weights(m: nn.Module) -> None:
    """The paper code's init: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) -> image (N, nc, S, S) in [-1, 1].

    ConvT(nz, c, 4, 1, 0) BN ReLU, then ConvT(4, 2, 1) blocks halving the width up to S/2,
    [extra 3x3 blocks], ConvT(c, nc, 4, 2, 1) Tanh. c = ngf * S / 8 (512 at 64x64, ngf 64).
    """

    def __init__(self, image_size: int = 64, nz: int = 100, ngf: int = 64, nc: int = 3,
                 extra_layers: int = 0, impl: str = "ref"):
        super().__init__()
        _check_size(image_size)
        self.image_size, self.nz = image_size, nz
        cngf, tisize = ngf // 2, 4
        while tisize != image_size:
            cngf, tisize = cngf * 2, tisize * 2
        blocks = [_up(nz, cngf, 4, 1, 0, impl)]
        csize = 4
        while csize < image_size // 2:
            blocks.append(_up(cngf, cngf // 2, 4, 2, 1, impl))
            cngf, csize = cngf // 2, csize * 2
        for _ in range(extra_layers):
            blocks.append(Block(nn.Conv2d(cngf, cngf, 3, 1, 1, bias=False), nn.BatchNorm2d(cngf), "relu", impl))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.ConvTranspose2d(cngf, nc, 4, 2, 1, bias=False)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return torch.tanh(conv_forward(self.head, self.blocks(z)))


class Critic(nn.Module):
    """image (N, nc, S, S) -> score (N,).

    Conv(nc, ndf, 4, 2, 1) LReLU(0.2) (no BatchNorm), [extra 3x3 blocks], Conv(4, 2, 1) blocks
    doubling the width down to 4x4, each BN LReLU(0.2), then Conv(c, 1, 4, 1, 0).
    The paper's code averages the scores over the batch inside the network; here the per-sample
    scores are returned and the losses take the mean.

    ``norm`` replaces the BatchNorm of those blocks: "layer" (LayerNorm2d) or "none", the
    critics of the gradient penalty, whose samples must not interact (Gulrajani et al. 2017, 4).
    """

    def __init__(self, image_size: int = 64, ndf: int = 64, nc: int = 3, extra_layers: int = 0,
                 impl: str = "ref", norm: str = "batch"):
        super().__init__()
        _check_size(image_size)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.image_size = image_size
        blocks = [_down(nc, ndf, 4, 2, 1, impl, norm="none")]
        csize, cndf = image_size // 2, ndf
        for _ in range(extra_layers):
            blocks.append(_down(cndf, cndf, 3, 1, 1, impl, norm))
        while csize > 4:
            blocks.append(_down(cndf, cndf * 2, 4, 2, 1, impl, norm))
            cndf, csize = cndf * 2, csize // 2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cndf, 1, 4, 1, 0, bias=False)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self.head, self.blocks(x)).flatten()


def set_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every block of ``model`` to ``impl`` in place (names and values are unchanged)."""
    _check_impl(impl)
    for m in model.modules():
        if isinstance(m, Block):
            m.impl = impl
    return model


@contextlib.contextmanager
def row_groups(model: nn.Module, groups: int):
    """Within: ``model``'s batch is ``groups`` equal groups of images, each normalised by its own
    BatchNorm statistics, the running statistics updated by each in turn: the same as one call
    per group (fastwgan.kernels.bn_act's ``groups``), in one pass through the network."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.row_groups = groups
    try:
        yield
    finally:
        for b in blocks:
            b.row_groups = 1


def set_sync_bn(model: nn.Module, group) -> nn.Module:
    """Make every block of ``model`` normalise over the batch of all processes of ``group`` (a
    torch.distributed group; None: each process's own batch again) when training. Parameters,
    buffers and their names are unchanged; eval mode uses the running statistics, no collective."""
    for m in model.modules():
        if isinstance(m, Block):
            m.sync_group = group
    return model
