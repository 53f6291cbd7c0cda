"""The losses fastwgan trains, one module each, each one ``Loss`` entry (``fastwgan.losses.base``).

To add a loss: write ``fastwgan/losses/<name>.py`` with its objective and a ``LOSS = Loss(...)``
entry, and name the module in ``MODULES`` below; ``--loss <name>`` then exists everywhere.
"""
from __future__ import annotations

from fastwgan.losses import gan, hinge, wgan, wgan_gp
from fastwgan.losses.base import NORMS, SUMS, Loss

MODULES = (wgan, wgan_gp, gan, hinge)  # --loss choices, in this order
LOSSES: dict[str, Loss] = {m.LOSS.name: m.LOSS for m in MODULES}

__all__ = ["Loss", "LOSSES", "NORMS", "SUMS", "get"]


def get(name: str) -> Loss:
    """The entry of ``--loss name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; the losses are {', '.join(LOSSES)}") from None
