"""The command line of training: ``python -m fastwgan.train [flags]`` (``--help`` lists them), or
``torchrun --nproc_per_node N -m fastwgan.train [flags]`` on N processes.

The flags become a config (``fastwgan.runconfig``), the run is ``fastwgan.run.train``; this
module turns what ends a run into an exit status and one line on stderr, and makes the module
itself callable as the Python API (``from fastwgan import train; train(config)``).
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import shlex
import signal
import sys
import types
from typing import Optional, Sequence

from fastwgan import checkpoint as ckpt_io
from fastwgan import distributed, run, runconfig, sweep
from fastwgan.config import Config, ConfigError
from fastwgan.data import DataError
from fastwgan.outputs import one_line_warnings
from fastwgan.runlock import RunFolderError
from fastwgan.stop import Stop

DESCRIPTION = """\
Train the WGAN of Arjovsky et al. (2017) (weight-clipped critic, RMSprop, n_critic critic steps
per generator step) with the DCGAN networks of the paper's code.

examples:
  python -m fastwgan.train --preset cpu                  # built-in faces, a few minutes on a CPU
  python -m fastwgan.train --amp --data ~/celeba/img_align_celeba --crop 108 --out runs/celeba
  python -m fastwgan.train --resume runs/celeba --iters 200000   # continue, exactly
  python -m fastwgan.train --loss wgan-gp --amp --data img_align_celeba.zip --crop 108
  python -m fastwgan.train --loss hinge --preset cpu     # another loss: wgan-gp, gan, hinge
  python -m fastwgan.train --preset cpu --sweep lr=5e-5,1e-4 clip=0.005,0.01 --sweep-seeds 2
                          # 8 runs as one grouped network: <out>/members/*, sweep.json (README "Sweeps")
  torchrun --nproc_per_node 8 -m fastwgan.train --amp --data ~/celeba/img_align_celeba --crop 108
"""


def parse_config(argv: Optional[Sequence[str]], given: Optional[dict] = None):
    """The run's config, checkpoint to resume (or None) and notes, from the command line."""
    return runconfig.parse_config(argv, given, description=DESCRIPTION)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (``python -m fastwgan.train``, ``fastwgan-train``): the exit status. A
    process of a torchrun job ends here (``distributed.exit_process``: no interpreter teardown)."""
    with one_line_warnings("warning: "):
        code = _main(argv)
    if distributed.launched_as()[1] > 1:
        distributed.exit_process(code)
    return code


def _main(argv: Optional[Sequence[str]]) -> int:
    # With several processes, rank 0 reports what every rank meets alike (bad input, a signal);
    # every rank reports its own failures, naming its rank.
    rank, world_size = distributed.launched_as()
    prefix = f"rank {rank}: " if world_size > 1 else ""

    def report(message: str, shared: bool) -> None:
        if rank == 0 or not shared:
            print(prefix + message, file=sys.stderr)

    try:
        args = list(sys.argv[1:] if argv is None else argv)
        axes, seeds, rest = sweep.split_sweep_args(args)
        if sweep.is_sweep_command(axes, seeds, rest):  # K runs as one grouped network
            sweep.train_from_args(axes, seeds, rest, command=shlex.join(["python", "-m", "fastwgan.train", *args]))
            return 0
        cfg, resume, notes = parse_config(argv)
        if resume and resume["iteration"] >= cfg.iters:
            if rank == 0:
                print(f"the checkpoint is at iteration {resume['iteration']}, at or past --iters "
                      f"{cfg.iters}; pass a larger --iters to train further")
            return 0
        run.train(cfg, resume, notes=notes, command=shlex.join(["python", "-m", "fastwgan.train", *args]))
    except (ConfigError, DataError, ckpt_io.CheckpointError, RunFolderError) as e:
        report(f"error: {e}", shared=True)
        return 2
    except Stop as e:
        report(("error: " if e.code == 1 else "") + str(e), shared=e.code != 1)
        return e.code
    except KeyboardInterrupt as e:
        report("interrupted; the last checkpoint written (if any) is kept", shared=True)
        return 128 + getattr(e, "signum", signal.SIGINT)
    return 0


class _CallableModule(types.ModuleType):
    """``from fastwgan import train`` gives this module (Python binds a package's submodule to its
    name once it is imported), so the module itself calls the Python API: ``train(config)``."""

    def __call__(self, config: Optional[Config] = None, **kwargs) -> dict:
        from fastwgan.api import train as api_train  # (the API imports no command line)

        return api_train(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
