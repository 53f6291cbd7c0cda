"""``--loss gan``: the DCGAN baseline (Radford et al. 2016) with the same networks: cross-entropy
on the critic's logits, the non-saturating generator loss, Adam 2e-4 with betas (0.5, 0.999),
one critic step per generator step, no clipping.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastwgan import steps
from fastwgan.losses.base import Loss


def critic_objective(out_real: torch.Tensor, out_fake: torch.Tensor):
    """(loss_d, d_real, d_fake): BCE(D(real), 1) + BCE(D(fake), 0) on logits; d_real and d_fake
    are the mean logits."""
    d_real, d_fake = out_real.mean(), out_fake.mean()
    loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
              + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
    return loss_d, d_real, d_fake


def generator_objective(out_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating loss BCE(D(G(z)), 1)."""
    return F.binary_cross_entropy_with_logits(out_fake, torch.ones_like(out_fake))


LOSS = Loss(
    name="gan",
    summary="the DCGAN cross-entropy baseline",
    critic_step=functools.partial(steps.critic_step, objective=critic_objective),
    generator_step=functools.partial(steps.generator_step, objective=generator_objective),
    optimizer="adam",
    defaults=dict(lr=2e-4, n_critic_warmup=100, critic_norm="batch", adam_beta1=0.5, adam_beta2=0.999),
    detail=lambda cfg: "cross-entropy",
    wasserstein=False,
    critic_steps=1,
    unused_flags=("n_critic", "n_critic_warmup", "clip", "gp_weight"),
    unused_why="--loss gan takes one critic step per generator step, without clipping or penalty",
)
