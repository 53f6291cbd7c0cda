"""RMSProp step fused with WGAN weight clipping, over one flat fp32 buffer.

One launch reads ``param``, ``grad`` and ``square_avg`` once and writes ``param`` and
``square_avg`` once (20 bytes per parameter), where ``torch.optim.RMSprop`` followed by a clamp
makes six foreach launches plus two for the clamp. The arithmetic is torch.optim.RMSprop's
(momentum 0, not centered, no weight decay), followed by the clipping of Algorithm 1 of the WGAN
paper (Arjovsky et al. 2017)::

    v = alpha * v + (1 - alpha) * g * g
    p = p - lr * g / (sqrt(v) + eps)
    p = clamp(p, -clip, clip)            # only when clip is not None

``rmsprop_clip_ref`` is the plain-PyTorch twin: the same signature, the same mutated buffers, and
exactly torch.optim.RMSprop's calls. It is the specification, the CPU path and the fallback.

``lr`` is either a python float or a one-element fp32 device tensor that the kernel reads through
a pointer, so a step captured in a CUDA graph picks up a new learning rate written into that
tensor without recapture. ``step`` (optional) is torch's ``state['step']`` counter, a float32
scalar on the device; the kernel's first program adds one to it, so the count also advances
under graph replay.
"""
from __future__ import annotations

import os
import warnings

import torch

from fastwgan.kernels import _launches as launches

try:
    import triton
    import triton.language as tl
except ImportError as e:  # the CPU-only install without the [triton] extra
    triton = None
    _TRITON_IMPORT_ERROR: ImportError | None = e
else:
    _TRITON_IMPORT_ERROR = None

IMPLS = ("ref", "triton")
# One program per BLOCK_SIZE elements: 8 fp32 per thread at 4 warps, i.e. two 16-byte loads of
# each input per thread; a 2.76 M parameter critic gives ~2700 programs, plenty for 132 SMs.
BLOCK_SIZE = 1024
NUM_WARPS = 4


def kernel_launches(param: torch.Tensor, *args, **kwargs) -> list[launches.Launch]:
    """The one launch this op makes on CUDA: param, grad, square_avg read, param and square_avg
    written (20 bytes per element), for a kernel ledger (fastwgan.kernels._launches)."""
    return [launches.Launch("rmsprop_clip", 20 * param.numel())]


@launches.counted_as("optimizer", kernel_launches)
def rmsprop_clip_ref(
    param: torch.Tensor,
    grad: torch.Tensor,
    square_avg: torch.Tensor,
    lr: float | torch.Tensor,
    alpha: float,
    eps: float,
    clip: float | None = None,
    step: torch.Tensor | None = None,
) -> None:
    """One RMSProp step, then clamp to [-clip, clip]; updates ``param``, ``square_avg`` and
    ``step`` in place. The calls are those of torch.optim.RMSprop's single-tensor path."""
    _check(param, grad, square_avg, lr, alpha, eps, clip, step)
    if step is not None:
        step.add_(1)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    avg = square_avg.sqrt().add_(eps)
    if isinstance(lr, torch.Tensor):
        # addcdiv_ takes a python number only; (-lr * g) / avg + p is the order of its fp32
        # arithmetic on CPU, so a tensor lr gives the same bits as the float.
        param.add_(grad.mul(lr).neg_().div_(avg))
    else:
        param.addcdiv_(grad, avg, value=-lr)
    if clip is not None:
        param.clamp_(-clip, clip)


