"""The Python entry points: ``from fastwgan import Config, train, load_generator``.

``train`` runs what ``python -m fastwgan.train`` runs, from a notebook or a script: the same
config, built and checked the same way (a preset under the values given, the refusal to write
over a run, the resume checks), the same run folder. The command line is a thin layer over it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from fastwgan.config import Config, ConfigError

_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def given_values(config: Optional[Config], flags: dict[str, Any]) -> dict[str, Any]:
    """What the user gave, as the command line sees its flags: the fields of ``config`` that differ
    from the defaults, then ``flags``. A preset is applied under these, as ``--preset`` is."""
    unknown = sorted(set(flags) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"the settings are the fields of fastwgan.Config")
    given: dict[str, Any] = {}
    if config is not None:
        defaults = Config()
        given = {n: getattr(config, n) for n in _FIELDS if getattr(config, n) != getattr(defaults, n)}
    given.update({k: v for k, v in flags.items() if v is not None})
    return given


def train(config: Optional[Config] = None, *, log: Callable[[str], None] = print,
          sweep: Optional[dict[str, Any] | list[str]] = None, sweep_seeds: Optional[int] = None,
          **flags) -> dict:
    """Train (or resume) a run as ``python -m fastwgan.train`` would; returns a summary:
    ``{"iteration", "elapsed", "out"}``.

    ``config``: a ``Config``; ``flags``: its fields by name, as on the command line, e.g.
    ``train(preset="cpu", out="runs/nb")`` or ``train(resume="runs/nb", iters=3000)``. Fields of
    ``config`` left at their defaults take the preset's values. The run's log lines go to ``log``
    (and to its train.log); the per-interval progress lines are tqdm's, on stdout.

    Bad input raises ``ConfigError``, ``fastwgan.data.DataError`` or
    ``fastwgan.checkpoint.CheckpointError`` (the command line prints these as one line); a run
    stopped by a NaN loss or a signal raises ``fastwgan.stop.Stop`` after its checkpoint.

    ``sweep`` (axis -> values, e.g. ``{"lr": [5e-5, 1e-4]}``, or ``["lr=5e-5,1e-4"]``) and
    ``sweep_seeds``: a sweep, as ``--sweep`` and ``--sweep-seeds`` (README "Sweeps"); its summary
    has the table's rows in ``members``. ``resume`` of a sweep's folder continues the sweep.
    """
    from fastwgan import run
    from fastwgan import sweep as sweeps
    from fastwgan.runconfig import parse_config

    given = given_values(config, flags)
    axes = ([f"{k}={','.join(map(str, v))}" for k, v in sweep.items()] if isinstance(sweep, dict)
            else list(sweep or []))
    if sweeps.is_sweep_command(axes, sweep_seeds, [], given):
        call = ", ".join(f"{k}={v!r}" for k, v in given.items())
        return sweeps.train_from_args(axes, sweep_seeds, [], given, log=log,
                                      command=f"fastwgan.train({call}, sweep={sweep!r})")
    cfg, resume, notes = parse_config([], given)
    if resume and resume["iteration"] >= cfg.iters:
        log(f"the checkpoint is at iteration {resume['iteration']}, at or past iters {cfg.iters}; "
            "nothing to train")
        return {"iteration": resume["iteration"], "elapsed": resume.get("elapsed", 0.0), "out": cfg.out}
    call = ", ".join(f"{k}={v!r}" for k, v in given.items())
    return run.train(cfg, resume, log=log, notes=notes, command=f"fastwgan.train({call})")


def load_generator(run: str, device: str = "cpu"):
    """The generator of a run folder (or its checkpoint.pt) as a plain ``torch.nn.Module`` in
    eval mode on ``device``: ``G(z)`` maps z of shape (N, G.nz) to images (N, 3, G.image_size,
    G.image_size) in [-1, 1]."""
    from fastwgan.checkpoint import load_generator as load

    return load(run, device)[0]
