"""What a loss is: one entry that carries everything that differs between losses.

An entry (``Loss``) holds the loss's defaults (optimizer, learning rate, Adam's betas, critic
steps, the critic's normalisation), the rule for the critic's normalisation, its two phases
(critic and generator step, built on ``fastwgan.steps``), whether the critic is clipped (after
each step and once when the engine is built), the values its critic step reports beside the
four every loss reports (``SUMS``), and the flags it ignores. Config, engines, the loop, the
checkpoint checks and the log read the entry; none of them names a loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

# The engine's device buffer of loss sums: these four, then the entry's ``extra`` critic values.
SUMS = ("loss_d", "d_real", "d_fake", "loss_g")

NORMS = ("batch", "layer", "none")  # the critic's normalisation (fastwgan.models.Critic)


@dataclass(frozen=True)
class Loss:
    """One ``--loss``. The phases take (G, D, optimizer, [real,] z, StepConfig) and return
    detached tensors: the critic step ``loss_d``, ``d_real``, ``d_fake`` and the ``extra``
    values, the generator step ``loss_g``."""

    name: str                     # the --loss value
    summary: str                  # one line for --help
    critic_step: Callable[..., dict]
    generator_step: Callable[..., dict]
    optimizer: str                # "rmsprop" or "adam", for both networks
    # defaults of the flags that depend on the loss: lr, adam_beta1, adam_beta2, critic_norm,
    # n_critic_warmup (absent: no warm-up phases, it follows --n-critic)
    defaults: Mapping[str, Any]
    detail: Callable[[Any], str]  # the loss's own setting for train.log, from the config
    wasserstein: bool             # d_real - d_fake estimates the Wasserstein distance (``wdist``)
    clips: bool = False           # critic clipped to [-clip, clip] after each step and at build
    critic_steps: Optional[int] = None  # a fixed number of critic steps (gan: 1): no --n-critic
    critic_norms: tuple[str, ...] = NORMS  # the critic normalisations it can train with
    norm_refusal: str = ""        # why the others cannot train it
    extra: tuple[str, ...] = ()   # critic-step values averaged into metrics.jsonl beside SUMS
    # (label, key, format) of the extra values shown on the progress line
    extra_display: tuple[tuple[str, str, str], ...] = ()
    double_backward: bool = False  # the critic step differentiates through D's input gradient
    unused_flags: tuple[str, ...] = ()  # config fields this loss ignores (a note when given)
    unused_why: str = ""

    def __post_init__(self):
        if self.optimizer not in ("rmsprop", "adam"):
            raise ValueError(f"{self.name}: optimizer must be rmsprop or adam, not {self.optimizer!r}")
        if self.clips and self.optimizer != "rmsprop":
            # the fast engine clips inside RMSpropClip's update (fastwgan.optim)
            raise ValueError(f"{self.name}: a clipped critic trains with rmsprop")
        if self.defaults.get("critic_norm", "batch") not in self.critic_norms:
            raise ValueError(f"{self.name}: its default critic norm is one it refuses")

    @property
    def sums(self) -> tuple[str, ...]:
        """The names of the engine's loss sums for this loss, in buffer order."""
        return SUMS + self.extra

    def extra_means(self, sums: list[float], critic_steps: int) -> dict[str, float]:
        """The ``extra`` values' means over ``critic_steps`` from the buffer read back."""
        return {k: sums[len(SUMS) + i] / critic_steps for i, k in enumerate(self.extra)}

    def progress(self, row: Mapping[str, Any]) -> str:
        """The extra values of a metrics row for the progress line (``GP 0.12  |grad| 1.01  ``)."""
        return "".join(f"{label} {row[key]:{fmt}}  " for label, key, fmt in self.extra_display)