if triton is not None:

    @triton.jit
    def _rmsprop_clip_kernel(
        param_ptr,        # (N,) fp32, updated in place
        grad_ptr,         # (N,) fp32
        square_avg_ptr,   # (N,) fp32, updated in place
        lr,               # pointer to one fp32 (LR_FROM_PTR) or the value itself
        step_ptr,         # pointer to one fp32, += 1 by program 0 (HAS_STEP); unused otherwise
        n_elements,       # N
        alpha,            # fp32
        one_minus_alpha,  # fp32, rounded from the float64 1 - alpha on the host, as torch does
        eps,              # fp32
        clip,             # fp32 > 0 (HAS_CLIP); unused otherwise
        LR_FROM_PTR: tl.constexpr,
        HAS_CLIP: tl.constexpr,
        HAS_STEP: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offsets = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < n_elements

        # load: each input once, fp32
        p = tl.load(param_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(square_avg_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if LR_FROM_PTR:
            lr_value = tl.load(lr).to(tl.float32)
        else:
            lr_value = lr

        # square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha). torch's addcmul computes
        # v + ((1 - alpha) * g) * g, contracted into one fma by its AVX-512 CPU build (checked
        # bit for bit) and, by nvcc's default, its CUDA build; an explicit fma rounds the same
        # way compiled and under the Triton 3.9 interpreter.
        v = tl.fma(one_minus_alpha * g, g, v * alpha)
        # avg = sqrt(v) + eps with IEEE sqrt and division (tl.sqrt and "/" may be approximate)
        avg = tl.sqrt_rn(v) + eps
        # p.addcdiv_(g, avg, value=-lr): torch's CPU kernel computes p + (-lr * g) / avg
        p = p + tl.math.div_rn(-lr_value * g, avg)
        if HAS_CLIP:
            # torch's clamp_ propagates NaN; so does this
            p = tl.clamp(p, -clip, clip, propagate_nan=tl.PropagateNan.ALL)

        # store: param and square_avg once
        tl.store(param_ptr + offsets, p, mask=mask)
        tl.store(square_avg_ptr + offsets, v, mask=mask)
        if HAS_STEP:
            if pid == 0:
                tl.store(step_ptr, tl.load(step_ptr) + 1.0)
else:
    _rmsprop_clip_kernel = None


def _check(param, grad, square_avg, lr, alpha, eps, clip, step) -> None:
    for name, t in (("param", param), ("grad", grad), ("square_avg", square_avg)):
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
        if t.device != param.device:
            raise ValueError(f"{name} is on {t.device}, param on {param.device}")
    if grad.shape != param.shape or square_avg.shape != param.shape:
        raise ValueError(f"shapes differ: param {tuple(param.shape)}, grad {tuple(grad.shape)}, "
                         f"square_avg {tuple(square_avg.shape)}")
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or lr.dtype != torch.float32:
            raise ValueError(f"a tensor lr must hold one float32, got {lr.dtype} {tuple(lr.shape)}")
    elif not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if clip is not None and not clip > 0.0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if step is not None and (step.numel() != 1 or step.dtype != torch.float32 or step.device != param.device):
        raise ValueError("step must be one float32 on the parameters' device")


def _interpreted() -> bool:
    """Whether the kernel was built by the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return _rmsprop_clip_kernel is not None and type(_rmsprop_clip_kernel).__name__ == "InterpretedFunction"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernel cannot run on ``device``'s tensors, or None when it can."""
    if _rmsprop_clip_kernel is None:
        return f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
        if not _interpreted():
            return "TRITON_INTERPRET=1 was set after triton compiled this kernel; set it before importing"
        return None
    return f"no Triton path for {device.type} tensors"


def resolve_impl(impl: str, device: torch.device, stacklevel: int = 1) -> str:
    """``impl`` if it can run on ``device``, else "ref" with one warning saying why.
    The warning points at the caller of resolve_impl (``stacklevel`` 1), or further up."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            warnings.warn(f"rmsprop_clip: falling back to the PyTorch reference: {reason}",
                          stacklevel=stacklevel + 1)
            return "ref"
    return impl


def rmsprop_clip(
    param: torch.Tensor,
    grad: torch.Tensor,
    square_avg: torch.Tensor,
    lr: float | torch.Tensor,
    alpha: float,
    eps: float,
    clip: float | None = None,
    step: torch.Tensor | None = None,
    *,
    impl: str = "triton",
) -> None:
    """One RMSProp step with optional clipping, in place, as ``rmsprop_clip_ref`` (same
    arguments) but in one Triton launch. ``param``, ``grad`` and ``square_avg`` are contiguous
    fp32 tensors of one shape; ``lr`` a float or a one-element fp32 tensor on their device.

    No host synchronisation and no allocation: the launch can be captured in a CUDA graph (after
    a first call outside capture has compiled the kernel). Falls back to the twin, with a warning,
    where Triton cannot run.
    """
    if resolve_impl(impl, param.device, stacklevel=2) == "ref":
        rmsprop_clip_ref(param, grad, square_avg, lr, alpha, eps, clip, step)
        return
    # (1) check
    _check(param, grad, square_avg, lr, alpha, eps, clip, step)
    if not (param.is_contiguous() and grad.is_contiguous() and square_avg.is_contiguous()):
        raise ValueError("param, grad and square_avg must be contiguous")
    if isinstance(lr, torch.Tensor) and lr.device != param.device:
        raise ValueError(f"a tensor lr must be on the parameters' device {param.device}, got {lr.device}")
    # (2) nothing to allocate: the update is in place
    _launch(param, grad, square_avg, lr, alpha, eps, clip, step)


def _launch(param, grad, square_avg, lr, alpha, eps, clip, step) -> None:
    """(3) the launch alone, for callers that checked the arguments once (fastwgan.optim)."""
    launches.record("optimizer", kernel_launches(param))
    n = param.numel()
    if n == 0:
        if step is not None:
            step.add_(1)
        return
    grid = (triton.cdiv(n, BLOCK_SIZE),)
    _rmsprop_clip_kernel[grid](
        param, grad, square_avg,
        lr, step if step is not None else param,
        n,
        float(alpha), float(1 - alpha), float(eps), float(clip) if clip is not None else 0.0,
        LR_FROM_PTR=isinstance(lr, torch.Tensor), HAS_CLIP=clip is not None, HAS_STEP=step is not None,
        BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS,
    )
