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
from fastwgan.steps import StepConfig, clip_weights_, critic_step, generator_step, make_optimizers


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
        self.sums = torch.zeros(4, device=device)

    def _real(self) -> torch.Tensor:
        return next(self.source)

    def critic(self) -> None:
        real = self._real()  # before z: a device sampler draws from the same RNG
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

    def clip_critic_at_build(self, cfg: Config) -> None:
        """Clip the critic into [-clip, clip] once, before its first gradient.

        Algorithm 1 clips after each critic step; the paper's code clamps before each step, so its
        first gradient is taken at clipped weights. Clipping once here as well gives the paper
        code's critic sequence from fresh weights (the generator step then sees the clipped
        critic, where the paper's code lets it see one unclipped step). A resumed critic is
        already inside the box: a no-op.
        """
        if cfg.loss == "wgan":
            clip_weights_(self.D.parameters(), cfg.clip)

    @property
    def data_position(self) -> int:
        """Batches drawn from the source (the resume point of an epoch-ordered stream)."""
        return getattr(self.source, "position", 0)


class ReferenceEngine(Engine):
    """torch.optim optimizers, the nn modules, eager phases: the specification."""

    name = "reference"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, batches: Iterator[torch.Tensor],
                 device: torch.device, amp_dtype: Optional[torch.dtype]):
        opt_g, opt_d = make_optimizers(G, D, cfg.loss, cfg.learning_rate)
        step_cfg = StepConfig(cfg.loss, cfg.clip if cfg.loss == "wgan" else None, amp_dtype)
        super().__init__(cfg, G, D, batches, device, step_cfg, opt_g, opt_d)
        self.clip_critic_at_build(cfg)

    def describe(self) -> str:
        return "reference (plain PyTorch, eager)"
