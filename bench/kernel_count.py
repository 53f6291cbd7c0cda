"""The kernels a piece of PyTorch code would launch on CUDA, counted on any device.

``KernelLedger`` is a dispatch mode that records every aten op, maps it to the CUDA kernels it
launches (``cuda_kernels``), and adds the bytes it reads and writes and its FLOPs (torch's own
``flop_registry``, so the total equals ``torch.utils.flop_counter.FlopCounterMode``'s). Fused
Triton ops tell it their launches through ``fastwgan.kernels._launches``: on a CPU their
plain-PyTorch twins then count as the Triton kernels they stand for, not as their own aten ops.

Each op is put in one kind (``KINDS``): by the phase the ledger was told it is in (``phase``:
the batch sampler and z are "data", an optimizer's step is "optimizer"), else by the op.

The mapping is a model, checked against the profiler's count the first time a GPU runs
bench/ledger.py: a convolution (forward) is one kernel, its backward one per gradient it returns;
cuDNN's BatchNorm two kernels each way in training (statistics, then apply; reduce, then dx), one
in eval; a foreach op one launch per 110 tensors (multi_tensor_apply's block of tensor lists,
depth 1); any other op that computes one kernel; views, allocations and host-side scalars none.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from fastwgan.kernels import _launches as launches

KINDS = ("conv", "bn_act", "optimizer", "casts", "gradient glue", "data", "bookkeeping")

# ops that launch nothing on CUDA: allocations, aliases, metadata, the profiler's markers
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
              "alias", "lift_fresh", "set_", "resize_", "is_same_size", "_local_scalar_dense",
              "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "record_stream",
              "_record_function_enter_new", "_record_function_exit"}
_CONV = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "_convolution"}
_BN_ACT = {"native_batch_norm", "native_batch_norm_backward", "cudnn_batch_norm",
           "cudnn_batch_norm_backward", "_native_batch_norm_legit",
           "_native_batch_norm_legit_no_training", "relu", "relu_", "leaky_relu", "leaky_relu_",
           "threshold_backward", "leaky_relu_backward", "tanh", "tanh_backward"}
# BatchNorm in training: a statistics (reduction) kernel, then one that reads its inputs again
_TWO_PASS = {"native_batch_norm", "cudnn_batch_norm", "_native_batch_norm_legit",
             "native_batch_norm_backward", "cudnn_batch_norm_backward"}
_CASTS = {"_to_copy", "copy_"}
_OPTIMIZER = {"clamp", "clamp_", "_foreach_clamp_min_", "_foreach_clamp_max_"}
_WRITE_ONLY = {"zero_", "fill_", "normal_", "uniform_", "random_", "_foreach_zero_"}
FOREACH_TENSORS = 110  # tensors per multi_tensor_apply launch (depth 1)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    """Bytes an op touches in ``t``: its elements, at most its storage (an expanded view)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def cuda_kernels(name: str, args, kwargs, out) -> int:
    """The kernels aten op ``name`` (no namespace, no overload) launches on CUDA."""
    if name in _NO_KERNEL:
        return 0
    if name == "convolution_backward":
        return sum(t is not None for t in out)
    if name in ("native_batch_norm", "cudnn_batch_norm", "_native_batch_norm_legit"):
        return 2 if _bn_training(name, args) else 1
    if name in ("native_batch_norm_backward", "cudnn_batch_norm_backward"):
        return 2
    if name.startswith("_foreach_"):
        longest = max((len(a) for a in args if isinstance(a, (list, tuple))), default=1)
        return max(1, math.ceil(longest / FOREACH_TENSORS))
    return 1


def _bn_training(name: str, args) -> bool:
    return bool(args[5])  # (input, weight, bias, running_mean, running_var, training, ...)


def _kind_by_op(name: str, in_backward: bool, args, out) -> str:
    if name in _CONV:
        return "conv"
    if name in _BN_ACT:
        return "bn_act"
    if name in _OPTIMIZER:
        return "optimizer"
    if in_backward:
        return "gradient glue"
    if name in _CASTS and _is_cast(args, out):
        return "casts"
    return "bookkeeping"


def _is_cast(args, out) -> bool:
    src = [t for t in _tensors(args)]
    dst = _tensors(out)
    return bool(src and dst) and src[-1].dtype != dst[0].dtype


@dataclass
class Tally:
    """Kernels, bytes and FLOPs, in all and per kind (and per op name, for the detail)."""
    kernels: int = 0
    bytes: int = 0
    flops: int = 0
    by_kind: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    by_op: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    # per op: (kernels, bytes, flops, conv dtype or None), for the modeled time
    ops: list = field(default_factory=list)

    def add(self, kind: str, op: str, kernels: int, nbytes: int, flops: int, dtype=None) -> None:
        self.kernels += kernels
        self.bytes += nbytes
        self.flops += flops
        k = self.by_kind[kind]
        k[0], k[1], k[2] = k[0] + kernels, k[1] + nbytes, k[2] + flops
        o = self.by_op[f"{kind}: {op}"]
        o[0], o[1] = o[0] + kernels, o[1] + nbytes
        self.ops.append((kernels, nbytes, flops, dtype))


