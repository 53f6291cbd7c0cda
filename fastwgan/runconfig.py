"""The config of a run, from flags (or the Python API's values) over a preset over the defaults;
when resuming, from the checkpoint's own config with the flags that may change over it.

``parse_config`` is what both the command line and ``fastwgan.train(...)`` call: the same
refusal to write over a run, the same checks of a resumed run's networks and loss, the same
notes (flags the loss ignores, a torchrun restart continuing from the last checkpoint).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from fastwgan import checkpoint as ckpt_io
from fastwgan import distributed
from fastwgan.config import Config, ConfigError, build_parser, config_from_args
from fastwgan.runfolder import holds_run

# Flags that define the networks: a resumed run keeps the checkpoint's values.
ARCHITECTURE = ("image_size", "nz", "ngf", "ndf", "extra_layers", "loss", "critic_norm")


def ignored_flags(args, cfg: Config) -> list[str]:
    """A note naming the flags the user gave that this config's loss does not use."""
    loss = cfg.loss_entry
    given = [f"--{n.replace('_', '-')}" for n in loss.unused_flags if getattr(args, n) is not None]
    if not given:
        return []
    return [f"note: {loss.unused_why}: {', '.join(given)} ignored"]


def parse_config(argv: Optional[Sequence[str]], given: Optional[dict] = None,
                 description: Optional[str] = None) -> tuple[Config, Optional[dict], list[str]]:
    """The run's config, the checkpoint to resume from (or None), and notes for the log.

    ``given``: values set as if by flags (the Python API). ``description``: the command line's
    --help text. A resumed checkpoint gets ``source_dir``: the run folder it came from."""
    parser = build_parser(description=description)
    args = parser.parse_args(argv, namespace=argparse.Namespace(**(given or {})))
    restart = resume_after_restart(args)
    if args.resume is None:
        cfg = config_from_args(args)
        if holds_run(cfg.out) and not cfg.overwrite:
            raise ConfigError(f"{cfg.out} already holds a run; continue it with --resume {cfg.out}, "
                              "or pass another --out (or --overwrite to start it again)")
        return cfg, None, ignored_flags(args, cfg)
    ckpt = ckpt_io.load(args.resume, resume=True)  # validated before anything is written
    source = ckpt_io.checkpoint_path(args.resume).parent
    saved = Config.from_dict(ckpt["config"]).resolved()  # (older checkpoints lack later fields)
    for name in ARCHITECTURE:
        value = getattr(args, name)
        if value is not None and value != getattr(saved, name):
            raise ConfigError(f"--{name.replace('_', '-')} {value} differs from the checkpoint's "
                              f"{getattr(saved, name)}; a resumed run keeps its networks and loss")
    if args.out is None:
        args.out = str(source)
    elif Path(args.out).resolve() != source.resolve() and holds_run(args.out) and not args.overwrite:
        raise ConfigError(f"--out {args.out} already holds another run; resuming {source} there "
                          "would replace it. Pass another --out (or --overwrite)")
    args.preset = None  # the saved config already has the preset applied
    cfg = config_from_args(args, base=saved)
    ckpt["source_dir"] = str(source)
    return cfg, ckpt, restart + ignored_flags(args, cfg)


def resume_after_restart(args) -> list[str]:
    """Under ``torchrun --max-restarts K``, a restarted job continues from its run folder's last
    checkpoint (``args.resume`` set to it) rather than starting again or resuming the checkpoint
    the first start resumed; a note for the log. No checkpoint yet: the run starts afresh."""
    restarts = distributed.restart_count()
    if restarts == 0:
        return []
    folder = args.out
    if folder is None and args.resume is not None:
        folder = str(ckpt_io.checkpoint_path(args.resume).parent)
    folder = folder or Config().out
    if not holds_run(folder):
        return []
    args.resume, args.out = folder, folder
    return [f"note: torchrun restart {restarts}: continuing from the last checkpoint in {folder}"]


def preset_config(preset: Optional[str] = None, loss: Optional[str] = None, **flags) -> Config:
    """The config the trainer resolves from ``--preset``, ``--loss`` and the ``flags`` given by
    field name (the self-check and the benchmarks build what a run of these would train)."""
    return config_from_args(argparse.Namespace(preset=preset, loss=loss, **flags))
