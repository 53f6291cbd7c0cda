"""``--loss wgan-gp``: WGAN with a gradient penalty (Gulrajani et al. 2017), no clipping.

The critic minimises ``D(fake) - D(real) + gp_weight * E[(||grad_x D(x_hat)||_2 - 1)^2]`` at
x_hat = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per sample; the generator -D(G(z)).
Defaults of the GP paper's 64x64 code (igul222/improved_wgan_training gan_64x64.py): Adam(1e-4,
beta1 0, beta2 0.9) for both networks, 5 critic steps, no warm-up phases. The penalty is per
sample, so the critic cannot use BatchNorm; its DCGAN critic uses layer normalisation in this
mode, here none is the default (the plain critic) and ``--critic-norm layer`` gives the GP code's.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from fastwgan import steps
from fastwgan.losses.wgan import generator_objective
from fastwgan.losses.base import Loss
from fastwgan.steps import StepConfig, autocast


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


LOSS = Loss(
    name="wgan-gp",
    summary="gradient penalty, no clipping (Gulrajani et al. 2017)",
    critic_step=critic_step_gp,
    generator_step=functools.partial(steps.generator_step, objective=generator_objective),
    optimizer="adam",
    defaults=dict(lr=1e-4, critic_norm="none", adam_beta1=0.0, adam_beta2=0.9),
    detail=lambda cfg: f"gradient penalty weight {cfg.gp_weight:g}",
    wasserstein=True,
    critic_norms=("none", "layer"),
    norm_refusal="the penalty is per sample and BatchNorm mixes the samples of a batch; use "
                 "--critic-norm none or layer",
    extra=("gp", "grad_norm"),
    extra_display=(("GP", "gp", ".3g"), ("|grad|", "grad_norm", ".3g")),
    double_backward=True,
    unused_flags=("clip",),
    unused_why="--loss wgan-gp penalises the critic's gradient instead of clipping",
)
