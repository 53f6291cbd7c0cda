"""Autocast's weight casts with the gradient added straight into the parameter's own ``.grad``.

Under autocast a convolution casts its fp32 weight to bf16; backward then casts the bf16 weight
gradient back to fp32 (one kernel) and autograd's AccumulateGrad adds it into ``.grad`` (another).
``cast_weight`` casts the weight itself (autocast then leaves it alone), and its backward adds the
bf16 gradient into the existing ``.grad`` in one kernel: the same fp32 sum, ``grad + float(g)``,
bit for bit, and no fp32 copy of the gradient in between. Where ``.grad`` is None (or the weight
needs no gradient) it does what autocast does.

The fast engine turns it on for its networks' convolutions (``set_cast_into_grad``): their
``.grad`` are views of RMSpropClip's flat gradient buffer, zeroed before every backward. Its
backward is not differentiable again: a loss that differentiates through D's input gradient
(wgan-gp) keeps autocast's own casts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _CastIntoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, dtype):
        ctx.weight = w
        return w.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        grad = ctx.weight.grad
        if grad is None:  # nothing to add into: autograd's own path
            return g.to(ctx.weight.dtype), None
        grad.add_(g)  # fp32 += bf16, computed in fp32: what the cast and AccumulateGrad give
        return None, None


def cast_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``w`` in ``dtype``; its gradient added straight into ``w.grad`` (see the module docstring)."""
    if not w.requires_grad or not torch.is_grad_enabled():
        return w.to(dtype)
    return _CastIntoGrad.apply(w, dtype)


def conv_forward(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; for a convolution marked by ``set_cast_into_grad``, under autocast, with its
    weight cast by ``cast_weight``."""
    device = x.device.type
    if not getattr(conv, "cast_into_grad", False) or not torch.is_autocast_enabled(device):
        return conv(x)
    w = cast_weight(conv.weight, torch.get_autocast_dtype(device))
    if isinstance(conv, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, w, conv.bias, conv.stride, conv.padding, conv.output_padding,
                                  conv.groups, conv.dilation)
    return conv._conv_forward(x, w, conv.bias)


def set_cast_into_grad(model: nn.Module, on: bool = True) -> nn.Module:
    """Mark (or unmark) every Conv2d and ConvTranspose2d of ``model`` for ``conv_forward``, and
    every block with a BatchNorm (fastwgan.models.Block) for bn_act's ``grads_into_params``:
    the BatchNorm weight and bias gradients added into their ``.grad`` by the kernel that reduces
    them. For networks without gradient hooks on their parameters (no DistributedDataParallel)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or isinstance(getattr(m, "bn", None),
                                                                         nn.BatchNorm2d):
            m.cast_into_grad = on
    return model
