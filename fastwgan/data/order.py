"""The order of the training images: batch ``b`` of the run, from the seed and ``b`` alone.

``EpochBatches`` is the order every loader follows (a fresh permutation per epoch, the last
incomplete batch dropped), so the Pillow and DALI loaders, streaming or resident, give the same
images batch for batch, and a run resumes at any batch number. ``resident_batches`` gathers those
batches from a decoded dataset in memory, (N, 3, H, W) or (N, H, W, 3) alike.
"""
from __future__ import annotations

from typing import Iterator

import torch

from fastwgan.data.share import BatchShare, as_share


class EpochBatches:
    """Batch ``b`` (0, 1, 2, ... over all epochs) of a shuffle-per-epoch stream, from the seed alone.

    Epoch ``e`` is ``randperm(n)`` from a generator seeded by (seed, e); the last incomplete batch
    of an epoch is dropped. Being a pure function of the batch number, a resumed run continues
    exactly where it stopped.

    Several processes: ``batch_size`` is a ``BatchShare`` of the global batch (an int: the whole
    batch of one process) and yields the rank's equal slice of each global batch, so the ranks
    together draw the images one process draws, step for step, and the batch number stays a
    global count (a run resumes at the same images with any world size that divides the batch).
    """

    def __init__(self, n: int, batch_size: int | BatchShare, seed: int, start: int = 0):
        share = as_share(batch_size)
        batch_size = share.global_batch
        if n < batch_size:
            raise ValueError(f"the dataset has {n} images, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size
        self.local = share.local                         # images per rank and batch
        self.offset = share.offset                       # where this rank's slice starts

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, b = divmod(self.start, self.per_epoch)
        while True:
            perm = self._perm(epoch)
            for i in range(b, self.per_epoch):
                first = i * self.batch_size + self.offset
                yield perm[first:first + self.local].tolist()
            epoch, b = epoch + 1, 0


def resident_batches(data: torch.Tensor, batch_size: int | BatchShare, seed: int,
                     start: int = 0) -> Iterator[torch.Tensor]:
    """Batches gathered along the first dimension of a decoded dataset ``data`` (uint8, NCHW from
    the Pillow loader, NHWC from DALI) in the ``EpochBatches`` order, from batch ``start`` on: the
    same images, batch by batch, as streaming with the same seed (a ``BatchShare``: this rank's
    slice of each global batch)."""
    for idx in EpochBatches(len(data), batch_size, seed, start):
        yield data[torch.tensor(idx, device=data.device)]
