"""``--loss hinge``: the hinge loss of SNGAN and BigGAN (Miyato et al. 2018, Brock et al. 2019).

Critic: minimise ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``; generator: ``-E[D(G(z))]``, as
WGAN's. No clipping and no penalty: the margin bounds what the critic gains from pushing its
scores further. Defaults of the recipes in StudioGAN and Mimicry: Adam 2e-4 with betas (0, 0.9)
for both networks, 5 critic steps per generator step, no warm-up phases. The critic keeps the
paper code's BatchNorm by default (SNGAN's spectral normalisation is not among the critics here).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastwgan import steps
from fastwgan.losses.wgan import generator_objective
from fastwgan.losses.base import Loss


def critic_objective(out_real: torch.Tensor, out_fake: torch.Tensor):
    """(loss_d, d_real, d_fake): mean relu(1 - D(real)) + mean relu(1 + D(fake)); d_real and
    d_fake are the mean scores."""
    d_real, d_fake = out_real.mean(), out_fake.mean()
    loss_d = F.relu(1 - out_real).mean() + F.relu(1 + out_fake).mean()
    return loss_d, d_real, d_fake


LOSS = Loss(
    name="hinge",
    summary="the hinge loss of SNGAN and BigGAN, no clipping",
    critic_step=functools.partial(steps.critic_step, objective=critic_objective),
    generator_step=functools.partial(steps.generator_step, objective=generator_objective),
    optimizer="adam",
    defaults=dict(lr=2e-4, critic_norm="batch", adam_beta1=0.0, adam_beta2=0.9),
    detail=lambda cfg: "margin 1",
    wasserstein=False,
    unused_flags=("clip", "gp_weight"),
    unused_why="--loss hinge trains with Adam, without clipping or penalty",
)
