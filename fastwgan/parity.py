"""Comparisons of the fast pieces against their plain-PyTorch twins, shared by the tests and by
the self-check (``fastwgan.check``) that runs them on a user's machine.

* ``bn_inputs`` / ``bn_run`` / ``bn_error_bound``: the fused BatchNorm + activation against
  ``bn_act_ref``; in low precision the error is bounded by torch's own (flash-attention style:
  ``max|fast - ref_fp32| <= 2 * max|ref_lowp - ref_fp32| + atol``). ``untie``: the upstream
  gradient without the elements whose pre-activation lies within rounding of the activation's
  threshold, where any two fp32 computations may take opposite sides (``activation_ties``).
* ``FixedBatches`` / ``engine_pair`` / ``fixed_batches`` / ``assert_same_state``: the fast engine
  against the reference engine on the same batches, z and initial weights.
* ``rmsprop_case`` / ``bn_case``: one launch of each fused kernel against its twin, raising
  AssertionError when they disagree; ``start_of_run_problem``: the short form of these that the
  trainer runs before a fast run on CUDA (``fastwgan.build``), one line when a kernel fails.
"""
from __future__ import annotations

import copy
import importlib
from typing import Optional

import torch

from fastwgan.build import build_networks
from fastwgan.device import device_label

# the interpreter runs about 1.4 ms per program instance: these shapes keep it to seconds
CPU_BN_SHAPE = (2, 16, 4, 4)
CPU_RMSPROP_SIZES = {"critic": 3000, "generator": 1025}
GUARD_RMSPROP_SIZE = 1 << 16  # the start-of-run check: one launch of 64 programs


# --- BatchNorm + activation ----------------------------------------------------------------------

def bn_inputs(shape, layout, seed=0, device="cpu", dtype=torch.float32):
    """x with a non-zero mean (exercises the shifted variance), weight around 1 with some negative
    entries (flips the activation's mask), running stats away from their init values, and an
    upstream gradient: (x, weight, bias, running_mean, running_var, dy)."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 2.0 + 0.5)
    w = torch.randn(C, generator=g) * 0.5 + 1.0
    w[::3] = -w[::3]
    b = torch.randn(C, generator=g) * 0.5
    rm = torch.randn(C, generator=g) * 0.3
    rv = torch.rand(C, generator=g) + 0.5
    dy = torch.randn(shape, generator=g)
    to = dict(device=device)
    x = x.to(dtype=dtype, **to).contiguous(memory_format=layout)
    dy = dy.to(dtype=dtype, **to).contiguous(memory_format=layout)
    return x, w.to(**to), b.to(**to), rm.to(**to), rv.to(**to), dy


def bn_run(fn, x, w, b, rm, rv, dy, **kw) -> dict:
    """Forward and backward of ``fn`` on fresh leaves and copies of the running stats: y, dx,
    dweight, dbias and (when given) the updated running_mean and running_var."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, w, b, rm, rv, **kw)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    out = dict(y=y.detach(), dx=dx, dweight=dw, dbias=db)
    if rm is not None:
        out.update(running_mean=rm, running_var=rv)
    return out


# How far from the activation's threshold (0) an fp32 pre-activation may land on the wrong side, in
# units of fp32 eps times the magnitude of its terms (|x * scale| + |mean * scale| + |bias|): 8 for
# the elementwise arithmetic, and in training 2 * sqrt(N*H*W) more for the batch statistics, whose
# rounding grows with the count they are taken over. Measured for torch's fp32 on this project's
# inputs (bn_inputs, seeds 0-2, 64x512x4x4, 64x128x16x16, 64x64x32x32) against fp64: up to 1.6 in
# eval, up to 0.37 * sqrt(N*H*W) in training (94 at 64x64x32x32): a margin of 5 on both.
TIE_ULPS_ELEMENTWISE = 8.0
TIE_ULPS_PER_SQRT_COUNT = 2.0


