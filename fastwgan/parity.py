"""Comparisons of the fast pieces against their plain-PyTorch twins, shared by the tests and by
the self-check (``fastwgan.check``) that runs them on a user's machine.

* ``bn_inputs`` / ``bn_run`` / ``bn_error_bound``: the fused BatchNorm + activation against
  ``bn_act_ref``; in low precision the error is bounded by torch's own (flash-attention style:
  ``max|fast - ref_fp32| <= 2 * max|ref_lowp - ref_fp32| + atol``).
* ``FixedBatches`` / ``engine_pair`` / ``fixed_batches`` / ``assert_same_state``: the fast engine
  against the reference engine on the same batches, z and initial weights.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch


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
    """((G, D), (G2, D2)): two copies of the same freshly initialised networks."""
    from fastwgan.models import Critic, Generator

    torch.manual_seed(seed)
    G = Generator(cfg.image_size, cfg.nz, cfg.ngf).to(device)
    D = Critic(cfg.image_size, cfg.ndf, norm=cfg.critic_normalization).to(device)
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


def bn_launches(image_size=64, nz=100, ngf=64, ndf=64, batch_size=64, extra_layers=0):
    """The BatchNorm + activation calls a training run makes: ((N, C, H, W), act, training) for
    every block of the generator and the critic (training mode), and the generator's blocks in
    eval mode (the sample grids), without repeats. Read off the networks, run on the meta device
    (no memory, no arithmetic)."""
    from fastwgan.models import Block, Critic, Generator

    seen: list = []

    def record(module, _inputs, output):
        key = (tuple(output.shape), module.act, module.training)
        if key not in seen:
            seen.append(key)

    with torch.device("meta"), torch.no_grad():
        G = Generator(image_size, nz, ngf, extra_layers=extra_layers)
        D = Critic(image_size, ndf, extra_layers=extra_layers)
        hooks = [m.register_forward_hook(record) for net in (G, D) for m in net.modules()
                 if isinstance(m, Block) and m.bn is not None]
        G(torch.empty(batch_size, nz))
        D(torch.empty(batch_size, 3, image_size, image_size))
        G.eval()(torch.empty(batch_size, nz))
    for h in hooks:
        h.remove()
    return seen
