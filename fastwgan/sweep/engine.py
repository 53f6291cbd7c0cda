"""The engines of a sweep: the reference and fast engines' phases over grouped networks.

A sweep member is one run's worth of state (``Member``): its config, its generator and critic
(ordinary modules, fastwgan.sweep.grouped), its random stream and its real batches. The grouped
engine feeds the grouped networks with every member's real batch side by side (N, K*3, H, W)
and every member's z (N, K*nz), each drawn from the member's own stream in the order its single
run draws them (the real batch, then z, at each critic step). The losses are the loss entry's
objectives applied to each member's column of scores (``torch.func.vmap``) and summed: the
members' parameters are disjoint, so the sum's gradient is each member's own. Each member has
its own optimizers (``MemberOptimizers``): its own learning rate, its own clip, its own state.

Optimizers, one launch per member: each member's RMSpropClip (fast engine; clipping inside the
update) or torch's RMSprop/Adam (reference; clipping after the update, as ``steps.critic_step``
does). One launch per member and per step keeps the members' optimizer states in the
single-run format, which a per-segment table in one launch would not (see the grouped module's
docstring for the measured cost).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from fastwgan import steps
from fastwgan.config import Config
from fastwgan.engine import ReferenceEngine
from fastwgan.fast import FastEngine, make_fast_optimizers
from fastwgan.losses import LOSSES
from fastwgan.sweep.grouped import GroupedCritic, GroupedGenerator


@dataclass
class Member:
    """One member of a sweep: what its single run would hold."""

    cfg: Config                 # its own config (seed, lr, clip, gp_weight, out)
    name: str                   # its folder's name under <out>/members
    G: nn.Module
    D: nn.Module
    gen: torch.Generator        # its stream on the device: real draws (device sampler) and z
    cpu_state: torch.Tensor     # its CPU stream's state (the CPU generator is ``gen`` on a CPU)
    source: Any = None          # its real batches (a Batches, or a sampler drawing from ``gen``)
    active: bool = True         # False once its losses went non-finite
    stopped: str = ""           # why it stopped


def seeded_member(cfg: Config, name: str, device: torch.device) -> Member:
    """A member's networks, initialised as its single run initialises them (torch seeded with its
    seed, generator then critic from the global stream, fastwgan.build), and its stream in the
    state its single run's stream has after that: on a CPU the global stream itself, on CUDA the
    device's default stream, seeded and untouched."""
    from fastwgan.build import build_networks

    torch.manual_seed(cfg.seed)
    G, D = build_networks(cfg, device)
    cpu_state = torch.get_rng_state()
    gen = torch.Generator(device)
    if device.type == "cpu":
        gen.set_state(cpu_state)
    else:
        gen.manual_seed(cfg.seed)
    return Member(cfg, name, G, D, gen, cpu_state)


class MemberRng:
    """The global streams set to a member's for the loop's work on its behalf (a checkpoint saves
    the global state, as its single run's would), and the member's taken back after it."""

    def __init__(self, member: Member, device: torch.device):
        self.member, self.device = member, device

    def __enter__(self):
        m = self.member
        self.saved = torch.get_rng_state()
        if self.device.type == "cpu":
            torch.set_rng_state(m.gen.get_state())
        else:
            self.saved_device = torch.cuda.get_rng_state(self.device)
            torch.set_rng_state(m.cpu_state)
            torch.cuda.set_rng_state(m.gen.get_state(), self.device)

    def __exit__(self, *exc):
        m = self.member
        if self.device.type == "cpu":
            m.gen.set_state(torch.get_rng_state())
        else:
            m.cpu_state = torch.get_rng_state()
            m.gen.set_state(torch.cuda.get_rng_state(self.device))
            torch.cuda.set_rng_state(self.saved_device, self.device)
        torch.set_rng_state(self.saved)
        return False


def restore_member_rng(member: Member, rng: dict, device: torch.device) -> None:
    """A member's streams from its checkpoint's ``rng`` (the single-run format)."""
    member.cpu_state = rng["torch"]
    if device.type == "cpu":
        member.gen.set_state(rng["torch"])
    elif "cuda" in rng:
        member.gen.set_state(rng["cuda"][0])


class MemberOptimizers:
    """The members' optimizers of one network as one: ``zero_grad`` and ``step`` for all of them;
    a member no longer active is not stepped. ``clips``: each member's clip after its step (the
    reference engine's clipping; None where the optimizer clips in its update or not at all)."""

    def __init__(self, opts: list[torch.optim.Optimizer], params: list[list[torch.Tensor]],
                 clips: list[Optional[float]], members: list[Member]):
        self.opts, self.params, self.clips, self.members = opts, params, clips, members

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.opts:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt, params, clip, m in zip(self.opts, self.params, self.clips, self.members):
            if not m.active:
                continue
            opt.step()
            if clip is not None:
                steps.clip_weights_(params, clip)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.opts for g in opt.param_groups]


