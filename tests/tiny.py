"""The smallest training run through the command line: the ``smoke`` preset, no progress bar, no
loader processes."""
from fastwgan import train

TINY = ["--preset", "smoke", "--no-progress", "--workers", "0"]


def run(*args) -> int:
    """``python -m fastwgan.train`` with ``TINY`` and ``args``, in this process: its exit status."""
    return train.main([*TINY, *map(str, args)])
