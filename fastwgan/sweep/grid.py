"""A sweep's grid: the axes given with ``--sweep NAME=V1,V2 ...`` and ``--sweep-seeds N``, checked,
and the members' configs (the product of the axes, in the order given, seeds innermost).

Only what the grouped networks can hold differently per member may be an axis: the seed, the
learning rate, the clip (a loss that clips) and the gradient penalty's weight (a loss with a
penalty). What the K members share (architecture, image size, batch, the n_critic schedule,
the loss, the data) is one value; naming it as an axis is a one-line error (exit 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from fastwgan.config import Config, ConfigError
from fastwgan.losses import LOSSES

# axis name on the command line -> Config field
AXES = {"seed": "seed", "lr": "lr", "clip": "clip", "gp-weight": "gp_weight"}
SHORT = {"seed": "seed", "lr": "lr", "clip": "clip", "gp_weight": "gp"}  # in members' names


@dataclass(frozen=True)
class Grid:
    """The axes (Config field -> values, in the order given)."""

    axes: dict[str, tuple]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def to_dict(self) -> dict:
        return {name: list(values) for name, values in self.axes.items()}


def parse_axis(text: str) -> tuple[str, tuple]:
    """``lr=5e-5,1e-4`` -> ("lr", (5e-05, 0.0001)); a one-line ConfigError for anything else."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not values:
        raise ConfigError(f"--sweep {text}: give an axis as NAME=V1,V2,... (e.g. lr=5e-5,1e-4)")
    key = name.replace("_", "-")
    if key not in AXES:
        shared = {f.name.replace("_", "-") for f in dataclasses.fields(Config)}
        why = ("is one value for every member of a sweep (they are one grouped network); give it "
               f"as --{key}") if key in shared else "is not a setting"
        raise ConfigError(f"--sweep {name}: {name} {why}; the axes are {', '.join(AXES)}")
    kind = int if key == "seed" else float
    try:
        parsed = tuple(kind(v) for v in values.split(","))
    except ValueError:
        raise ConfigError(f"--sweep {text}: {values!r} is not a list of "
                          f"{'integers' if kind is int else 'numbers'}") from None
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"--sweep {text}: a value is given twice")
    return AXES[key], parsed


def make_grid(texts: Sequence[str], seeds: Optional[int], base: Config) -> Grid:
    """The axes of ``--sweep`` and ``--sweep-seeds`` for the base config ``base``."""
    axes: dict[str, tuple] = {}
    for text in texts:
        field, values = parse_axis(text)
        if field in axes:
            raise ConfigError(f"--sweep {text}: the axis {field} is given twice")
        axes[field] = values
    loss = LOSSES[base.loss]
    for field in axes:
        if field in loss.unused_flags:
            raise ConfigError(f"--sweep {field.replace('_', '-')}: --loss {base.loss} does not use it")
    if seeds is not None:
        if "seed" in axes:
            raise ConfigError("--sweep-seeds and --sweep seed=... both give the seeds; give one")
        if seeds < 1:
            raise ConfigError(f"--sweep-seeds must be at least 1 (got {seeds})")
        axes["seed"] = tuple(base.seed + i for i in range(seeds))
    if not axes:
        raise ConfigError("--sweep needs at least one axis (NAME=V1,V2,...) or --sweep-seeds N")
    if "seed" in axes:  # innermost: a setting's seeds side by side
        axes["seed"] = axes.pop("seed")
    return Grid(axes)


def member_name(values: dict) -> str:
    """``lr0.0001_clip0.01_seed1``: a member's folder name from its values."""
    return "_".join(f"{SHORT[k]}{v:g}" if isinstance(v, float) else f"{SHORT[k]}{v}"
                    for k, v in values.items())


def member_configs(grid: Grid, base: Config) -> list[tuple[str, dict, Config]]:
    """(name, values, config) of each member: the base config with its values, its run folder
    ``<out>/members/<name>``, checked as a single run's."""
    out = []
    for combo in itertools.product(*grid.axes.values()):
        values = dict(zip(grid.axes, combo))
        name = member_name(values)
        cfg = dataclasses.replace(base, **values, out=str(Path(base.out) / "members" / name))
        out.append((name, values, cfg.validate().resolved()))
    return out


def sweep_parser() -> argparse.ArgumentParser:
    """The sweep's own flags; everything else is the single run's."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--sweep", nargs="+", action="extend", default=None, metavar="NAME=V1,V2")
    p.add_argument("--sweep-seeds", type=int, default=None, metavar="N")
    return p


def split_sweep_args(argv: Sequence[str]) -> tuple[Optional[list[str]], Optional[int], list[str]]:
    """(axes, seeds, the remaining flags) of a command line."""
    args, rest = sweep_parser().parse_known_args(list(argv))
    return args.sweep, args.sweep_seeds, rest
