"""``--loss wgan``: the WGAN of Arjovsky, Chintala and Bottou (2017), as the paper's code trains it
(martinarjovsky/WassersteinGAN): a weight-clipped critic, RMSprop at 5e-5, 5 critic steps per
generator step and 100 for the first 25 generator iterations and every 500th.

Critic: minimise D(fake) - D(real) (maximise the Wasserstein estimate D(real) - D(fake)), then
clip every critic weight, BatchNorm's too, to [-clip, clip]. Generator: minimise -D(G(z)).
"""
from __future__ import annotations

import functools

import torch

from fastwgan import steps
from fastwgan.losses.base import Loss


def critic_objective(out_real: torch.Tensor, out_fake: torch.Tensor):
    """(loss_d, d_real, d_fake): loss_d = mean D(fake) - mean D(real), the paper's Loss_D."""
    d_real, d_fake = out_real.mean(), out_fake.mean()
    return d_fake - d_real, d_real, d_fake


def generator_objective(out_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(G(z)): the critic's estimate of the distance the generator closes."""
    return -out_fake.mean()


LOSS = Loss(
    name="wgan",
    summary="weight-clipped critic (Arjovsky et al. 2017)",
    critic_step=functools.partial(steps.critic_step, objective=critic_objective),
    generator_step=functools.partial(steps.generator_step, objective=generator_objective),
    optimizer="rmsprop",
    defaults=dict(lr=5e-5, n_critic_warmup=100, critic_norm="batch"),
    detail=lambda cfg: f"clip {cfg.clip:g}",
    wasserstein=True,
    clips=True,
    unused_flags=("gp_weight", "adam_beta1", "adam_beta2"),
    unused_why="--loss wgan clips the critic and trains with RMSprop",
)
