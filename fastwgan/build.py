"""What a run trains, built in one place from a Config: the two networks, and the engine that
trains them. The trainer, the checkpoint checks, ``sample``, ``eval``, the self-check and the
benchmarks all build through here, so what is checked and timed is what is trained.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastwgan.models import Critic, Generator


def build_generator(cfg) -> Generator:
    """The generator ``cfg`` trains (``image_size``, ``nz``, ``ngf``, ``extra_layers``)."""
    return Generator(cfg.image_size, cfg.nz, cfg.ngf, extra_layers=cfg.extra_layers)


def build_critic(cfg) -> Critic:
    """The critic ``cfg`` trains (``image_size``, ``ndf``, ``extra_layers``, the loss's norm)."""
    return Critic(cfg.image_size, cfg.ndf, extra_layers=cfg.extra_layers,
                  norm=cfg.critic_normalization)


def build_networks(cfg, device: Optional[torch.device | str] = None) -> tuple[Generator, Critic]:
    """Both networks, freshly initialised from torch's global generator (generator first), on
    ``device`` (the CPU when None)."""
    G, D = build_generator(cfg), build_critic(cfg)
    if device is not None:
        G, D = G.to(device), D.to(device)
    return G, D