class MemberObjectives:
    """The loss's objectives applied to each member's column of scores and summed; each member's
    own values kept for its loss sums."""

    def __init__(self, loss_name: str):
        loss = LOSSES[loss_name]
        # (a loss whose critic step is its own, the gradient penalty: ``critic_step_gp``)
        self.critic_objective = getattr(loss.critic_step, "keywords", {}).get("objective")
        self.generator_objective = loss.generator_step.keywords["objective"]
        self.critic_values: Optional[torch.Tensor] = None     # (K, 3): loss_d, d_real, d_fake
        self.generator_values: Optional[torch.Tensor] = None  # (K,): loss_g

    def critic(self, out_real: torch.Tensor, out_fake: torch.Tensor):  # (N, K) each
        loss_d, d_real, d_fake = torch.func.vmap(self.critic_objective, in_dims=(1, 1))(out_real, out_fake)
        self.critic_values = torch.stack([loss_d, d_real, d_fake], 1).detach()
        return loss_d.sum(), d_real.sum(), d_fake.sum()

    def generator(self, out_fake: torch.Tensor) -> torch.Tensor:  # (N, K)
        loss_g = torch.func.vmap(self.generator_objective, in_dims=1)(out_fake)
        self.generator_values = loss_g.detach()
        return loss_g.sum()


class GroupedSource:
    """Every member's real batch side by side: (N, K*3, H, W). ``draw`` where every member draws
    on the device (the fast engine captures it); ``generators``: the members' streams, which a
    CUDA graph registers (fastwgan.fast.graph_generators)."""

    def __init__(self, members: list[Member]):
        self.members = members
        self.generators = [m.gen for m in members] if members[0].gen.device.type == "cuda" else []
        if all(hasattr(m.source, "draw") for m in members):
            self.draw = self.__next__

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return torch.cat([next(m.source) for m in self.members], 1)

    @property
    def position(self) -> int:
        return getattr(self.members[0].source, "position", 0)


class GroupedPhases:
    """The phases over grouped networks; mixed into the reference and the fast engine."""

    members: list[Member]

    def make_optimizers(self, cfg: Config, G: nn.Module, D: nn.Module, world):
        loss = LOSSES[cfg.loss]
        pairs = [self.member_optimizers(m) for m in self.members]
        clips = [m.cfg.clip if loss.clips and self.clips_after_step else None for m in self.members]
        opt_g = MemberOptimizers([p[0] for p in pairs], [list(m.G.parameters()) for m in self.members],
                                 [None] * len(self.members), self.members)
        opt_d = MemberOptimizers([p[1] for p in pairs], [list(m.D.parameters()) for m in self.members],
                                 clips, self.members)
        return opt_g, opt_d

    def init_grouped(self, cfg: Config) -> None:
        self.k = len(self.members)
        self.objectives = MemberObjectives(cfg.loss)
        self.sums = torch.zeros(self.k, len(self.loss.sums), device=self.device)
        self.gp_weights = torch.tensor([m.cfg.gp_weight for m in self.members], device=self.device)
        self.step_cfg.clip = None  # each member's clip: MemberOptimizers (or RMSpropClip's update)

    def clip_critic_at_build(self, cfg: Config) -> None:
        """Each member's critic into its own [-clip, clip] (``Engine.clip_critic_at_build``)."""
        if LOSSES[cfg.loss].clips:
            for m in self.members:
                steps.clip_weights_(m.D.parameters(), m.cfg.clip)

    def noise(self) -> torch.Tensor:
        return torch.cat([torch.randn(self.batch_size, self.nz, device=self.device, generator=m.gen)
                          for m in self.members], 1)

    def critic(self) -> None:
        # the sums: add_ into their slices (``+=`` on a slice copies it back onto itself: a kernel more)
        real = self._real()  # before z, as a single run draws them
        z = self.noise()
        if self.loss.double_backward:  # the gradient penalty: its own step
            values = critic_step_gp(self, real, z)
            self.sums[:, :3].add_(values[:, :3])
            self.sums[:, 4:].add_(values[:, 3:])
            return
        steps.critic_step(self.G, self.D, self.opt_d, real, z, self.step_cfg, self.objectives.critic)
        self.sums[:, :3].add_(self.objectives.critic_values)

    def generator(self) -> None:
        z = self.noise()
        steps.generator_step(self.G, self.D, self.opt_g, z, self.step_cfg, self.objectives.generator)
        self.sums[:, 3].add_(self.objectives.generator_values)

    def parameter_sets(self) -> dict[str, list[torch.Tensor]]:
        return {"generator": list(self.G.parameters()), "critic": list(self.D.parameters())}


