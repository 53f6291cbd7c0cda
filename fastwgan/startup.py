"""Start-up of the command-line programs: a Ctrl-C while torch imports (seconds, on a cold
disk) prints one line, not a KeyboardInterrupt traceback from deep inside torch.

``python -m fastwgan.train`` (and sample, eval, check) call ``quiet_interrupt()`` before their heavy
imports; the console scripts (``fastwgan-train``, ...) start here, importing nothing heavy before
it. Once ``main()`` runs, it handles Ctrl-C itself (a checkpoint, then one line).
"""
from __future__ import annotations

import importlib
import sys

MESSAGE = "interrupted while starting up; nothing was written"


def quiet_interrupt() -> None:
    """From now on, a KeyboardInterrupt that reaches the top prints one line; the process then
    ends as Python ends it on SIGINT (exit status 130 in a shell). Other errors are unchanged."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print(MESSAGE, file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook


def _run(module: str) -> int:
    quiet_interrupt()
    return importlib.import_module(module).main()


def train() -> int:
    return _run("fastwgan.train")


def sample() -> int:
    return _run("fastwgan.sample")


def evaluate() -> int:
    return _run("fastwgan.eval")


def check() -> int:
    return _run("fastwgan.check")
