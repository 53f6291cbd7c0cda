"""Sweeps in one process: K runs of one architecture (seeds, learning rates, clips, penalty
weights) trained as one grouped network, each member with its own run folder.

``grid.py``: the axes and the members' configs; ``grouped.py``: K networks as one grouped network;
``engine.py``: the members, their optimizers and the grouped engines; ``run.py``: the sweep run
(folders, resume, the loop); ``report.py``: sweep.json, the summary table, sweep.png;
``memory.py``: how many members fit.
"""
from __future__ import annotations

from typing import Optional, Sequence


def train_from_args(axes: Optional[Sequence[str]], seeds: Optional[int], argv: Sequence[str],
                    given: Optional[dict] = None, log=print, command: str = "") -> dict:
    """A sweep from the command line's remaining flags (or the API's values): a new one where
    axes or seeds are given, else the sweep that ``--resume`` names."""
    from fastwgan.sweep.run import plan_fresh, plan_resume, train_sweep

    plan = plan_fresh(axes or [], seeds, argv, given) if (axes or seeds) else plan_resume(argv, given)
    return train_sweep(plan, log=log, command=command)


def is_sweep_command(axes, seeds, argv: Sequence[str], given: Optional[dict] = None) -> bool:
    """Whether a command line trains a sweep: axes or seeds given, or ``--resume`` of a sweep."""
    from fastwgan.sweep.report import is_sweep
    from fastwgan.sweep.run import resume_target

    return bool(axes) or seeds is not None or is_sweep(resume_target(argv, given))


def split_sweep_args(argv: Sequence[str]):
    """(axes, seeds, the other flags) of a command line (fastwgan.sweep.grid)."""
    from fastwgan.sweep.grid import split_sweep_args as split

    return split(argv)