def critic_step_gp(engine: GroupedPhases, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The WGAN-GP critic step (fastwgan.losses.wgan_gp) of every member: each member's eps from
    its own stream after its real batch and z, as its single run draws it; the penalty of each
    member's own input gradient (its 3 channels), weighted by its own gp_weight. Returns (K, 5):
    loss_d, d_real, d_fake, gp, grad_norm per member."""
    G, D, cfg, k = engine.G, engine.D, engine.step_cfg, engine.k
    n = real.shape[0]
    with torch.no_grad(), steps.autocast(z, cfg):
        fake = G(z)
    eps = torch.cat([torch.rand(n, 1, 1, 1, device=real.device, generator=m.gen)
                     for m in engine.members], 1)                       # (N, K, 1, 1)
    eps = eps.repeat_interleave(real.shape[1] // k, dim=1)             # (N, K*3, 1, 1)
    engine.opt_d.zero_grad(set_to_none=True)
    with steps.autocast(real, cfg):
        d_real = D(real).float().mean(0)                               # (K,)
        d_fake = D(fake).float().mean(0)
    with torch.autocast(real.device.type, enabled=False):
        x_hat = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        norm = torch.linalg.vector_norm(grad.reshape(n, k, -1), dim=2)  # (N, K)
        gp, grad_norm = ((norm - 1) ** 2).mean(0), norm.mean(0)
    loss_d = d_fake - d_real + engine.gp_weights * gp
    loss_d.sum().backward()
    engine.opt_d.step()
    return torch.stack([loss_d, d_real, d_fake, gp, grad_norm], 1).detach()


class SweepReferenceEngine(GroupedPhases, ReferenceEngine):
    """The reference engine's phases over a sweep's grouped networks."""

    clips_after_step = True

    def __init__(self, cfg: Config, members: list[Member], device: torch.device,
                 amp_dtype: Optional[torch.dtype], **kw):
        self.members = members
        G = GroupedGenerator([m.G for m in members])
        D = GroupedCritic([m.D for m in members])
        super().__init__(cfg, G, D, GroupedSource(members), device, amp_dtype, **kw)
        self.init_grouped(cfg)

    def member_optimizers(self, m: Member):
        return steps.make_optimizers(m.G, m.D, LOSSES[m.cfg.loss].optimizer, m.cfg.learning_rate,
                                     m.cfg.adam_betas)

    def describe(self) -> str:
        return f"{super().describe()}, {self.k} members grouped"


class SweepFastEngine(GroupedPhases, FastEngine):
    """The fast engine's phases (its kernels, on CUDA its graphs) over a sweep's grouped networks."""

    clips_after_step = False  # RMSpropClip clips in its update

    def __init__(self, cfg: Config, members: list[Member], device: torch.device,
                 amp_dtype: Optional[torch.dtype], graphs: bool = True, **kw):
        self.members = members
        G = GroupedGenerator([m.G for m in members])
        D = GroupedCritic([m.D for m in members])
        super().__init__(cfg, G, D, GroupedSource(members), device, amp_dtype, graphs, **kw)
        self.init_grouped(cfg)

    def member_optimizers(self, m: Member):
        return make_fast_optimizers(m.cfg, m.G, m.D, self.impl)

    def describe(self) -> str:
        return f"{super().describe()}, {self.k} members grouped"


class MemberView:
    """What the training loop reads of an engine, for one member: its networks, optimizers, loss
    sums (its row of the grouped engine's), data position and description."""

    def __init__(self, engine: GroupedPhases, k: int):
        m = engine.members[k]
        self.engine, self.member = engine, m
        self.G, self.D, self.loss, self.name = m.G, m.D, engine.loss, engine.name
        self.opt_g, self.opt_d = engine.opt_g.opts[k], engine.opt_d.opts[k]
        self.sums = engine.sums[k]

    @property
    def data_position(self) -> int:
        return getattr(self.member.source, "position", 0)

    def parameter_sets(self) -> dict[str, list[torch.Tensor]]:
        return {"generator": list(self.G.parameters()), "critic": list(self.D.parameters())}

    def describe(self) -> str:
        return self.engine.describe()