def activation_ties(x, weight, bias, running_mean, running_var, training: bool, act: str,
                    eps: float = 1e-5) -> torch.Tensor:
    """Where (a bool mask of x's shape) the pre-activation ``bn(x)``, computed in fp64 from the
    same inputs, lies within fp32 rounding of the activation's threshold (0; none for act "none").
    There the kernel and torch may round to opposite sides: y then differs by a rounding error,
    but the activation's derivative by 1 - slope, hence that element's dx by about
    |weight * rstd * dy|, and its channel's dweight, dbias and (training) every dx through the
    channel's sums."""
    if act == "none":
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    C, dims = x.shape[1], [0] + list(range(2, x.dim()))
    xd = x.detach().double()
    if training:
        var, mean = torch.var_mean(xd, dims, unbiased=False)
    else:
        var, mean = running_var.double(), running_mean.double()
    w = torch.ones(C, dtype=torch.float64, device=x.device) if weight is None else weight.detach().double()
    b = torch.zeros(C, dtype=torch.float64, device=x.device) if bias is None else bias.detach().double()
    view = [1, C] + [1] * (x.dim() - 2)
    scale, mean, b = (w * (var + eps).rsqrt()).view(view), mean.view(view), b.view(view)
    pre = (xd - mean) * scale + b
    terms = scale.abs() * (xd.abs() + mean.abs()) + b.abs()
    ulps = TIE_ULPS_ELEMENTWISE
    if training:
        ulps += TIE_ULPS_PER_SQRT_COUNT * (x.numel() / C) ** 0.5
    return pre.abs() <= ulps * torch.finfo(torch.float32).eps * terms


def untie(x, weight, bias, running_mean, running_var, dy, training: bool, act: str,
          eps: float = 1e-5) -> tuple[torch.Tensor, int]:
    """(dy with zeros at ``activation_ties``, how many): a tied element's gradient through the
    activation is then 0 whichever side it is rounded to, so ties drop out of every gradient
    exactly (dx, dweight, dbias, and the channel sums in every dx), and the comparison judges
    the rest. The forward (y, running statistics) is compared everywhere: there a tie costs a
    rounding error only."""
    ties = activation_ties(x, weight, bias, running_mean, running_var, training, act, eps)
    return dy.masked_fill(ties, 0), int(ties.sum())


def ties_note(n_ties: int, numel: int, act: str) -> str:
    """What a comparison says about the ties it left out."""
    return f"{n_ties:,} of {numel:,} elements within rounding of the {act} threshold left out of the gradients"


def bn_atol(dtype, key, scale):
    """Absolute slack on top of twice torch's own error: fp32 reduction-order noise for the fp32
    results (statistics, parameter gradients, and everything when the input is fp32), one ulp of
    the output's dtype for y and dx in low precision."""
    low = dtype != torch.float32 and key in ("y", "dx")
    return (torch.finfo(dtype).eps if low else 1e-5) * max(1.0, scale)


def bn_error_bound(fast: dict, ref_low: dict, ref_32: dict, dtype) -> Optional[str]:
    """None when every output of ``fast`` is within twice torch's own error at ``dtype`` (plus
    ``bn_atol``) of the fp32 reference; else a line naming the first output that is not, its
    worst index and values."""
    for k, ref in ref_32.items():
        got = fast[k].float()
        if not torch.isfinite(got).all():
            return f"{k}: not finite"
        diff = (got - ref).abs()
        err_fast = diff.max().item()
        err_torch = (ref_low[k].float() - ref).abs().max().item()
        atol = bn_atol(dtype, k, ref.abs().max().item())
        if err_fast > 2 * err_torch + atol:
            i = diff.argmax()
            worst = tuple(int(j) for j in torch.unravel_index(i, ref.shape))
            return (f"{k}: max |fast - ref_fp32| = {err_fast:.3g} > 2 * {err_torch:.3g} + {atol:.3g}, "
                    f"worst at {worst}: fast {got.flatten()[i].item():.6g}, "
                    f"ref_fp32 {ref.flatten()[i].item():.6g}")
    return None


