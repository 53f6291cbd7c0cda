"""What ``--tb-histograms`` reads: every weight, and each gradient that holds a gradient between
two iterations.

The fast engine's CUDA graphs share one memory pool (fastwgan.fast). A gradient that a captured
step allocates lives in that pool: torch's Adam (``--loss gan``, ``hinge``, ``wgan-gp``) sets
``.grad`` to None before each backward, which then makes a new one inside the graph. Between
replays that memory holds whatever the graph that ran last wrote there: another graph may keep
its temporaries at the same addresses (the warm-up phases replay the step graphs, other
iterations the iteration graph), and the ``.grad`` the Python side holds is the one of the last
capture, which nothing has filled when no replay has run yet. RMSpropClip's gradients are views
of one flat buffer allocated before any capture, outside the pool, which only its own steps
write: those are read. So once graphs are captured a gradient goes into the histograms only
when it is a view of such a buffer; the others are left out, and the run says so once
(``--no-graphs`` writes them). Weights always live outside the pool: every optimizer updates
them in place.
"""
from __future__ import annotations

import torch

from fastwgan.optim import RMSpropClip


def captured(engine) -> bool:
    """Whether the engine replays CUDA graphs (the fast engine's ``graphs``, once captured; an
    engine that has none runs eagerly, where every ``.grad`` is an ordinary tensor)."""
    return bool(getattr(engine, "graphs", None))


def flat_gradient_buffers(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradient buffers an optimizer allocated outside any graph: RMSpropClip's flat ones."""
    if not isinstance(optimizer, RMSpropClip):
        return []
    return [optimizer.buffers(i).grad for i in range(len(optimizer.param_groups))]


def view_of(t: torch.Tensor, buffers: list[torch.Tensor]) -> bool:
    """Whether ``t`` shares its memory with one of ``buffers``."""
    ptr = t.untyped_storage().data_ptr()
    return any(ptr == b.untyped_storage().data_ptr() for b in buffers)


def histogram_tensors(engine) -> tuple[dict[str, torch.Tensor], list[str]]:
    """tag -> tensor (on the device) for every weight (``weights/G/<name>``) and every gradient
    that may be read (``grads/D/<name>``); and the networks ("G", "D") whose gradients are
    left out because they lie in the graphs' pool."""
    graphs = captured(engine)
    tensors, left_out = {}, []
    for prefix, net, opt in (("G", engine.G, engine.opt_g), ("D", engine.D, engine.opt_d)):
        outside = flat_gradient_buffers(opt)
        for name, p in net.named_parameters():
            tensors[f"weights/{prefix}/{name}"] = p.detach()
            if p.grad is None:
                continue
            if graphs and not view_of(p.grad, outside):
                if prefix not in left_out:
                    left_out.append(prefix)
                continue
            tensors[f"grads/{prefix}/{name}"] = p.grad.detach()
    return tensors, left_out
