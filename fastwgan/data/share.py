"""Each process's share of the global batch: how many images it takes, and which of them.

``--batch-size`` is the global batch. With several processes each takes ``local`` images of every
global batch, its own slice (from ``offset`` on), so that the ranks together consume the images
one process consumes, batch for batch. ``BatchShare`` computes and checks the share once; the
loaders (``Batches``, ``EpochBatches``, ``DaliStream``) slice by it, and
``distributed.split_batch`` is its ``local``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class BatchSplitError(ValueError):
    """The global batch does not divide into equal shares (a usage error: one line, exit 2)."""


@dataclass(frozen=True)
class BatchShare:
    """Process ``rank``'s share of ``global_batch`` among ``world_size`` processes.

    ``local`` (images per process and global batch) is computed on construction, which raises
    ``BatchSplitError``, naming the nearest valid sizes, when the batch does not split into equal
    shares, and ValueError for a rank outside the world.
    """

    global_batch: int
    rank: int = 0
    world_size: int = 1
    local: int = field(init=False)  # images per process of each global batch

    def __post_init__(self) -> None:
        global_batch, world_size = self.global_batch, self.world_size
        if world_size < 1:
            raise ValueError(f"world size must be at least 1 (got {world_size})")
        if not (global_batch % world_size == 0 and global_batch >= world_size):
            below = global_batch // world_size * world_size
            above = below + world_size
            nearest = " or ".join(str(b) for b in (below, above) if b >= world_size)
            raise BatchSplitError(f"--batch-size {global_batch} does not split over {world_size} "
                                  f"processes: use a multiple of {world_size}, e.g. {nearest}")
        if not 0 <= self.rank < world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {world_size})")
        object.__setattr__(self, "local", global_batch // world_size)  # (frozen)

    @property
    def offset(self) -> int:
        """Where this process's slice of each global batch starts."""
        return self.rank * self.local


def as_share(batch_size: int | BatchShare) -> BatchShare:
    """``batch_size`` as a ``BatchShare``: an int is the whole batch of one process."""
    return batch_size if isinstance(batch_size, BatchShare) else BatchShare(batch_size)