class KernelLedger(TorchDispatchMode):
    """Counts what the code run under it would launch on CUDA (see the module docstring).

    ``host_tensors``: tensors that stay on the host on CUDA too (a torch optimizer's ``step``
    counters when it is neither fused nor capturable): an op on them alone launches nothing.
    """

    def __init__(self, host_tensors=()):
        super().__init__()
        self.tally = Tally()
        self._host = {id(t) for t in host_tensors}
        self._phase: list[str] = []
        self._quiet = 0

    # --- what the code under it says ---
    @contextlib.contextmanager
    def phase(self, kind: str):
        """Ops run inside are of ``kind`` (unless the op itself is a convolution or BN+act)."""
        self._phase.append(kind)
        try:
            yield
        finally:
            self._phase.pop()

    @contextlib.contextmanager
    def suppressed(self):
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def fused(self, kind: str, fused_launches) -> None:
        if self._quiet:
            return
        for launch in fused_launches:
            self.tally.add(kind, f"triton {launch.name}", 1, launch.bytes, 0)

    def __enter__(self):
        self._previous = launches.set_listener(self)
        return super().__enter__()

    def __exit__(self, *exc):
        launches.set_listener(self._previous)
        return super().__exit__(*exc)

    # --- every aten op ---
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        if self._quiet:
            self.tally.flops += flops  # (a twin's FLOPs are the kernel's: FlopCounterMode's total)
            return out
        name = func.overloadpacket.__name__
        kernels = self._kernels(func, name, args, kwargs, out)
        nbytes = self._bytes(name, args, kwargs, out) if kernels else 0
        in_backward = torch._C._current_graph_task_id() != -1
        kind = self._kind(name, in_backward, args, out)
        dtype = _tensors(args)[0].dtype if name in _CONV else None
        self.tally.add(kind, name, kernels, nbytes, flops, dtype)
        return out

    def _kernels(self, func, name, args, kwargs, out) -> int:
        if func.namespace != "aten" or func.is_view:
            return 0
        tensors = _tensors((args, kwargs))
        if all(t.dim() == 0 for t in tensors) and any(id(t) in self._host for t in tensors):
            return 0  # host-side scalars on CUDA too (a torch optimizer's step counters)
        return cuda_kernels(name, args, kwargs, out)

    def _bytes(self, name, args, kwargs, out) -> int:
        read = [] if name in _WRITE_ONLY else _tensors((args, {k: v for k, v in kwargs.items()
                                                               if k != "out"}))
        written = _tensors(out)
        total = sum(_nbytes(t) for t in read) + sum(_nbytes(t) for t in written)
        if name in _TWO_PASS and (name.endswith("backward") or _bn_training(name, args)):
            total += sum(_nbytes(t) for t in _tensors(args[:2]) if t.dim() > 1)  # read again
        return total

    def _kind(self, name, in_backward, args, out) -> str:
        by_op = _kind_by_op(name, in_backward, args, out)
        if self._phase and by_op not in ("conv", "bn_act"):
            return self._phase[-1]
        return by_op


# --- the modeled time ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GPU:
    """Datasheet peaks of a GPU (dense, no sparsity)."""
    name: str
    bf16_tflops: float
    tf32_tflops: float
    tb_per_s: float


GPUS = (GPU("H100 SXM", 989.4, 494.7, 3.35), GPU("H200", 989.4, 494.7, 4.8))
# the model's assumptions, printed with every modeled number
CONV_EFFICIENCY = 0.35    # small convolutions reach ~35% of the tensor-core peak
MEMORY_EFFICIENCY = 0.80  # elementwise and reduction kernels ~80% of the HBM bandwidth
GRAPH_NODE_US = 1.5       # per kernel node of a CUDA graph (the fast engine replays graphs)
EAGER_LAUNCH_US = 5.0     # per kernel launched eagerly from Python (the reference engines)


def modeled_us(tally: Tally, gpu: GPU, launch_us: float) -> dict:
    """Microseconds on ``gpu``: each op's time is the longer of its FLOPs at CONV_EFFICIENCY of
    the peak (bf16 for a bf16 convolution, TF32 for an fp32 one: cuDNN's default) and its bytes
    at MEMORY_EFFICIENCY of the bandwidth; plus ``launch_us`` per kernel."""
    work = 0.0
    for kernels, nbytes, flops, dtype in tally.ops:
        if not kernels:
            continue
        peak = gpu.bf16_tflops if dtype in (torch.bfloat16, torch.float16) else gpu.tf32_tflops
        compute = flops / (CONV_EFFICIENCY * peak * 1e12)
        memory = nbytes / (MEMORY_EFFICIENCY * gpu.tb_per_s * 1e12)
        work += max(compute, memory) * 1e6
    launch = tally.kernels * launch_us
    return {"work": round(work, 1), "launch": round(launch, 1), "total": round(work + launch, 1)}


def assumptions() -> str:
    gpus = "; ".join(f"{g.name}: bf16 {g.bf16_tflops} TFLOP/s, TF32 {g.tf32_tflops}, "
                     f"{g.tb_per_s} TB/s" for g in GPUS)
    return (f"modeled, not measured: per op max(FLOPs at {CONV_EFFICIENCY:.0%} of the peak, bytes "
            f"at {MEMORY_EFFICIENCY:.0%} of the bandwidth) + {GRAPH_NODE_US} us per kernel in a "
            f"CUDA graph (fast engine) or {EAGER_LAUNCH_US} us per eager launch (reference); "
            f"datasheet peaks, dense: {gpus}")