# --- engines -------------------------------------------------------------------------------------

class FixedBatches:
    """The same list of batches for both engines: an iterator for the reference, ``sample()``
    for the fast engine."""

    def __init__(self, batches):
        self.batches, self.i, self.position = batches, 0, 0

    def sample(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def __next__(self):
        self.position += 1
        return self.sample()


def engine_pair(cfg, device="cpu", seed=0):
    """((G, D), (G2, D2)): two copies of the same freshly initialised networks of ``cfg``."""
    torch.manual_seed(seed)
    G, D = build_networks(cfg, device)
    return (G, D), (copy.deepcopy(G), copy.deepcopy(D))


def fixed_batches(cfg, n, device="cpu"):
    """``n`` random batches in [-1, 1] (N, 3, H, W), the same for every call."""
    g = torch.Generator().manual_seed(123)
    return [(torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
            for _ in range(n)]


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, **tol):
    """Every floating-point entry of the state_dicts close (``assert_close``), the rest equal."""
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(sb[k], v, msg=lambda m: f"{k}: {m}", **tol)
        else:
            assert torch.equal(sb[k], v), k


def bn_launches(cfg, batch_size: Optional[int] = None):
    """The BatchNorm + activation calls a training run of ``cfg`` makes: ((N, C, H, W), act,
    training) for every block of the generator and the critic (training mode), and the
    generator's blocks in eval mode (the sample grids), without repeats, at ``batch_size`` (the
    config's by default). Read off the networks, run on the meta device (no memory, no
    arithmetic)."""
    from fastwgan.models import Block

    n = batch_size or cfg.batch_size
    seen: list = []

    def record(module, _inputs, output):
        key = (tuple(output.shape), module.act, module.training)
        if key not in seen:
            seen.append(key)

    with torch.device("meta"), torch.no_grad():
        G, D = build_networks(cfg)
        hooks = [m.register_forward_hook(record) for net in (G, D) for m in net.modules()
                 if isinstance(m, Block) and m.bn is not None]
        G(torch.empty(n, cfg.nz))
        D(torch.empty(n, 3, cfg.image_size, cfg.image_size))
        G.eval()(torch.empty(n, cfg.nz))
    for h in hooks:
        h.remove()
    return seen


# --- one launch of each kernel against its twin --------------------------------------------------

def one_line(e: BaseException) -> str:
    """An assertion's whole message on one line (assert_close puts the numbers on later lines);
    any other error's type and first line."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if isinstance(e, AssertionError):
        return " ".join(lines) or "assertion failed"
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def rmsprop_case(n: int, clip: Optional[float], device: torch.device, seed: int = 0) -> None:
    """One RMSprop (+ clip) launch over ``n`` parameters against the twin, fp32: the kernel does
    the twin's operations in its order, so they agree to an ulp or two (tests/test_optim.py)."""
    rc_mod = importlib.import_module("fastwgan.kernels.rmsprop_clip")
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(n, generator=g) * 0.02).to(device)
    grad = torch.randn(n, generator=g).to(device)
    v = (torch.rand(n, generator=g) * 1e-2).to(device)
    lr = torch.tensor(1e-3, device=device)
    p_k, v_k, s_k = p.clone(), v.clone(), torch.zeros((), device=device)
    p_r, v_r, s_r = p.clone(), v.clone(), torch.zeros((), device=device)
    rc_mod.rmsprop_clip(p_k, grad, v_k, lr, 0.99, 1e-8, clip, s_k, impl="triton")
    rc_mod.rmsprop_clip_ref(p_r, grad, v_r, lr, 0.99, 1e-8, clip, s_r)
    torch.testing.assert_close(p_k, p_r, rtol=1e-6, atol=1e-6 * 0.02, msg=lambda m: f"param: {m}")
    torch.testing.assert_close(v_k, v_r, rtol=1e-6, atol=1e-12, msg=lambda m: f"square_avg: {m}")
    assert s_k.item() == s_r.item() == 1.0, f"step counter {s_k.item()}, twin {s_r.item()}"


