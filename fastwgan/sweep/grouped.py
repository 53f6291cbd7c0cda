"""K members of one architecture as one grouped network: every layer K times wider, grouped.

A grouped layer computes what the K members' layers compute side by side: ``Conv2d(K*Cin,
K*Cout, groups=K)`` and ``ConvTranspose2d(K*Cin, K*Cout, groups=K)`` (the grouped weight is the
members' weights concatenated along dim 0, for both), BatchNorm over K*C channels (per channel,
so exactly each member's own), LayerNorm over each member's (C, H, W). The generator maps z
(N, K*nz) to images (N, K*3, S, S); the critic maps (N, K*3, S, S) to scores (N, K).

Design: the members stay ordinary ``Generator`` / ``Critic`` modules and own their parameters;
the grouped weight is ``torch.cat`` of the members' weights at each forward. So each member has
its own optimizer (its own lr, its own clip), its checkpoint is its module's state_dict in the
single-run format, and splitting the group back into single runs is nothing to do: exact and
simple. The cost is one copy of the weights per layer per forward (the critic's 2.76 M parameters
per member at 64x64: 11 MB read and written per member per forward). Measured on the 2-core CPU
(load average 3.5, 16 members): the copies take 0.23 of a critic forward at the cpu preset
(318 against 1,364 ms) and 0.20 at the paper's networks (batch 16). On an H100 (estimated, not
measured: 3 TB/s, about 600 TFLOP/s in bf16) they would be about a third of a bf16 critic
forward of batch 64, less of a step. The alternative, grouped parameters with a per-element
learning rate and clip, saves that copy but needs a per-member table in both optimizers' updates
(torch's RMSprop and Adam do not take one) and slicing for every checkpoint: the next step where
the GPU's figures say the copy matters.
The BatchNorm running statistics are the one piece of state the grouped forward updates in place:
they live in grouped buffers (K*C) and each member's buffers are views of its slice, so the
member module reads and saves exactly its own.

Gradients are independent: the members' parameters are disjoint and the losses are summed, so
member k's gradient is that of its own loss; grouped and plain convolutions accumulate in another
order, so a member matches its single run to fp32 rounding, not bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from fastwgan.models import Block, Critic, Generator


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


class _Grouped(nn.Module):
    """The members, and their BatchNorm running statistics gathered into grouped buffers."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("a grouped network needs at least one member")
        self.members = nn.ModuleList(members)
        self.k = len(members)
        for i, blocks in enumerate(zip(*(m.blocks for m in members))):
            if blocks[0].bn is not None:
                self._share_bn_buffers(i, [b.bn for b in blocks])

    def _share_bn_buffers(self, i: int, bns: list[nn.BatchNorm2d]) -> None:
        """Grouped running statistics; each member's are views of its slice (same values)."""
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            parts = [getattr(bn, name) for bn in bns]
            grouped = torch.stack(parts) if parts[0].dim() == 0 else torch.cat(parts)
            self.register_buffer(f"bn{i}_{name}", grouped, persistent=False)
            size = parts[0].numel()
            for k, bn in enumerate(bns):
                view = grouped[k] if parts[0].dim() == 0 else grouped[k * size:(k + 1) * size]
                setattr(bn, name, view)  # a registered buffer: the member's state_dict reads it

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` of every member, as one grouped layer: (N, K*Cin, ...) -> (N, K*Cout, ...)."""
        blocks = [m.blocks[i] for m in self.members]
        first: Block = blocks[0]
        y = self.conv([b.conv for b in blocks], x)
        if first.ln is not None:
            y = self.layer_norm([b.ln for b in blocks], y)
        if first.bn is not None:
            return self.bn_act(i, first, [b.bn for b in blocks], y)
        if first.act == "relu":
            return F.relu(y)
        if first.act == "leaky_relu":
            return F.leaky_relu(y, first.negative_slope)
        return y

    def conv(self, convs: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        c = convs[0]
        w = _cat([m.weight for m in convs])
        if isinstance(c, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, None, c.stride, c.padding, c.output_padding, self.k, c.dilation)
        return F.conv2d(x, w, None, c.stride, c.padding, c.dilation, self.k)

    def layer_norm(self, lns: list[nn.Module], y: torch.Tensor) -> torch.Tensor:
        """LayerNorm2d per member: over each member's (C, H, W), then its per-channel affine."""
        n, kc, h, w = y.shape
        c = kc // self.k
        z = F.layer_norm(y.reshape(n, self.k, c, h, w), (c, h, w), eps=lns[0].eps).reshape(n, kc, h, w)
        return z * _cat([m.weight for m in lns])[:, None, None] + _cat([m.bias for m in lns])[:, None, None]

    def bn_act(self, i: int, block: Block, bns: list[nn.BatchNorm2d], y: torch.Tensor) -> torch.Tensor:
        bn = bns[0]
        weight, bias = _cat([b.weight for b in bns]), _cat([b.bias for b in bns])
        mean, var = getattr(self, f"bn{i}_running_mean"), getattr(self, f"bn{i}_running_var")
        training = self.training
        # row_groups: the critic's real and fake halves in one batch (fastwgan.models.row_groups),
        # each normalised by its own statistics and counted as a call of its own
        groups = block.row_groups if training else 1
        if training:
            getattr(self, f"bn{i}_num_batches_tracked").add_(groups)
        if block.impl == "triton" or groups > 1:
            from fastwgan.kernels.bn_act import bn_act

            return bn_act(y, weight, bias, mean, var, training=training, momentum=bn.momentum,
                          eps=bn.eps, act=block.act, negative_slope=block.negative_slope,
                          impl=block.impl, groups=groups)
        y = F.batch_norm(y, mean, var, weight, bias, training, bn.momentum, bn.eps)
        return F.relu(y) if block.act == "relu" else F.leaky_relu(y, block.negative_slope)


class GroupedGenerator(_Grouped):
    """K generators as one: z (N, K*nz) -> images (N, K*nc, S, S), member k's in channels
    [k*nc, (k+1)*nc)."""

    def __init__(self, members: Sequence[Generator]):
        super().__init__(members)
        self.nz, self.image_size = members[0].nz, members[0].image_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z[:, :, None, None] if z.dim() == 2 else z
        for i in range(len(self.members[0].blocks)):
            x = self.block(i, x)
        return torch.tanh(self.conv([m.head for m in self.members], x))


class GroupedCritic(_Grouped):
    """K critics as one: images (N, K*nc, S, S) -> scores (N, K), member k's in column k."""

    def __init__(self, members: Sequence[Critic]):
        super().__init__(members)
        self.image_size = members[0].image_size

    @property
    def blocks(self) -> nn.Sequential:
        """The first member's blocks: their ``impl`` is the grouped layers' (fastwgan.fast's
        ``keep_twice_differentiable`` sets it)."""
        return self.members[0].blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.members[0].blocks)):
            x = self.block(i, x)
        return self.conv([m.head for m in self.members], x).flatten(1)


def member_slices(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """A grouped tensor (N, K*C, ...) as the K members' (N, C, ...) views."""
    return list(x.chunk(k, dim=1))
