"""The two phases of a GAN iteration, each a function of its inputs.

``critic_step`` and ``generator_step`` take the networks, their optimizers and the batch and
noise to use, and return detached loss tensors (no host synchronisation). The reference trainer
calls them in a plain loop; the fast backend reuses them, eagerly or captured in a CUDA graph.

Sign convention (WGAN): the critic maximises D(real) - D(fake), so it minimises
``loss_d = D(fake) - D(real)``; ``wdist = D(real) - D(fake) = -loss_d`` is the Wasserstein
estimate, the paper's -Loss_D. The generator minimises ``loss_g = -D(G(z))``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepConfig:
    """What a step needs to know besides its tensors."""

    loss: str = "wgan"              # "wgan" or "gan" (cross-entropy DCGAN baseline)
    # critic weights clipped to [-clip, clip] after each step (wgan); None where the optimizer
    # clips in its own update (fastwgan.optim.RMSpropClip)
    clip: Optional[float] = 0.01
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype (bf16), None for full precision
    # autocast's weight-cast cache must be off while a CUDA graph is captured
    autocast_cache: bool = True


def autocast(x: torch.Tensor, cfg: StepConfig):
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=cfg.amp_dtype, cache_enabled=cfg.autocast_cache)


@torch.no_grad()
def clip_weights_(params, clip: float) -> None:
    """Clip every critic parameter (BatchNorm included, as the paper's code) to [-clip, clip]."""
    for p in params:
        p.clamp_(-clip, clip)


def critic_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
                z: torch.Tensor, cfg: StepConfig) -> dict[str, torch.Tensor]:
    """One critic update on ``real`` (N, 3, H, W) and G(z); returns detached losses.

    Real and fake go through the critic as two batches, as in the paper's code: with BatchNorm in
    training mode each is normalised by its own statistics.
    """
    with torch.no_grad(), autocast(z, cfg):
        fake = G(z)
    opt_d.zero_grad(set_to_none=True)
    with autocast(real, cfg):
        out_real = D(real).float()
        out_fake = D(fake).float()
    if cfg.loss == "wgan":
        d_real, d_fake = out_real.mean(), out_fake.mean()
        loss_d = d_fake - d_real
    else:
        d_real, d_fake = out_real.mean(), out_fake.mean()
        loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
                  + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
    loss_d.backward()
    opt_d.step()
    if cfg.loss == "wgan" and cfg.clip is not None:
        clip_weights_(D.parameters(), cfg.clip)
    return {"loss_d": loss_d.detach(), "d_real": d_real.detach(), "d_fake": d_fake.detach()}


def generator_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor,
                   cfg: StepConfig) -> dict[str, torch.Tensor]:
    """One generator update through the critic; the critic's weights get no gradient."""
    requires = [p.requires_grad for p in D.parameters()]
    for p in D.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    try:
        with autocast(z, cfg):
            out = D(G(z)).float()
        if cfg.loss == "wgan":
            loss_g = -out.mean()
        else:  # non-saturating generator loss
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        loss_g.backward()
    finally:
        for p, r in zip(D.parameters(), requires):
            p.requires_grad_(r)
    opt_g.step()
    return {"loss_g": loss_g.detach()}


def make_optimizers(G: nn.Module, D: nn.Module, loss: str, lr: float):
    """The reference optimizers: RMSprop for WGAN (the paper), Adam(0.5, 0.999) for the GAN baseline."""
    if loss == "wgan":
        return torch.optim.RMSprop(G.parameters(), lr=lr), torch.optim.RMSprop(D.parameters(), lr=lr)
    return (torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999)),
            torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999)))
