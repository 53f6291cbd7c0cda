"""The reference engine: one generator iteration as a plain Python loop of phases.

An engine owns the networks' optimizers and the device buffer the losses accumulate in
(``sums``: loss_d, d_real, d_fake summed over critic steps, loss_g summed over generator
steps, then the loss's own critic values: ``extra`` of its entry in fastwgan.losses), and runs
``iteration(n_critic)``. The trainer around it (logging, samples, checkpoints)
is the same for every engine; the fast engine (fastwgan.fast) replays the same phases from CUDA
graphs.

Several processes: an engine built with a ``World`` of more than one rank trains data-parallel.
Each rank takes its share of the global batch (``BatchShare``) and its own z; the gradients are
averaged over the ranks before every update (here by torch's DistributedDataParallel, in the
fast engine by one all-reduce of each optimizer's flat gradient buffer). See
fastwgan.distributed.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from fastwgan.config import Config
from fastwgan.data.share import BatchShare
from fastwgan.distributed import SINGLE, World, broadcast_
from fastwgan.losses import LOSSES
from fastwgan.steps import StepConfig, clip_weights_, make_optimizers

# The options of a torch.optim optimizer that say how its update runs, not what it computes. They
# belong to the engine that built the optimizer, not to the checkpoint: torch's load_state_dict
# restores the saved ones (a reference or CPU run's capturable=False and fused=None onto the fast
# engine's fused, capturable Adam, which CUDA graphs then fail to capture).
RUN_OPTIONS = ("fused", "capturable", "foreach", "differentiable")


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping ``opt``'s own ``RUN_OPTIONS`` and putting each
    ``step`` where ``opt`` keeps it: on its parameter's device (float32) when fused or capturable,
    on the CPU otherwise, as torch's optimizers create it. An optimizer whose load keeps these
    itself (RMSpropClip: its groups have no such options) is loaded as it is."""
    kept = [{k: group[k] for k in RUN_OPTIONS if k in group} for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, options in zip(opt.param_groups, kept):
        group.update(options)
        if "fused" not in options and "capturable" not in options:
            continue
        on_device = bool(options.get("fused") or options.get("capturable"))
        for p in group["params"]:
            p_state = opt.state.get(p, {})
            step = p_state.get("step")
            if isinstance(step, torch.Tensor):
                p_state["step"] = (step.to(p.device, torch.float32) if on_device
                                   else step.to("cpu"))


class Engine:
    """The phases over an engine's networks, optimizers and source of real batches.

    ``iteration(n_critic)`` runs them eagerly: n_critic critic steps, then one generator step,
    adding the detached losses into ``sums`` on the device.
    """

    name = "engine"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, source: Iterator[torch.Tensor],
                 device: torch.device, step_cfg: StepConfig, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, world: World = SINGLE,
                 share: Optional[BatchShare] = None):
        self.G, self.D, self.source, self.device = G, D, source, device
        self.world = world
        # this rank's images per step: its share of the global batch, as its source draws them
        share = share or BatchShare(cfg.batch_size, world.rank, world.world_size)
        self.batch_size, self.nz = share.local, cfg.nz
        self.step_cfg, self.opt_g, self.opt_d = step_cfg, opt_g, opt_d
        self.loss = LOSSES[cfg.loss]
        self.sums = torch.zeros(len(self.loss.sums), device=device)
        # the modules each phase calls: the plain ones here; the reference engine puts the
        # network being trained in DistributedDataParallel
        self.critic_nets: tuple[nn.Module, nn.Module] = (G, D)
        self.generator_nets: tuple[nn.Module, nn.Module] = (G, D)

    def _real(self) -> torch.Tensor:
        return next(self.source)

    def noise(self) -> torch.Tensor:
        """This rank's z for one step, drawn on the device."""
        return torch.randn(self.batch_size, self.nz, device=self.device)

    def critic(self) -> None:
        real = self._real()  # before z: a device sampler draws from the same RNG
        z = self.noise()
        c = self.loss.critic_step(*self.critic_nets, self.opt_d, real, z, self.step_cfg)
        # one foreach add into the sums' elements (``+=`` on a slice of a stack: three kernels)
        torch._foreach_add_(list(self.sums[:3].unbind()), [c["loss_d"], c["d_real"], c["d_fake"]])
        if self.loss.extra:
            torch._foreach_add_(list(self.sums[4:].unbind()), [c[k] for k in self.loss.extra])

    def generator(self) -> None:
        z = self.noise()
        g = self.loss.generator_step(*self.generator_nets, self.opt_g, z, self.step_cfg)
        self.sums[3].add_(g["loss_g"])

    def parameter_sets(self) -> dict[str, list[torch.Tensor]]:
        """Each network's parameters, for the cross-rank check (fastwgan.distributed.check_in_sync)."""
        return {"generator": list(self.G.parameters()), "critic": list(self.D.parameters())}

    def iteration(self, n_critic: int) -> None:
        for _ in range(n_critic):
            self.critic()
        self.generator()

    def load_optimizer_states(self, opt_g: dict, opt_d: dict) -> None:
        """Both optimizers' states (a checkpoint's ``opt_g``, ``opt_d``, from any engine and
        device), with the options this engine built its optimizers with (``load_optimizer_state``):
        a resumed run trains as a fresh one, captured where a fresh one would be."""
        load_optimizer_state(self.opt_g, opt_g)
        load_optimizer_state(self.opt_d, opt_d)

    def clip_critic_at_build(self, cfg: Config) -> None:
        """Clip the critic into [-clip, clip] once, before its first gradient.

        Algorithm 1 clips after each critic step; the paper's code clamps before each step, so its
        first gradient is taken at clipped weights. Clipping once here as well gives the paper
        code's critic sequence from fresh weights (the generator step then sees the clipped
        critic, where the paper's code lets it see one unclipped step). A resumed critic is
        already inside the box: a no-op.
        """
        if self.loss.clips:
            clip_weights_(self.D.parameters(), cfg.clip)

    @property
    def data_position(self) -> int:
        """Batches drawn from the source (the resume point of an epoch-ordered stream)."""
        return getattr(self.source, "position", 0)


