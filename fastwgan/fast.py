"""The fast engine: fused kernels, device-side data and noise, the n_critic loop in CUDA graphs.

The phases are the reference's (fastwgan.steps); what changes is where they run:

* the blocks use the fused BatchNorm + activation kernel (``impl="triton"``) in channels_last;
* a loss trained with RMSprop (wgan) gets ``RMSpropClip``, the critic's with the clipping inside
  its update, the generator's without; a loss trained with Adam (gan, wgan-gp, hinge) torch's
  fused, capturable Adam (the loss's entry, fastwgan.losses, says which);
* under autocast the convolutions' weights are cast by fastwgan.weight_cast, whose backward adds
  each bf16 weight gradient straight into the flat gradient buffer (one kernel, not a cast back
  and an add);
* the critic sees real and fake as one batch of 2N, each half normalised by its own BatchNorm
  statistics (``StepConfig.one_batch``, fastwgan.models.row_groups): the paper's two calls, in
  half the launches, weight casts and gradient sums;
* a loss whose critic step differentiates through D's input gradient (wgan-gp's penalty, eps
  drawn on the device) is captured with its double backward. Its critic has no BatchNorm, so no
  fused bn_act under it (bn_act's backward is once_differentiable); a critic block that had one
  would stay on its plain-PyTorch form;
* real batches come from a ``ResidentSampler`` (the decoded dataset on the device, indices drawn
  on the device) and z is drawn on the device: no host work per step;
* on CUDA, after one eager iteration on a side stream (which compiles every Triton kernel and
  picks the cuDNN algorithms), up to three graphs are captured: a whole iteration (n_critic
  critic steps and the generator step), one critic step and one generator step. An ordinary
  iteration is one replay; the warm-up phases (``--n-critic-warmup``) replay the critic graph and
  then the generator graph, without recapture (a loss without phases captures only the
  iteration; a host-fed stream replays the step graphs, its batch copied in before each);
* losses accumulate in a device buffer read at log intervals only.

On a CPU the same engine runs eagerly with the plain-PyTorch twins, so the loop code is the one
the tests exercise. ``--no-graphs`` runs it eagerly on CUDA too.

Several processes (no DDP wrapper): rank 0's weights and buffers are broadcast when the engine is
built; each optimizer averages its gradients over the ranks with one all-reduce just before its
update: RMSpropClip on its flat gradient buffer (``grad_reduce``), so a critic step is one
collective; torch's Adam on a flat copy of the gradients, from a step pre-hook
(also one collective, plus a copy in and out). The collectives are plain calls on device tensors:
on CUDA they are captured in the graphs with the steps (NCCL supports capture), and since every
rank runs the same warm-up and captures at the same iteration, the ranks stay in step. sync-bn:
the blocks' fused BatchNorm all-gathers its per-channel moments in the forward and all-reduces
its two per-channel sums in the backward (fastwgan.kernels.bn_act).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from fastwgan.config import Config
from fastwgan.data.share import BatchShare
from fastwgan.distributed import (SINGLE, World, all_reduce_grads_mean_, all_reduce_mean_,
                                  broadcast_module_)
from fastwgan.engine import Engine
from fastwgan.models import set_impl, set_sync_bn
from fastwgan.losses import LOSSES
from fastwgan.steps import StepConfig
from fastwgan.weight_cast import set_cast_into_grad

WARMUP_ITERATIONS = 1  # eager iterations before capture (the first one is a 100-step phase)


def kernels_impl(device: torch.device) -> str:
    """Compiled Triton kernels on CUDA; the plain-PyTorch twins elsewhere."""
    return "triton" if device.type == "cuda" else "ref"


def make_fast_optimizers(cfg: Config, G: nn.Module, D: nn.Module, impl: str,
                         world: World = SINGLE):
    """The fast optimizers; with several ranks each averages its gradients in one all-reduce."""
    reduce = (lambda flat: all_reduce_mean_(flat, world)) if world.distributed else None
    loss = LOSSES[cfg.loss]
    if loss.optimizer == "rmsprop":
        from fastwgan.optim import RMSpropClip

        return (RMSpropClip(G.parameters(), lr=cfg.learning_rate, clip=None, impl=impl,
                            grad_reduce=reduce),
                RMSpropClip(D.parameters(), lr=cfg.learning_rate, clip=cfg.clip if loss.clips else None,
                            impl=impl, grad_reduce=reduce))
    cuda = next(G.parameters()).is_cuda
    kw = dict(lr=cfg.learning_rate, betas=cfg.adam_betas, fused=cuda, capturable=cuda)
    opts = torch.optim.Adam(G.parameters(), **kw), torch.optim.Adam(D.parameters(), **kw)
    if world.distributed:
        for opt in opts:
            params = [p for group in opt.param_groups for p in group["params"]]
            opt.register_step_pre_hook(lambda _opt, _args, _kw, params=params:
                                       all_reduce_grads_mean_(params, world))
    return opts


def keep_twice_differentiable(D: nn.Module, loss: str) -> list[int]:
    """For a loss that differentiates through D's input gradient (wgan-gp), the critic blocks
    with BatchNorm go back to their plain-PyTorch form: the fused bn_act's backward is
    once_differentiable. Returns their indices (none for the critics wgan-gp builds: no BatchNorm).
    """
    if not LOSSES[loss].double_backward:
        return []
    plain = [i for i, b in enumerate(D.blocks) if b.bn is not None]
    for i in plain:
        set_impl(D.blocks[i], "ref")
    return plain


# Under torch's default "global" capture mode a CUDA call from *any* thread during the capture
# (the DataLoader's pin-memory thread allocating pinned memory, DALI's prefetching workers)
# invalidates the capture and raises in that thread. "thread_local" restricts only this thread,
# which runs nothing but the captured steps.
CAPTURE_ERROR_MODE = "thread_local"


def capture_graph(fn, pool=None, generators=()) -> torch.cuda.CUDAGraph:
    """``fn``'s kernels recorded in a CUDA graph (nothing runs until ``replay()``), its memory from
    ``pool`` (a ``torch.cuda.graph_pool_handle()``; None: a private pool). Each generator other
    than the default one that ``fn`` draws from is registered first, so that every replay
    advances it as eager code would."""
    g = torch.cuda.CUDAGraph()
    for gen in generators:
        g.register_generator_state(gen)
    with torch.cuda.graph(g, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
        fn()
    return g


def graph_pool(device: torch.device):
    """A memory pool for CUDA graphs to share (None off CUDA)."""
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


def graph_generators(sampler) -> list:
    """The generators a captured step draws from besides the default one: a seeded
    ``ResidentSampler``'s own. A CUDA graph replays only the offsets of the generators registered
    with it (``CUDAGraph.register_generator_state``; torch 2.11 has it); where torch has no such
    call, a seeded sampler cannot be captured: ValueError, with what to do instead."""
    gens = getattr(sampler, "generators", None)  # a sweep's members' own streams
    if gens is not None:
        return list(gens)
    gen = getattr(sampler, "generator", None)
    if gen is None:
        return []
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        raise ValueError(
            f"a ResidentSampler with a seed draws from its own generator, which CUDA graphs can "
            f"replay only through CUDAGraph.register_generator_state, missing from torch "
            f"{torch.__version__}: create the sampler without a seed (the default generator, "
            f"seeded by torch.manual_seed), or pass graphs=False (--no-graphs)")
    return [gen]


def on_side_stream(fn, device: torch.device) -> None:
    """Run ``fn`` eagerly on a side stream, as torch.cuda.graphs asks of the warm-up."""
    if device.type != "cuda":
        fn()
        return
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


class FastEngine(Engine):
    """Runs generator iterations from captured CUDA graphs (or eagerly on a CPU)."""

    name = "fast"

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, sampler, device: torch.device,
                 amp_dtype: Optional[torch.dtype], graphs: bool = True, impl: Optional[str] = None,
                 world: World = SINGLE, sync_bn: bool = False, share: Optional[BatchShare] = None):
        self.cfg = cfg
        self.impl = impl or kernels_impl(device)
        self.sync_bn = sync_bn and world.distributed
        set_impl(G, self.impl)
        set_impl(D, self.impl)
        if self.sync_bn:
            import torch.distributed as dist

            set_sync_bn(G, dist.group.WORLD)
            set_sync_bn(D, dist.group.WORLD)
        self.plain_critic_blocks = keep_twice_differentiable(D, cfg.loss)
        if not LOSSES[cfg.loss].double_backward:  # bf16 weight gradients added into .grad
            set_cast_into_grad(G)
            set_cast_into_grad(D)
        broadcast_module_(G, world)  # rank 0's initial weights and running statistics
        broadcast_module_(D, world)
        if device.type == "cuda":
            # before the optimizers: they lay the parameters out in flat buffers, keeping strides
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        opt_g, opt_d = self.make_optimizers(cfg, G, D, world)
        # clipping happens inside RMSpropClip's update; the GAN baseline does not clip
        # With the kernels, real and fake go through the critic as one batch (per-half BatchNorm
        # statistics): half the critic's launches. The twins keep two calls, the reference's
        # arithmetic (one batch changes the convolutions' rounding, which RMSprop's first steps
        # amplify where a gradient is near zero); sync-bn keeps two calls too.
        step_cfg = StepConfig(None, amp_dtype, autocast_cache=False, gp_weight=cfg.gp_weight,
                              one_batch=self.impl == "triton" and not self.sync_bn)
        super().__init__(cfg, G, D, sampler, device, step_cfg, opt_g, opt_d, world, share)
        self.clip_critic_at_build(cfg)  # in place: the optimizer's flat buffers hold the weights
        self.use_graphs = graphs and device.type == "cuda"
        # A sampler that draws on the device (ResidentSampler: ``draw``) is captured with the step;
        # a stream of batches from the host is copied into this static buffer before each replay.
        self.device_sampler = hasattr(sampler, "draw")
        self.static_real: Optional[torch.Tensor] = None
        self.pending = False
        self.eager_iterations = 0
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}  # [critic, generator,] [iteration]
        self.capture_error: Optional[str] = None
        if self.use_graphs:
            graph_generators(sampler)  # a seeded sampler that cannot be captured: say so now

    def make_optimizers(self, cfg: Config, G: nn.Module, D: nn.Module, world: World):
        """The two optimizers (a hook: a sweep gives each member its own)."""
        return make_fast_optimizers(cfg, G, D, self.impl, world)

    def _real(self) -> torch.Tensor:
        if self.static_real is not None:  # graphs fed from a host-side stream
            return self.static_real
        return next(self.source)

    # --- capture ---
    def _capture(self) -> None:
        parts = {}
        # the step graphs: for a host stream (a batch copied in before each critic step), and for
        # the warm-up phases of another number of critic steps (none for a loss without phases)
        if not self.device_sampler or self.cfg.warmup_phases:
            parts.update(critic=self.critic, generator=self.generator)
        if self.device_sampler:  # an ordinary iteration, as one graph
            n = self.cfg.steady_n_critic
            parts["iteration"] = lambda: Engine.iteration(self, n)
        else:
            first = next(self.source)
            self.static_real = torch.empty_like(first)
            self.static_real.copy_(first)
            self.pending = True  # ``first`` is the next critic step's batch
        # One memory pool for the graphs. What a step carries over to the next one (weights,
        # RMSpropClip's flat gradients, optimizer state, the sampler's buffers, the loss sums) was
        # allocated before the capture, outside the pool. A graph's own allocations are written
        # before they are read within each replay (temporaries; Adam's gradients, set to None and
        # made again by every backward): no graph reads what another one left in the pool. So a
        # later capture may reuse an earlier graph's memory, and the graphs may replay in any order
        # (the warm-up phases replay critic and generator, other iterations the iteration graph),
        # one after another on one stream, never concurrently.
        pool = graph_pool(self.device)
        generators = graph_generators(self.source)
        for name, fn in parts.items():
            self.graphs[name] = capture_graph(fn, pool=pool, generators=generators)

    def _try_capture(self) -> None:
        try:
            self._capture()
        except Exception as e:  # capture runs nothing: a failed one leaves the weights untouched
            self.graphs.clear()
            self.use_graphs = False
            self.static_real, self.pending = None, False  # (a stream then skips one batch)
            self.capture_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture failed ({self.capture_error}); running eagerly")

    def iteration(self, n_critic: int) -> None:
        if not self.use_graphs:
            super().iteration(n_critic)
            return
        if self.eager_iterations < WARMUP_ITERATIONS:
            # the warm-up iteration trains for real
            on_side_stream(lambda: Engine.iteration(self, n_critic), self.device)
            self.eager_iterations += 1
            if self.eager_iterations == WARMUP_ITERATIONS:
                self._try_capture()
            return
        if self.device_sampler and n_critic == self.cfg.steady_n_critic:
            self.graphs["iteration"].replay()
            return
        for _ in range(n_critic):
            if not self.device_sampler:
                if not self.pending:
                    self.static_real.copy_(next(self.source))
                self.pending = False
            self.graphs["critic"].replay()
        self.graphs["generator"].replay()

    def parameter_sets(self) -> dict[str, list[torch.Tensor]]:
        """The flat parameter buffers (RMSpropClip): one tensor per network to checksum."""
        if self.loss.optimizer != "rmsprop":
            return super().parameter_sets()
        return {"generator": [self.opt_g.buffers().param], "critic": [self.opt_d.buffers().param]}

    @property
    def data_position(self) -> int:
        # a stream counts its batches (one drawn ahead for the static buffer is not yet used);
        # the device sampler draws i.i.d. from the device RNG, saved with the checkpoint
        return super().data_position - int(self.pending)

    def describe(self) -> str:
        kernels = "Triton kernels" if self.impl == "triton" else "plain-PyTorch twins"
        mode = "CUDA graphs" if self.use_graphs else "eager"
        if self.world.distributed:
            mode += ", one all-reduce per step" + (", sync BatchNorm" if self.sync_bn else "")
        return f"fast ({kernels}, {mode}{self._describe_penalty()})"

    def _describe_penalty(self) -> str:
        if not self.loss.double_backward:
            return ""
        if self.plain_critic_blocks:
            names = ", ".join(f"blocks.{i}" for i in self.plain_critic_blocks)
            return (f"; gradient penalty: critic {names} on plain PyTorch (bn_act has no double "
                    "backward)")
        return "; gradient penalty: critic without bn_act, double backward through torch ops"
