"""The two phases of a GAN iteration, each a function of its inputs, whatever the loss.

``critic_step`` and ``generator_step`` take the networks, their optimizer, the batch and noise
to use, and the loss's objective (a function of the critic's scores: ``fastwgan.losses``), and
return detached loss tensors (no host synchronisation). The reference engine calls them in a
plain loop; the fast engine reuses them, eagerly or captured in a CUDA graph. A loss whose
critic step is not "scores -> objective" (the gradient penalty) writes its own from the same
pieces (``autocast``, ``StepConfig``).

Sign convention (WGAN): the critic maximises D(real) - D(fake), so it minimises
``loss_d = D(fake) - D(real)``; ``wdist = D(real) - D(fake) = -loss_d`` is the Wasserstein
estimate, the paper's -Loss_D. The generator minimises ``loss_g = -D(G(z))``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from fastwgan.models import row_groups

# (out_real, out_fake) -> (loss_d, d_real, d_fake), from the critic's fp32 scores (N,)
CriticObjective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# D(G(z)) -> loss_g
GeneratorObjective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StepConfig:
    """What a step needs to know besides its tensors."""

    # critic weights clipped to [-clip, clip] after each step (a loss that clips: wgan); None
    # where the loss does not clip, or where the optimizer clips in its own update
    # (fastwgan.optim.RMSpropClip)
    clip: Optional[float] = None
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype (bf16), None for full precision
    # autocast's weight-cast cache must be off while a CUDA graph is captured
    autocast_cache: bool = True
    # the critic sees real and fake as one batch, each half normalised by its own BatchNorm
    # statistics (fastwgan.models.row_groups): the two calls' step, in half the launches
    one_batch: bool = False
    gp_weight: float = 10.0         # lambda of the gradient penalty (wgan-gp)


def autocast(x: torch.Tensor, cfg: StepConfig):
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=cfg.amp_dtype, cache_enabled=cfg.autocast_cache)


# backward's seed, 1, per (device, dtype): made once (before any CUDA graph is captured: the first
# step is eager) instead of a fill kernel per backward; autograd only reads it
_SEEDS: dict = {}


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, seeded with a cached 1 of the loss's device and dtype."""
    key = (loss.device, loss.dtype)
    if key not in _SEEDS:
        _SEEDS[key] = torch.ones((), device=loss.device, dtype=loss.dtype)
    loss.backward(_SEEDS[key])


@torch.no_grad()
def clip_weights_(params, clip: float) -> None:
    """Clip every critic parameter (BatchNorm included, as the paper's code) to [-clip, clip]."""
    for p in params:
        p.clamp_(-clip, clip)


def critic_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
                z: torch.Tensor, cfg: StepConfig, objective: CriticObjective) -> dict[str, torch.Tensor]:
    """One critic update on ``real`` (N, 3, H, W) and G(z); returns detached losses.

    ``objective(out_real, out_fake)`` gives (loss_d, d_real, d_fake) from the critic's fp32
    scores. Real and fake go through the critic as two batches, as in the paper's code: with
    BatchNorm in training mode each is normalised by its own statistics; with ``cfg.one_batch``
    as one batch whose halves are normalised each by its own statistics (the same statistics;
    the convolutions' sums over the batch round in another order).
    """
    with torch.no_grad(), autocast(z, cfg):
        fake = G(z)
    opt_d.zero_grad(set_to_none=True)
    with autocast(real, cfg):
        if cfg.one_batch:
            with row_groups(D, 2):
                out_real, out_fake = D(torch.cat([real.to(fake.dtype), fake])).float().chunk(2)
        else:
            out_real = D(real).float()
            out_fake = D(fake).float()
    loss_d, d_real, d_fake = objective(out_real, out_fake)
    backward(loss_d)
    opt_d.step()
    if cfg.clip is not None:
        clip_weights_(D.parameters(), cfg.clip)
    return {"loss_d": loss_d.detach(), "d_real": d_real.detach(), "d_fake": d_fake.detach()}


def generator_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor,
                   cfg: StepConfig, objective: GeneratorObjective) -> dict[str, torch.Tensor]:
    """One generator update through the critic, minimising ``objective(D(G(z)))``; the critic's
    weights get no gradient."""
    requires = [p.requires_grad for p in D.parameters()]
    for p in D.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    try:
        with autocast(z, cfg):
            out = D(G(z)).float()
        loss_g = objective(out)
        backward(loss_g)
    finally:
        for p, r in zip(D.parameters(), requires):
            p.requires_grad_(r)
    opt_g.step()
    return {"loss_g": loss_g.detach()}


OPTIMIZERS = ("rmsprop", "adam")


def make_optimizers(G: nn.Module, D: nn.Module, optimizer: str, lr: float,
                    betas: tuple[float, float] = (0.5, 0.999)):
    """The reference optimizers, one per network: torch's RMSprop (the WGAN paper) or Adam with
    ``betas`` (the GAN baseline's (0.5, 0.999), the GP paper's (0, 0.9))."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if optimizer == "rmsprop":
        return torch.optim.RMSprop(G.parameters(), lr=lr), torch.optim.RMSprop(D.parameters(), lr=lr)
    return (torch.optim.Adam(G.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(D.parameters(), lr=lr, betas=betas))
