"""RMSProp with WGAN weight clipping, one fused launch per parameter group.

``RMSpropClip`` is the critic's optimizer (``clip=0.01``) and the generator's (``clip=None``).
A step is exactly ``torch.optim.RMSprop(lr, alpha, eps)`` (momentum 0, not centered, no weight
decay), followed with ``clip=c`` by ``p.clamp_(-c, c)`` on every parameter: Algorithm 1 of the
WGAN paper (Arjovsky et al. 2017), with torch's RMSprop semantics (see FACTS.md).

Flat buffers
    At construction the parameters of each group move into one contiguous fp32 buffer, and each
    parameter's ``.data`` becomes a view of it (same shape and strides), so module code does not
    change. Each ``.grad`` becomes a view of one flat gradient buffer, so backward accumulates
    straight into it, and ``square_avg`` lives in a third. One launch of
    ``fastwgan.kernels.rmsprop_clip`` then updates the whole group (20 bytes per parameter).
    Each parameter starts on a 64-element (256-byte) boundary; the padding stays zero.

    Consequences:

    * Parameters must not be replaced afterwards: ``p.data = ...``, ``module.to(device or
      dtype)``, ``module.load_state_dict(..., assign=True)`` or swapping a Parameter for a new
      one detaches it from the buffer. ``step()`` raises if a parameter's storage moved; a new
      Parameter object in the module goes unnoticed, so build the optimizer after the model is
      on its device and in its final dtype.
    * ``module.load_state_dict(sd)`` (the default, ``assign=False``) copies into the views with
      ``copy_`` and keeps working, before or after the optimizer was built.
    * ``zero_grad()`` zeroes the flat gradient buffer in place and keeps the views;
      ``set_to_none`` is accepted for compatibility and ignored. ``module.zero_grad()`` (which
      sets grads to None) and double backward (``create_graph=True``, which replaces ``.grad``)
      still give the right step, but ``step()`` must then copy each gradient back into the buffer
      and warns once. A parameter whose ``.grad`` is None at ``step()`` is stepped with a zero
      gradient (its ``square_avg`` decays), where torch.optim would skip it.

Capture and the learning rate
    With ``impl="triton"`` a step makes no host synchronisation and allocates nothing, so it can
    be captured in a CUDA graph after one eager step (which compiles the kernel). The kernel
    reads lr through a pointer, from a one-element fp32 device tensor per group
    (``lr_tensor(i)``), and adds one to a device step counter. ``param_groups[i]['lr']`` stays a
    python float, as in torch, so lr schedulers work unchanged; a change of it is written into
    the device tensor (``fill_``, one small launch, no sync) by the next eager ``step()``, or by
    ``sync_lr()``. A graph replay runs no Python: after changing lr, call ``sync_lr()`` (or
    write into ``lr_tensor(i)``) before the next replay, and the captured step reads the new
    value without recapture. ``step()`` skips the write while a capture is under way, so a
    captured step never overwrites lr. ``alpha``, ``eps`` and ``clip`` are launch arguments:
    a captured step keeps the values it was captured with.

state_dict
    ``state_dict()`` and ``load_state_dict()`` use torch.optim.RMSprop's format: per parameter
    ``square_avg`` (shape of the parameter) and ``step`` (a float32 CPU scalar), and groups with
    torch's keys (momentum 0, centered False, ...) plus ``clip``. A checkpoint moves between this
    optimizer and torch's, both ways: torch ignores ``clip``; loading torch's keeps this
    optimizer's ``clip`` and rejects momentum, centered, weight decay or maximize, which this step
    does not implement. All parameters of a group share one step count; loading per-parameter
    counts that differ takes the largest (RMSprop's update never reads it).

Several processes
    ``grad_reduce`` (optional) is called with each group's flat gradient buffer after backward
    and before the update, e.g. ``lambda g: all_reduce_mean_(g, world)``
    (fastwgan.distributed): the gradients of a data-parallel step are averaged with one
    collective per group, and every rank then applies the same update. It must act in place
    and, to be captured with the step, make no host synchronisation.

impl
    "triton" runs the kernel: compiled on CUDA tensors, under the Triton interpreter on CPU
    tensors when ``TRITON_INTERPRET=1``. Where it cannot run (no triton, CPU without the
    interpreter) the group falls back to ``rmsprop_clip_ref`` with one warning at construction.
    "ref" always runs the twin: torch's own calls, which allocate a temporary per step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from fastwgan.kernels.rmsprop_clip import _launch, resolve_impl, rmsprop_clip_ref

# Parameters start at multiples of this many elements (256 bytes): the alignment cuDNN, cuBLAS
# and vectorised loads like, as for tensors from the caching allocator (512 bytes). It also
# makes every flat buffer's length a multiple of 16, which Triton specialises on: the kernel's
# mask then allows 16-byte loads and stores (checked in the PTX for sm_90).
ALIGN = 64

# torch.optim.RMSprop's group options. Written into state_dict() so that torch's optimizer can
# load it (its step() reads weight_decay, which its __setstate__ does not default); removed on
# load, after checking that the values are the ones this step implements.
_TORCH_GROUP_DEFAULTS = {
    "momentum": 0,
    "centered": False,
    "weight_decay": 0,
    "capturable": False,
    "foreach": None,
    "maximize": False,
    "differentiable": False,
}
_TORCH_MUST_MATCH = ("momentum", "centered", "weight_decay", "maximize")


class FlatBuffers(NamedTuple):
    """One group's buffers: all 1-D fp32 on the group's device except the two scalars."""
    param: Tensor        # (N,) every parameter's .data is a view of it
    grad: Tensor         # (N,) every parameter's .grad is a view of it
    square_avg: Tensor   # (N,) torch's state['square_avg'], per parameter a view
    step: Tensor         # () float32, torch's state['step'], shared by the group
    lr: Tensor           # () float32, read by the kernel


@dataclass
class _Group:
    params: list[Tensor]
    buffers: FlatBuffers
    grad_views: list[Tensor]
    square_avg_views: list[Tensor]
    data_ptrs: list[int]
    impl: str
    lr_seen: float | None = None  # the python lr last written into buffers.lr


def _views(buf: Tensor, like: list[Tensor], offsets: list[int]) -> list[Tensor]:
    # Same shape and strides as the parameter (channels_last stays channels_last): the strides
    # empty_like would pick with preserve_format, which are dense.
    return [buf.as_strided(p.shape, torch.empty_like(p, device="meta").stride(), off)
            for p, off in zip(like, offsets)]


class RMSpropClip(torch.optim.Optimizer):
    """torch.optim.RMSprop (momentum 0) plus optional clipping to [-clip, clip], over flat buffers.

    Args:
        params: parameters or parameter groups, as for any torch optimizer; fp32, one device
            per group.
        lr: learning rate (the paper: 5e-5).
        alpha: smoothing constant of the squared-gradient average (torch's default 0.99).
        eps: added to the root mean square, outside the square root (torch's).
        clip: clamp every parameter to [-clip, clip] after the step (the paper's critic: 0.01);
            None for no clipping (the generator).
        impl: "triton" (one fused launch) or "ref" (the plain-PyTorch twin).
        grad_reduce: called in place on each group's flat gradient buffer before the update
            (the all-reduce of several processes); None for one process.

    See the module docstring for the flat buffers, capture, lr changes and the state_dict format.
    """

    def __init__(self, params, lr: float = 5e-5, alpha: float = 0.99, eps: float = 1e-8,
                 clip: float | None = None, impl: str = "triton",
                 grad_reduce: Optional[Callable[[Tensor], Any]] = None):
        if impl not in ("ref", "triton"):
            raise ValueError(f"impl must be 'ref' or 'triton', got {impl!r}")
        self.impl = impl
        self.grad_reduce = grad_reduce
        self._groups: list[_Group] = []
        self._warned_grad_copy = False
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "clip": clip})

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def _check_options(group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("a tensor lr must have one element")
        elif not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= group["alpha"] <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {group['alpha']}")
        if not group["eps"] >= 0.0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")
        if group["clip"] is not None and not group["clip"] > 0.0:
            raise ValueError(f"clip must be > 0 or None, got {group['clip']}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, then moves the group's parameters, gradients and state into flat buffers."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_options(group)
            self._groups.append(self._flatten(group["params"]))
        except Exception:
            self.param_groups.pop()
            raise
        self._sync_lr(group, self._groups[-1])

    def _flatten(self, params: list[Tensor]) -> _Group:
        if not params:
            raise ValueError("a parameter group needs at least one parameter")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears twice in the group")
        device = params[0].device
        for p in params:
            if p.dtype != torch.float32:
                raise TypeError(f"RMSpropClip keeps parameters in one fp32 buffer; got {p.dtype} "
                                "(train in lower precision with autocast instead)")
            if p.device != device:
                raise ValueError(f"one group's parameters must share a device: {p.device} and {device}")
            if p.is_sparse:
                raise ValueError("sparse parameters are not supported")
        offsets, n = [], 0
        for p in params:
            offsets.append(n)
            n += -(-p.numel() // ALIGN) * ALIGN
        param_buf = torch.zeros(n, dtype=torch.float32, device=device)
        grad_buf = torch.zeros_like(param_buf)
        square_avg_buf = torch.zeros_like(param_buf)
        param_views = _views(param_buf, params, offsets)
        grad_views = _views(grad_buf, params, offsets)
        square_avg_views = _views(square_avg_buf, params, offsets)
        step = torch.zeros((), dtype=torch.float32, device=device)
        with torch.no_grad():
            for p, pv, gv, sv in zip(params, param_views, grad_views, square_avg_views):
                pv.copy_(p)
                if p.grad is not None:
                    gv.copy_(p.grad)
                p.data = pv
                p.grad = gv
                self.state[p] = {"step": step, "square_avg": sv}
        buffers = FlatBuffers(param_buf, grad_buf, square_avg_buf, step,
                              torch.zeros((), dtype=torch.float32, device=device))
        return _Group(list(params), buffers, grad_views, square_avg_views,
                      # the warning points at the RMSpropClip(...) call: _flatten <
                      # add_param_group < Optimizer.__init__ < RMSpropClip.__init__ < caller
                      [p.data_ptr() for p in params], resolve_impl(self.impl, device, stacklevel=5))

    # --- public helpers -----------------------------------------------------------------------

    def buffers(self, group_index: int = 0) -> FlatBuffers:
        """The flat buffers of a group (views of them are the parameters, grads and state)."""
        return self._groups[group_index].buffers

    def lr_tensor(self, group_index: int = 0) -> Tensor:
        """The one-element fp32 device tensor the kernel reads lr from."""
        return self._groups[group_index].buffers.lr

    def impl_of(self, group_index: int = 0) -> str:
        """The implementation a group runs: "triton", or "ref" (asked for, or the fallback)."""
        return self._groups[group_index].impl

    def sync_lr(self) -> None:
        """Write every group's ``lr`` into its device tensor now (for CUDA graph replays)."""
        for group, g in zip(self.param_groups, self._groups):
            g.lr_seen = None
            self._sync_lr(group, g)

    # --- the step -----------------------------------------------------------------------------

    def _sync_lr(self, group: dict[str, Any], g: _Group) -> None:
        lr, lr_t = group["lr"], g.buffers.lr
        if isinstance(lr, Tensor):
            # device to device: no sync, and a captured step re-reads the user's tensor
            if lr is not lr_t:
                lr_t.copy_(lr.reshape(()))
            return
        if lr == g.lr_seen:
            return
        if lr_t.is_cuda and torch.cuda.is_current_stream_capturing():
            return  # a captured fill would reset lr on every replay; see the module docstring
        lr_t.fill_(lr)
        g.lr_seen = lr

    def _check_views(self, g: _Group) -> None:
        """Host-side identity checks only: no device work unless a gradient must be copied back."""
        for i, p in enumerate(g.params):
            if p.data_ptr() != g.data_ptrs[i]:
                raise RuntimeError(
                    "a parameter no longer views RMSpropClip's flat buffer (p.data was replaced, "
                    "e.g. by module.to() or load_state_dict(assign=True)); build the optimizer "
                    "after the model is on its device and in its dtype")
            grad, view = p.grad, g.grad_views[i]
            if grad is view:
                continue
            if not self._warned_grad_copy:
                warnings.warn(
                    "RMSpropClip: a .grad is no longer a view of the flat gradient buffer "
                    "(module.zero_grad() sets grads to None, create_graph=True replaces them); "
                    "copying it back each step costs one copy per parameter. Use "
                    "optimizer.zero_grad(), which zeroes in place.",
                    stacklevel=5)  # < step < no_grad < torch's step hooks < the caller
                self._warned_grad_copy = True
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            p.grad = view

    @torch.no_grad()
    def step(self, closure=None):
        """One RMSProp step (+ clip) per group: one launch, no host sync, no allocation."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, g in zip(self.param_groups, self._groups):
            self._check_views(g)
            self._sync_lr(group, g)  # the ref path reads the float, but keep lr_tensor() current
            b = g.buffers
            if self.grad_reduce is not None:
                self.grad_reduce(b.grad)
            if g.impl == "triton":
                _launch(b.param, b.grad, b.square_avg, b.lr, group["alpha"], group["eps"],
                        group["clip"], b.step)
            else:
                rmsprop_clip_ref(b.param, b.grad, b.square_avg, group["lr"], group["alpha"],
                                 group["eps"], group["clip"], b.step)
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every flat gradient buffer in place (one launch per group) and re-attach the
        gradient views; ``set_to_none`` is ignored, since None would detach them."""
        for g in self._groups:
            g.buffers.grad.zero_()
            for p, view in zip(g.params, g.grad_views):
                if p.grad is not view:
                    p.grad = view

    # --- state_dict in torch.optim.RMSprop's format -------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.RMSprop's format; ``step`` per parameter as a float32 CPU scalar (one
        device-to-host copy per group: checkpoints only, never in the hot loop)."""
        sd = super().state_dict()
        for packed, g in zip(sd["param_groups"], self._groups):
            for key, value in _TORCH_GROUP_DEFAULTS.items():
                packed.setdefault(key, value)
            step = g.buffers.step.detach().to("cpu", copy=True)  # host sync
            for index in packed["params"]:
                # new dicts: super() hands out this optimizer's own per-parameter dicts
                sd["state"][index] = {"step": step.clone(), "square_avg": sd["state"][index]["square_avg"]}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this optimizer's or torch.optim.RMSprop's state_dict, copying into the flat buffers."""
        for saved in state_dict["param_groups"]:
            for key in _TORCH_MUST_MATCH:
                if saved.get(key, _TORCH_GROUP_DEFAULTS[key]) != _TORCH_GROUP_DEFAULTS[key]:
                    raise ValueError(f"RMSpropClip implements {key}={_TORCH_GROUP_DEFAULTS[key]!r} "
                                     f"only; the state_dict has {key}={saved[key]!r}")
        clips = [group["clip"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for group, g, clip in zip(self.param_groups, self._groups, clips):
                for key in _TORCH_GROUP_DEFAULTS:
                    group.pop(key, None)
                group.setdefault("clip", clip)
                self._check_options(group)
                steps = []
                for p, view in zip(g.params, g.square_avg_views):
                    loaded = self.state.get(p, {})
                    if "square_avg" in loaded:
                        view.copy_(loaded["square_avg"])
                    else:  # torch's optimizer had not stepped this parameter: fresh state
                        view.zero_()
                    if "step" in loaded:
                        steps.append(float(loaded["step"]))  # host sync: checkpoints only
                    self.state[p] = {"step": g.buffers.step, "square_avg": view}
                g.buffers.step.fill_(max(steps, default=0.0))
                g.lr_seen = None
                self._sync_lr(group, g)
