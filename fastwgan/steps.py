"""The two phases of a GAN iteration, each a function of its inputs, and the table of losses.

``critic_step`` and ``generator_step`` take the networks, their optimizers and the batch and
noise to use, and return detached loss tensors (no host synchronisation). The reference trainer
calls them in a plain loop; the fast backend reuses them, eagerly or captured in a CUDA graph.

Sign convention (WGAN): the critic maximises D(real) - D(fake), so it minimises
``loss_d = D(fake) - D(real)``; ``wdist = D(real) - D(fake) = -loss_d`` is the Wasserstein
estimate, the paper's -Loss_D. The generator minimises ``loss_g = -D(G(z))``.

WGAN-GP (Gulrajani et al. 2017) adds ``gp_weight * E[(||grad_x D(x_hat)||_2 - 1)^2]`` to loss_d,
at x_hat = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per sample, and does not clip.

``OBJECTIVES`` maps each ``--loss`` to its critic step, generator step and the values summed
on the device: the engines select from it once, when they are built.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepConfig:
    """What a step needs to know besides its tensors."""

    loss: str = "wgan"              # "wgan", "wgan-gp" or "gan" (cross-entropy DCGAN baseline)
    # critic weights clipped to [-clip, clip] after each step (wgan); None where the optimizer
    # clips in its own update (fastwgan.optim.RMSpropClip)
    clip: Optional[float] = 0.01
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype (bf16), None for full precision
    # autocast's weight-cast cache must be off while a CUDA graph is captured
    autocast_cache: bool = True
    gp_weight: float = 10.0         # lambda of the gradient penalty (wgan-gp)


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
        if cfg.loss == "gan":  # non-saturating generator loss
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        else:  # wgan, wgan-gp
            loss_g = -out.mean()
        loss_g.backward()
    finally:
        for p, r in zip(D.parameters(), requires):
            p.requires_grad_(r)
    opt_g.step()
    return {"loss_g": loss_g.detach()}


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] and the mean gradient norm, at x_hat = eps * real +
    (1 - eps) * fake (``eps`` (N, 1, 1, 1)), differentiable in D's weights (create_graph).

    In fp32 with autocast off whatever the step's precision: a bf16 gradient's norm is too
    coarse for (norm - 1)^2 (bench/RESULTS.md, "gradient penalty in bf16"). The gradient of the
    summed scores is each sample's own gradient only because D has no BatchNorm.
    """
    def at_least_fp32(t):  # fp32, or float64 where a check asks for it
        return t.to(torch.promote_types(t.dtype, torch.float32))

    with torch.autocast(real.device.type, enabled=False):
        x_hat = (eps * at_least_fp32(real) + (1 - eps) * at_least_fp32(fake)).requires_grad_(True)
        out = D(x_hat)
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
        norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)  # (N,)
        return ((norm - 1) ** 2).mean(), norm.mean()


def critic_step_gp(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
                   z: torch.Tensor, cfg: StepConfig, eps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """One WGAN-GP critic update: D(fake) - D(real) + gp_weight * penalty, no clipping.

    ``eps`` (N, 1, 1, 1) defaults to U(0, 1) drawn on ``real``'s device from the default
    generator, after the engine's real batch and z (a CUDA graph replays the draw).
    """
    with torch.no_grad(), autocast(z, cfg):
        fake = G(z)
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    opt_d.zero_grad(set_to_none=True)
    with autocast(real, cfg):
        d_real = D(real).float().mean()
        d_fake = D(fake).float().mean()
    gp, grad_norm = gradient_penalty(D, real, fake, eps)
    loss_d = d_fake - d_real + cfg.gp_weight * gp
    loss_d.backward()
    opt_d.step()
    return {"loss_d": loss_d.detach(), "d_real": d_real.detach(), "d_fake": d_fake.detach(),
            "gp": gp.detach(), "grad_norm": grad_norm.detach()}


def make_optimizers(G: nn.Module, D: nn.Module, loss: str, lr: float,
                    betas: tuple[float, float] = (0.5, 0.999)):
    """The reference optimizers: RMSprop for WGAN (the paper), Adam with ``betas`` otherwise
    (the GAN baseline's (0.5, 0.999), the GP paper's (0, 0.9))."""
    if loss == "wgan":
        return torch.optim.RMSprop(G.parameters(), lr=lr), torch.optim.RMSprop(D.parameters(), lr=lr)
    return (torch.optim.Adam(G.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(D.parameters(), lr=lr, betas=betas))


# The engine's device buffer: these four, then the objective's ``extra`` critic values.
SUMS = ("loss_d", "d_real", "d_fake", "loss_g")


@dataclass(frozen=True)
class Objective:
    """What a ``--loss`` trains with; selected once by the engine."""

    critic_step: Callable[..., dict[str, torch.Tensor]]
    generator_step: Callable[..., dict[str, torch.Tensor]]
    wasserstein: bool          # d_real - d_fake estimates the Wasserstein distance (``wdist``)
    extra: tuple[str, ...] = ()  # critic-step values averaged into metrics.jsonl beside SUMS
    double_backward: bool = False  # the critic step differentiates through D's input gradient

    @property
    def sums(self) -> tuple[str, ...]:
        return SUMS + self.extra

    def extra_means(self, sums: list[float], critic_steps: int) -> dict[str, float]:
        """The ``extra`` values' means over ``critic_steps`` from the buffer read back."""
        return {k: sums[len(SUMS) + i] / critic_steps for i, k in enumerate(self.extra)}


OBJECTIVES = {
    "wgan": Objective(critic_step, generator_step, wasserstein=True),
    "wgan-gp": Objective(critic_step_gp, generator_step, wasserstein=True, extra=("gp", "grad_norm"),
                         double_backward=True),
    "gan": Objective(critic_step, generator_step, wasserstein=False),
}
