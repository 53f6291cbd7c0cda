"""What a run trains, built in one place from a Config: the two networks, and the engine that
trains them. The trainer, the checkpoint checks, ``sample``, ``eval``, the self-check and the
benchmarks all build through here, so what is checked and timed is what is trained.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fastwgan.distributed import SINGLE, World
from fastwgan.engine import Engine, ReferenceEngine
from fastwgan.fast import FastEngine
from fastwgan.models import Critic, Generator


def build_generator(cfg) -> Generator:
    """The generator ``cfg`` trains (``image_size``, ``nz``, ``ngf``, ``extra_layers``)."""
    return Generator(cfg.image_size, cfg.nz, cfg.ngf, extra_layers=cfg.extra_layers)


def build_critic(cfg) -> Critic:
    """The critic ``cfg`` trains (``image_size``, ``ndf``, ``extra_layers``, the loss's norm)."""
    return Critic(cfg.image_size, cfg.ndf, extra_layers=cfg.extra_layers,
                  norm=cfg.critic_normalization)


def build_networks(cfg, device: Optional[torch.device | str] = None) -> tuple[Generator, Critic]:
    """Both networks, freshly initialised from torch's global generator (generator first), on
    ``device`` (the CPU when None)."""
    G, D = build_generator(cfg), build_critic(cfg)
    if device is not None:
        G, D = G.to(device), D.to(device)
    return G, D


def resolve_backend(cfg, device: torch.device) -> str:
    """``--backend``: ``auto`` is the fast engine on CUDA and the reference elsewhere."""
    if cfg.backend == "auto":
        return "fast" if device.type == "cuda" else "reference"
    return cfg.backend


def build_engine(cfg, G: nn.Module, D: nn.Module, source, device: torch.device,
                 amp_dtype: Optional[torch.dtype], world: World = SINGLE, *,
                 backend: Optional[str] = None, graphs: Optional[bool] = None,
                 impl: Optional[str] = None) -> Engine:
    """The engine that trains ``G`` and ``D`` (already on ``device``) as ``cfg`` says, with its
    optimizers, fed by ``source``: a ``fastwgan.data.Batches`` or any iterator of real batches.

    ``backend``: "reference" or "fast" (default: ``resolve_backend``). The fast engine draws from
    the device-side sampler where ``source`` is a resident ``Batches`` (channels_last on CUDA),
    from ``source`` itself otherwise; ``graphs`` (default ``cfg.graphs``) and ``impl`` (default:
    Triton on CUDA, the twins elsewhere) are its own. ``world``: this process's place among
    several (``cfg.sync_bn`` applies there)."""
    backend = backend or resolve_backend(cfg, device)
    # a Batches carries this process's share of the batch, computed once by the run
    kw = dict(world=world, sync_bn=cfg.sync_bn, share=getattr(source, "share", None))
    if backend == "reference":
        return ReferenceEngine(cfg, G, D, source, device, amp_dtype, **kw)
    if backend != "fast":
        raise ValueError(f"backend must be 'reference' or 'fast', not {backend!r}")
    if getattr(source, "mode", None) == "resident":  # a Batches that holds the decoded set
        source = source.sampler(channels_last=device.type == "cuda")
    return FastEngine(cfg, G, D, source, device, amp_dtype, cfg.graphs if graphs is None else graphs,
                      impl=impl, **kw)
