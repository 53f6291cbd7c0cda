"""The reference engine: one generator iteration as a plain Python loop of phases.

An engine owns the networks' optimizers and the device buffer the losses accumulate in
(``sums``: loss_d, d_real, d_fake summed over critic steps, and loss_g summed over generator
steps), and runs ``iteration(n_critic)``. The trainer around it (logging, samples, checkpoints)
is the same for every engine; the fast engine (fastwgan.fast) replays the same phases from CUDA
graphs.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from fastwgan.config import Config
from fastwgan.steps import StepConfig, critic_step, generator_step, make_optimizers


class ReferenceEngine:
    """torch.optim optimizers, the nn modules, eager phases: the specification."""

    name = "reference"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, batches: Iterator[torch.Tensor],
                 device: torch.device, amp_dtype: Optional[torch.dtype]):
        self.G, self.D, self.batches, self.device = G, D, batches, device
        self.batch_size, self.nz = cfg.batch_size, cfg.nz
        self.opt_g, self.opt_d = make_optimizers(G, D, cfg.loss, cfg.learning_rate)
        self.step_cfg = StepConfig(cfg.loss, cfg.clip if cfg.loss == "wgan" else None, amp_dtype)
        self.sums = torch.zeros(4, device=device)

    def critic(self) -> None:
        real = next(self.batches)
        z = torch.randn(self.batch_size, self.nz, device=self.device)
        c = critic_step(self.G, self.D, self.opt_d, real, z, self.step_cfg)
        self.sums[:3] += torch.stack([c["loss_d"], c["d_real"], c["d_fake"]])

    def generator(self) -> None:
        z = torch.randn(self.batch_size, self.nz, device=self.device)
        self.sums[3] += generator_step(self.G, self.D, self.opt_g, z, self.step_cfg)["loss_g"]

    def iteration(self, n_critic: int) -> None:
        for _ in range(n_critic):
            self.critic()
        self.generator()

    @property
    def data_position(self) -> int:
        return getattr(self.batches, "position", 0)

    def describe(self) -> str:
        return "reference (plain PyTorch, eager)"