def _no_forward_buffer_sync(net: nn.Module, world: World) -> dict:
    """DDP's option for buffers synced once, when it is built, and never at a forward: newer
    torch has ``forward_sync_buffers`` (and deprecates ``broadcast_buffers``, which with False
    skips the first sync too: then rank 0's buffers are broadcast here)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    broadcast_(list(net.buffers()), world)
    return {"broadcast_buffers": False}


class ReferenceEngine(Engine):
    """torch.optim optimizers, the nn modules, eager phases: the specification.

    Several processes: torch's DistributedDataParallel around G and D (it broadcasts rank 0's
    weights and buffers when it is built, and averages the gradients during backward). Each phase
    calls the network it trains through its wrapper and the other one directly:

    * the critic step calls DDP(D) twice (real, then fake) before one backward. That is allowed
      without ``find_unused_parameters`` or ``static_graph``: every parameter is used, and a leaf's
      gradient is accumulated once per backward, so each bucket is reduced once. G runs under
      no_grad there, with no gradient to reduce.
    * the generator step backpropagates through D with D's parameters frozen: D's module is
      called directly, so the step reduces G's gradients only and DDP(D) keeps no state of it.
      (Through DDP(D) it also works on torch 2.13: no gradient hook fires, so no reduction is
      started or awaited; tests/test_distributed.py checks both give the same weights.)

    Buffers are synced from rank 0 once, when DDP is built, not at every forward: each rank then
    keeps its own BatchNorm running statistics (rank 0's are the ones saved and used for
    samples), which saves a broadcast per forward; with sync-bn they stay the same on every rank.
    ``sync_bn``: torch's SyncBatchNorm on CUDA; on a CPU, where SyncBatchNorm refuses CPU
    tensors (torch 2.13), the blocks' plain-PyTorch sync path (fastwgan.models.set_sync_bn), which
    computes the same statistics.
    """

    name = "reference"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, batches: Iterator[torch.Tensor],
                 device: torch.device, amp_dtype: Optional[torch.dtype], world: World = SINGLE,
                 sync_bn: bool = False, share: Optional[BatchShare] = None):
        loss = LOSSES[cfg.loss]
        opt_g, opt_d = self.make_optimizers(cfg, G, D, world)
        step_cfg = StepConfig(cfg.clip if loss.clips else None, amp_dtype, gp_weight=cfg.gp_weight)
        super().__init__(cfg, G, D, batches, device, step_cfg, opt_g, opt_d, world, share)
        self.clip_critic_at_build(cfg)
        self.sync_bn = sync_bn and world.distributed
        if world.distributed:
            G_ddp, D_ddp = (self._wrap(net, device) for net in (G, D))
            self.critic_nets = (G, D_ddp)
            self.generator_nets = (G_ddp, D)

    def make_optimizers(self, cfg: Config, G: nn.Module, D: nn.Module, world: World):
        """The two optimizers (a hook: a sweep gives each member its own)."""
        return make_optimizers(G, D, LOSSES[cfg.loss].optimizer, cfg.learning_rate, cfg.adam_betas)

    def _wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.sync_bn and device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # in place below the root
        elif self.sync_bn:
            import torch.distributed as dist

            from fastwgan.models import set_sync_bn

            set_sync_bn(net, dist.group.WORLD)
        ids = [device.index] if device.type == "cuda" else None
        return DDP(net, device_ids=ids, **_no_forward_buffer_sync(net, self.world))

    def describe(self) -> str:
        if not self.world.distributed:
            return "reference (plain PyTorch, eager)"
        bn = ", sync BatchNorm" if self.sync_bn else ""
        return f"reference (plain PyTorch, eager, DistributedDataParallel{bn})"
