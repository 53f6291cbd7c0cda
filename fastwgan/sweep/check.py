"""The self-check of a sweep (``python -m fastwgan.check``): a grouped network of two members on
the fast engine (on CUDA its kernels at the K-wide shapes and its CUDA graphs; on a CPU the twins,
eagerly) against the same two members trained as single runs on the same engine."""
from __future__ import annotations

import dataclasses

import torch

from fastwgan.build import build_engine, build_networks
from fastwgan.data.sampler import ResidentSampler
from fastwgan.sweep.engine import SweepFastEngine, seeded_member

K = 2
ITERATIONS = 3  # on CUDA: the eager warm-up and capture, then two replays


def _sampler(data, cfg, device, generator=None) -> ResidentSampler:
    s = ResidentSampler(data, cfg.batch_size, device=device, channels_last=device.type == "cuda")
    s.generator = generator
    return s


def check_grouped_engine(cfg, device: torch.device) -> str:
    """Member k of a grouped fast engine against a single fast engine of seed k (and the member's
    lr), from the same draws: the losses of the first iteration (on CUDA the eager warm-up, the
    kernels at the K-wide shapes) within 1e-3 relative, and after ``ITERATIONS`` iterations (on
    CUDA the graph replays) the weights within the optimizer's step bound.

    Only a bound: grouped and plain convolutions round differently (9e-7 after the first critic
    step on a CPU, cpu preset), and RMSprop's early steps, about 10 lr whatever the gradient's
    size, turn a gradient within rounding of zero into a weight up to 10 lr away; after three
    iterations of the cpu preset 30% of the generator's weights were 1e-3 relative apart."""
    size = cfg.image_size
    data = torch.randint(0, 256, (4 * cfg.batch_size, size, size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)
    members = [seeded_member(dataclasses.replace(cfg, seed=k, lr=cfg.learning_rate * (k + 1)),
                             f"member{k}", device) for k in range(K)]
    for m in members:
        m.source = _sampler(data, cfg, device, m.gen)
    grouped = SweepFastEngine(cfg, members, device, None, graphs=True)
    first = _iterations(grouped)
    for k, m in enumerate(members):
        torch.manual_seed(k)
        G, D = build_networks(m.cfg, device)
        single = build_engine(m.cfg, G, D, _sampler(data, cfg, device), device, None, backend="fast")
        torch.testing.assert_close(first[k], _iterations(single), rtol=1e-3, atol=1e-6,
                                   msg=lambda e: f"member {k}, first iteration's losses: {e}")
        for a, b in [(single.G, m.G), (single.D, m.D)]:
            _within_step_bound(a, b, m.cfg, f"member {k}")
    if device.type == "cuda":
        assert grouped.use_graphs and grouped.capture_error is None, grouped.capture_error
    return f"{K} members, {grouped.describe()}"


def _iterations(engine) -> torch.Tensor:
    """``ITERATIONS`` iterations of ``engine``; the loss sums of the first."""
    cfg = engine.cfg
    engine.iteration(cfg.n_critic_at(0))
    first = engine.sums.clone()
    for it in range(1, ITERATIONS):
        engine.iteration(cfg.n_critic_at(it))
    return first


def _within_step_bound(single: torch.nn.Module, member: torch.nn.Module, cfg, what: str) -> None:
    pa = torch.cat([p.detach().flatten() for p in single.parameters()])
    pb = torch.cat([p.detach().flatten() for p in member.parameters()])
    steps = ITERATIONS * (cfg.critic_warmup + 1)
    diff = (pa - pb).abs().max()
    assert diff <= 2 * 10 * cfg.learning_rate * steps, f"{what}: weights {diff:.3g} apart"
