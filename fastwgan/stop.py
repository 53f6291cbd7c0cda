"""How a run ends early: ``Stop`` (a message and an exit code, after whatever could be saved was
saved) and ``Interrupted`` (a second SIGINT or SIGTERM: at once, without a checkpoint)."""
from __future__ import annotations


class Stop(Exception):
    """Ends a run with a message and an exit code, after whatever could be saved was saved."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Interrupted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM during training: stop at once, without a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
