"""The reference engine: one generator iteration as a plain Python loop of phases.

An engine owns the networks' optimizers and the device buffer the losses accumulate in
(``sums``: loss_d, d_real, d_fake summed over critic steps, loss_g summed over generator
steps, then the loss's own critic values: gp and grad_norm for wgan-gp), and runs
``iteration(n_critic)``. The trainer around it (logging, samples, checkpoints)
is the same for every engine; the fast engine (fastwgan.fast) replays the same phases from CUDA
graphs.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from fastwgan.config import Config
from fastwgan.steps import OBJECTIVES, StepConfig, make_optimizers


class Engine:
    """The phases over an engine's networks, optimizers and source of real batches.

    ``iteration(n_critic)`` runs them eagerly: n_critic critic steps, then one generator step,
    adding the detached losses into ``sums`` on the device.
    """

    name = "engine"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, source: Iterator[torch.Tensor],
                 device: torch.device, step_cfg: StepConfig, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer):
        self.G, self.D, self.source, self.device = G, D, source, device
        self.batch_size, self.nz = cfg.batch_size, cfg.nz
        self.step_cfg, self.opt_g, self.opt_d = step_cfg, opt_g, opt_d
        self.objective = OBJECTIVES[step_cfg.loss]
        self.sums = torch.zeros(len(self.objective.sums), device=device)

    def _real(self) -> torch.Tensor:
        return next(self.source)

    def critic(self) -> None:
        real = self._real()  # before z: a device sampler draws from the same RNG
        z = torch.randn(self.batch_size, self.nz, device=self.device)
        c = self.objective.critic_step(self.G, self.D, self.opt_d, real, z, self.step_cfg)
        self.sums[:3] += torch.stack([c["loss_d"], c["d_real"], c["d_fake"]])
        if self.objective.extra:
            self.sums[4:] += torch.stack([c[k] for k in self.objective.extra])

    def generator(self) -> None:
        z = torch.randn(self.batch_size, self.nz, device=self.device)
        self.sums[3] += self.objective.generator_step(self.G, self.D, self.opt_g, z, self.step_cfg)["loss_g"]

    def iteration(self, n_critic: int) -> None:
        for _ in range(n_critic):
            self.critic()
        self.generator()

    @property
    def data_position(self) -> int:
        """Batches drawn from the source (the resume point of an epoch-ordered stream)."""
        return getattr(self.source, "position", 0)


class ReferenceEngine(Engine):
    """torch.optim optimizers, the nn modules, eager phases: the specification."""

    name = "reference"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, batches: Iterator[torch.Tensor],
                 device: torch.device, amp_dtype: Optional[torch.dtype]):
        opt_g, opt_d = make_optimizers(G, D, cfg.loss, cfg.learning_rate, cfg.adam_betas)
        step_cfg = StepConfig(cfg.loss, cfg.clip if cfg.loss == "wgan" else None, amp_dtype,
                              gp_weight=cfg.gp_weight)
        super().__init__(cfg, G, D, batches, device, step_cfg, opt_g, opt_d)

    def describe(self) -> str:
        return "reference (plain PyTorch, eager)"
