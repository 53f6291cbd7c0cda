"""I.i.d. training batches drawn on the device from a decoded dataset, for the captured loop.

``ResidentSampler`` gathers random images of a resident dataset (uint8 (N, H, W, 3), from either
loader) into fixed buffers with no host synchronisation, so that a CUDA graph can replay a draw
with the training step. The epoch-ordered batches of the same data are ``order.py``'s.
"""
from __future__ import annotations

from typing import Optional

import torch


class ResidentSampler:
    """I.i.d. batches drawn on the device from a decoded dataset, CUDA-graph safe.

    ``data``: uint8 (N, H, W, 3). Each ``draw()`` picks ``batch_size`` indices with ``torch.randint``
    on the device, gathers them and converts to ``dtype`` in [-1, 1], (N, 3, H, W) channels_last (or
    contiguous), all into buffers allocated once: no host synchronisation, no allocation, so a draw
    can be captured in a CUDA graph and replayed. The returned tensor is that fixed buffer: the next
    draw overwrites it.

    Unlike the epoch-shuffled streams, indices are drawn *with replacement*: an image may appear
    twice in a batch, or not at all in an epoch's worth of batches (about 1/e of them). For SGD this
    is the textbook i.i.d. sampling; it is not batch-for-batch the Pillow loader's order.

    Random numbers: ``seed=None`` uses the device's default generator, which CUDA graphs capture
    safely and the trainer's checkpoint saves and restores (``torch.cuda.get_rng_state_all`` /
    ``torch.get_rng_state``): the draws are then as deterministic as that RNG state, and a resumed
    run continues them exactly. An int ``seed`` gives the sampler its own generator
    (``self.generator``): reproducible on its own, but a CUDA graph must register it
    (``graph.register_generator_state(sampler.generator)``: the fast engine does so for each of its
    graphs, and refuses a seeded sampler where torch cannot) and a checkpoint must save
    ``sampler.state_dict()``. ``position`` counts the draws made through ``draw()`` (graph replays
    do not pass through it: add them yourself).
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: Optional[int] = None,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 channels_last: bool = True):
        if data.dtype != torch.uint8 or data.dim() != 4 or data.shape[-1] != 3:
            raise ValueError(f"data must be uint8 (N, H, W, 3), got {tuple(data.shape)} {data.dtype}")
        device = torch.device(device) if device is not None else data.device
        self.data = data.to(device)                     # (N, H, W, 3) uint8
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        n, h, w, _ = self.data.shape
        self.n = n
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator(device).manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.index = torch.empty(batch_size, dtype=torch.long, device=device)        # (B,)
        self.gathered = torch.empty((batch_size, h, w, 3), dtype=torch.uint8, device=device)
        self.out = torch.empty((batch_size, 3, h, w), dtype=dtype, device=device, memory_format=fmt)
        # fp32 staging for other dtypes: the same rounding as the float32 path, then one cast
        self._f32 = self.out if dtype == torch.float32 else torch.empty_like(self.out, dtype=torch.float32)
        self.position = 0

    def draw(self) -> torch.Tensor:
        """One batch (B, 3, H, W) in [-1, 1]; the same buffer every call."""
        torch.randint(self.n, (self.batch_size,), generator=self.generator, device=self.device,
                      out=self.index)
        torch.index_select(self.data, 0, self.index, out=self.gathered)
        # uint8 -> fp32 and / 127.5 in one kernel (the same values as a copy, then div_)
        torch.div(self.gathered.permute(0, 3, 1, 2), 127.5, out=self._f32)
        self._f32.sub_(1.0)
        if self._f32 is not self.out:
            self.out.copy_(self._f32)
        self.position += 1
        return self.out

    def __iter__(self) -> "ResidentSampler":
        return self

    def __next__(self) -> torch.Tensor:
        return self.draw()

    def state_dict(self) -> dict:
        state = {"position": self.position}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
