"""How many members fit: a sweep's memory estimated from the parameter, optimizer and activation
sizes of one member, before anything is allocated, and a larger sweep refused with one line.

Per member (fp32, the worst case; bf16 autocast halves the activations):

* parameters: the weights, their gradients, the optimizer's state (RMSprop 1 tensor, Adam 2) and
  the grouped forward's concatenated copy of the weights (two live in a critic step: real and
  fake): (4 + optimizer tensors) x 4 bytes per parameter;
* activations, the larger of the two steps: the critic step keeps the critic's activations of
  the real and the fake batch (and the fake images), the generator step the generator's and the
  critic's once. Each block keeps about three tensors of its output's size (convolution, norm,
  activation), counted from a forward on the meta device (no memory, exact shapes).

``SAFETY`` leaves room for the allocator's fragmentation, cuDNN workspaces and CUDA graphs' pools.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastwgan.config import Config, ConfigError
from fastwgan.losses import LOSSES
from fastwgan.models import Block

SAFETY = 0.8          # of the free memory a sweep may plan to use
TENSORS_PER_BLOCK = 3  # conv output, norm output, activation output, kept for backward


def _activations(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements a forward keeps for backward: ``TENSORS_PER_BLOCK`` per block output, the input
    and the output, counted on the meta device."""
    counted = [x.numel()]
    hooks = [m.register_forward_hook(lambda _m, _i, out: counted.append(TENSORS_PER_BLOCK * out.numel()))
             for m in net.modules() if isinstance(m, Block)]
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(counted) + out.numel()


def member_bytes(cfg: Config) -> dict[str, int]:
    """One member's estimated bytes: parameters (with gradients, optimizer state and the grouped
    copy), activations, and their total."""
    from fastwgan.build import build_critic, build_generator

    with torch.device("meta"):
        G, D = build_generator(cfg), build_critic(cfg)
        z = torch.empty(cfg.batch_size, cfg.nz)
        fake_numel = _activations(G, z)
        images = torch.empty(cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        critic_numel = _activations(D, images)
    n_params = sum(p.numel() for p in [*G.parameters(), *D.parameters()])
    state = 1 if LOSSES[cfg.loss].optimizer == "rmsprop" else 2
    params = n_params * (4 + state) * 4
    activations = 4 * max(2 * critic_numel + images.numel(), fake_numel + critic_numel)
    return {"parameters": params, "activations": activations, "total": params + activations}


def free_bytes(device: torch.device) -> int:
    """Memory free for the sweep: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def largest_k(cfg: Config, capacity: int) -> int:
    """The most members of ``cfg`` that ``capacity`` bytes hold (with ``SAFETY``)."""
    return int(SAFETY * capacity // member_bytes(cfg)["total"])


def check_fits(cfg: Config, k: int, device: torch.device) -> None:
    """A one-line ConfigError (exit 2) when ``k`` members would not fit on ``device``."""
    free = free_bytes(device)
    most = largest_k(cfg, free)
    if k > most:
        per = member_bytes(cfg)["total"]
        where = "GPU" if device.type == "cuda" else "host"
        raise ConfigError(f"--sweep: {k} members need about {k * per / 2**30:.1f} GiB "
                          f"({per / 2**20:.0f} MiB each), more than {SAFETY:.0%} of the "
                          f"{free / 2**30:.1f} GiB free on the {where}; at most {most} fit")