def bn_case(shape, dtype, layout, act, training, device: torch.device, seed: int = 0) -> Optional[str]:
    """One forward and backward of the fused BatchNorm + activation against the twin: fp32 within
    reduction-order noise, lower precisions within twice torch's own error (``bn_error_bound``),
    the gradients without the activation's ties (``untie``). Returns how many ties were left out
    (None for act "none"); the count is in the message when the check fails."""
    bn_mod = importlib.import_module("fastwgan.kernels.bn_act")  # (the package's bn_act is the function)

    x, w, b, rm, rv, dy = bn_inputs(shape, layout, seed=seed, device=device, dtype=dtype)
    dy, n_ties = untie(x, w, b, rm, rv, dy, training, act)
    note = None if act == "none" else ties_note(n_ties, x.numel(), act)
    kw = dict(training=training, act=act, negative_slope=0.2)
    fast = bn_run(bn_mod.bn_act, x, w, b, rm, rv, dy, impl="triton", **kw)
    ref_low = bn_run(bn_mod.bn_act_ref, x, w, b, rm, rv, dy, **kw)
    ref_32 = bn_run(bn_mod.bn_act_ref, x.float(), w, b, rm, rv, dy.float(), **kw)
    assert fast["y"].dtype == dtype and fast["y"].is_contiguous(memory_format=layout), \
        f"y is {fast['y'].dtype}, not in the input's layout"
    problem = bn_error_bound(fast, ref_low, ref_32, dtype)
    assert problem is None, problem if note is None else f"{problem} ({note})"
    return note


def dtype_name(dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# --- the start-of-run check of the trainer ---------------------------------------------------------

def guard_applies(device: torch.device) -> bool:
    """The trainer checks the kernels where the fast engine runs them compiled: on CUDA."""
    return device.type == "cuda"


def start_of_run_problem(cfg, device: torch.device, amp_dtype: Optional[torch.dtype]) -> Optional[str]:
    """The short form of the kernel checks, before a fast run: one RMSprop + clip launch and one
    BatchNorm + activation forward and backward (the run's first critic block, its precision,
    channels_last), each against its twin. None when both agree (or the check does not apply
    here); else one line saying which kernel failed and how. Its random inputs come from a
    generator of its own: the run's random numbers are untouched."""
    if not guard_applies(device):
        return None
    if device.type == "cuda":
        launches = [(s, act) for s, act, training in bn_launches(cfg) if training]
        # the critic's first BatchNorm block; a critic without BatchNorm: the generator's first
        shape, act = next((launch for launch in launches if launch[1] == "leaky_relu"), launches[0])
        n = GUARD_RMSPROP_SIZE
    else:  # (only where a test makes the check apply to a CPU: the interpreter, tiny sizes)
        shape, act, n = CPU_BN_SHAPE, "leaky_relu", CPU_RMSPROP_SIZES["critic"]
    dtype = amp_dtype or torch.float32
    checks = [(f"the fused BatchNorm + activation kernel ({'x'.join(map(str, shape))}, "
               f"{dtype_name(dtype)})",
               lambda: bn_case(shape, dtype, torch.channels_last, act, True, device))]
    loss = cfg.loss_entry
    if loss.optimizer == "rmsprop":  # the fast engine's RMSpropClip (Adam is torch's own)
        clip = cfg.clip if loss.clips else None
        checks.insert(0, ("the fused RMSprop + clip kernel", lambda: rmsprop_case(n, clip, device)))
    for what, fn in checks:
        try:
            fn()
            if device.type == "cuda":  # the kernel's own errors surface here
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - any failure of the kernel is the answer
            return (f"{what} failed its check against the PyTorch twin on {device_label(device)}: "
                    f"{one_line(e)}")
    return None
