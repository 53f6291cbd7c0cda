"""Fused BatchNorm + activation (ReLU, LeakyReLU or none), forward and backward, in Triton.

``bn_act`` equals ``F.batch_norm`` followed by the activation, values and mutated running statistics
included; ``bn_act_ref`` is that plain-PyTorch composition, the specification, the CPU path and the
fallback. ``impl="triton"`` falls back to the twin (with one warning) where Triton cannot run: no
triton, or CPU tensors without the interpreter (``TRITON_INTERPRET=1`` when triton was imported).

Data layout. An (N, C, *spatial) input is read as M = N * S rows by C channels, S = prod(spatial):
  channels_last (4-D only): one (M, C) row-major matrix, element (m, c) at m * C + c;
  contiguous NCHW:          N planes of (C, S), element (n, c, s) at (n * C + c) * S + s.
Both layouts are cut into "units" of BLOCK_R rows (channels_last: BLOCK_R consecutive rows of the
flat matrix; NCHW: BLOCK_R consecutive spatial positions of one image), so every kernel walks the
same iteration space with tiles of (BLOCK_R, BLOCK_C) and the output keeps the input's layout.

Grid. The per-channel reductions are split over a 2-D grid (channel blocks, row chunks): a program
owns BLOCK_C channels and UNITS_PER_PROG consecutive units, and writes one partial result per
channel to a small fp32 workspace; a tiny finalize kernel (one program per BLOCK_CF channels)
combines the partials. One program per channel, the obvious design, gives 64-512 programs: too few
for a 132-SM GPU at 64 channels. The elementwise passes use the same grid.

  training forward   stats partials -> finalize (mean, rstd, running stats) -> normalize + act
  eval forward       normalize + act with the running statistics (one launch)
  backward           grad partials (sum g, sum g*x_hat) -> finalize (dweight, dbias) -> dx
                     where g = dy * act'(y), skipping what ctx.needs_input_grad does not ask for.

Numerics. Everything is computed in fp32 whatever the input dtype; y and dx are rounded once, to
the input's dtype. Batch variance: each program accumulates per-lane sums of (x - K) and (x - K)^2
with K the first row of its chunk (a shift close to the mean keeps the sum of squares
well-conditioned; Chan et al. 1983, "Algorithms for computing the sample variance"), turns them
into a centered partial (count, mean, M2), and the finalize combines partials with Chan's parallel
formula: no E[x^2] - E[x]^2 cancellation at any level.

Saved for backward: x (in its own dtype), weight, bias and a fresh fp32 (2, C) tensor of the mean
and rstd that the forward used. x_hat and the activation mask are recomputed from x with exactly
the forward's arithmetic. y cannot replace x: ReLU destroys the negative half of x_hat, which the
BatchNorm backward needs. x is the convolution's output, which nothing else keeps alive, so saving
it costs one activation of memory; a mask would cost another tensor and the same write traffic.

Sync BatchNorm (several processes). With ``process_group`` (a torch.distributed group of more than
one process) and ``training``, the statistics are those of the batch over all the group's ranks
(torch.nn.SyncBatchNorm's semantics), with one collective each way:
  forward   local moments (count, mean, M2) per channel -> all_gather -> combined with the same
            Chan formula as the chunks (the twin: in torch; the kernels: the finalize kernel run
            once with MOMENTS for the rank, then over the gathered (3, ranks, C) as partials)
  backward  local sums of g and g * x_hat -> all_reduce (sum) -> divided by the global count
            for dx; dweight and dbias stay the rank's own sums (the data-parallel gradient
            average over ranks follows, as after torch's SyncBatchNorm)
The collectives are plain calls on small device tensors (capturable with NCCL). gloo (CPU) has
no all_gather_into_tensor: there the list form is used.

affine=False: weight and bias may be None (each on its own); they count as ones and zeros and
their gradients are None, as in F.batch_norm.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F

from fastwgan.kernels import _launches as launches
from fastwgan.kernels._launches import Launch

try:
    import triton
    import triton.language as tl
except ImportError:  # bn_act(impl="triton") falls back to the twin
    triton = None
    tl = None

__all__ = ["bn_act", "bn_act_ref", "ACTS"]

ACTS = ("none", "relu", "leaky_relu")
_ACT_ID = {name: i for i, name in enumerate(ACTS)}  # the kernels' ACT constexpr
IMPLS = ("ref", "triton")

# triton.jit picks the interpreter when the kernel is decorated, i.e. at import: read the variable
# the same way, once.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_fallback_warned = False


# ------------------------------------------------------------------------------------------------
# The plain-PyTorch twin: the specification
# ------------------------------------------------------------------------------------------------
def bn_act_ref(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
               act="relu", negative_slope=0.2, num_batches_tracked=None, groups=1):
    """``F.batch_norm`` followed by the activation; same arguments as ``bn_act`` but ``impl``
    and ``process_group``. ``groups`` > 1 (training): one call per group of rows, concatenated."""
    _check_act(act)
    _check_momentum(momentum)
    if _check_groups(x, groups, training) > 1:
        return torch.cat([bn_act_ref(part, weight, bias, running_mean, running_var, training,
                                     momentum, eps, act, negative_slope, num_batches_tracked)
                          for part in x.chunk(groups)])
    _count_batch(num_batches_tracked, training)
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if act == "relu":
        return F.relu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    return y


def _check_groups(x, groups, training):
    """The row groups that apply: ``groups`` when training (N a multiple of it), else 1."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if groups > 1 and x.shape[0] % groups:
        raise ValueError(f"a batch of {x.shape[0]} does not split into {groups} equal groups")
    return groups if training else 1


def _count_batch(num_batches_tracked, training):
    """nn.BatchNorm2d's counter of training batches (momentum is never None here: unread)."""
    if num_batches_tracked is not None and training:
        num_batches_tracked.add_(1)


def _check_act(act):
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")


def _check_momentum(momentum):
    if momentum is None:
        raise ValueError("momentum=None (cumulative moving average) is not supported: pass a "
                         "float, as nn.BatchNorm2d does by default (0.1)")


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def _channel_view(t, x):
    """(C,) -> broadcastable against x (N, C, *spatial)."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def _all_gather_stacked(t, group):
    """(W, *t.shape): every rank's ``t``, in rank order (one collective)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    if dist.get_backend(group) == "gloo":  # gloo lacks all_gather_into_tensor
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.stack(parts)
    out = torch.empty((world, *t.shape), dtype=t.dtype, device=t.device)
    dist.all_gather_into_tensor(out, t.contiguous(), group=group)
    return out


def _all_reduce_sum_(t, group):
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _combine_moments(n, mean, m2):
    """Count, mean and M2 of the union of parts (P, C) each: Chan et al.'s pairwise formula,
    applied to all parts at once (the finalize kernel's block combine)."""
    n_all = n.sum(0)
    mean_all = (n * mean).sum(0) / n_all
    m2_all = (m2 + n * (mean - mean_all) ** 2).sum(0)
    return n_all, mean_all, m2_all


def _act_grad(g, y_pre, act, negative_slope):
    if act == "relu":
        return torch.where(y_pre > 0, g, 0.0)
    if act == "leaky_relu":
        return torch.where(y_pre > 0, g, g * negative_slope)
    return g


def _act_ref(y, act, negative_slope):
    if act == "relu":
        return F.relu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    return y


class _SyncBnActRef(torch.autograd.Function):
    """The twin of sync BatchNorm + activation, in plain torch ops and two collectives."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, act,
                negative_slope, group):
        dims, C = _reduce_dims(x), x.shape[1]
        xf = x.float()
        # local moments, then the global ones
        n = torch.full((C,), x.numel() // C, dtype=torch.float32, device=x.device)
        mean = xf.mean(dims)
        m2 = ((xf - _channel_view(mean, x)) ** 2).sum(dims)
        moments = _all_gather_stacked(torch.stack([n, mean, m2]), group)  # (W, 3, C)
        n_all, mean_all, m2_all = _combine_moments(moments[:, 0], moments[:, 1], moments[:, 2])
        rstd = torch.rsqrt(m2_all / n_all + eps)
        if running_mean is not None:  # torch's update, with the unbiased variance
            running_mean.mul_(1 - momentum).add_(momentum * mean_all)
            running_var.mul_(1 - momentum).add_(momentum * m2_all / (n_all - 1))
        w = weight.float() if weight is not None else torch.ones(C, device=x.device)
        b = bias.float() if bias is not None else torch.zeros(C, device=x.device)
        x_hat = (xf - _channel_view(mean_all, x)) * _channel_view(rstd, x)
        y = _act_ref(x_hat * _channel_view(w, x) + _channel_view(b, x), act, negative_slope)
        ctx.save_for_backward(x, w, b, mean_all, rstd, n_all)
        ctx.act, ctx.negative_slope, ctx.group = act, negative_slope, group
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w, b, mean, rstd, n_all = ctx.saved_tensors
        dims = _reduce_dims(x)
        xf = x.float()
        x_hat = (xf - _channel_view(mean, x)) * _channel_view(rstd, x)
        y_pre = x_hat * _channel_view(w, x) + _channel_view(b, x)
        g = _act_grad(dy.float(), y_pre, ctx.act, ctx.negative_slope)
        sum_g, sum_gx = g.sum(dims), (g * x_hat).sum(dims)
        dw = sum_gx.clone() if ctx.has_weight and ctx.needs_input_grad[1] else None
        db = sum_g.clone() if ctx.has_bias and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            coef = _all_reduce_sum_(torch.stack([sum_g, sum_gx]), ctx.group) / n_all  # (2, C)
            dx = _channel_view(w * rstd, x) * (g - _channel_view(coef[0], x)
                                               - x_hat * _channel_view(coef[1], x))
            dx = dx.to(x.dtype)
        return dx, dw, db, None, None, None, None, None, None, None


def _syncs(process_group, training):
    """Whether the statistics are the group's rather than this process's."""
    if process_group is None or not training:
        return False
    import torch.distributed as dist

    return dist.get_world_size(process_group) > 1


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------
def bn_act(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
           act="relu", negative_slope=0.2, impl="triton", process_group=None,
           num_batches_tracked=None, groups=1, grads_into_params=False):
    """BatchNorm (batch statistics when ``training``, else the running ones) then ``act``.

    x: (N, C, *spatial), fp32, fp16 or bf16, contiguous or (4-D) channels_last; y has x's dtype
    and memory format. weight, bias: (C,) or None. running_mean, running_var: (C,) fp32 buffers,
    updated in place when training (momentum, unbiased variance), or both None (training only).
    Differentiable in x, weight and bias; parameter gradients are fp32.
    process_group: a torch.distributed group; when training, the statistics are those of the
    batch over all its ranks (see "Sync BatchNorm" above). None: this process's batch.
    num_batches_tracked: nn.BatchNorm2d's () int64 counter, += 1 when training (by the Triton
    path in the statistics' finalize kernel, not in a launch of its own), or None.
    groups: when training, the batch is that many equal groups of images, each normalised by its
    own statistics, the running statistics and the counter updated by each in turn: the same as
    one call per group, concatenated (the critic's real and fake halves in one batch). The
    kernels do it in the launches of one call where a group's rows fill whole tiles.
    grads_into_params: add dweight and dbias straight into ``weight.grad`` and ``bias.grad``
    where those exist (fp32), in the kernel that reduces them, and hand autograd no gradient for
    them: no AccumulateGrad kernels. The same sums; but no gradient hook of the parameters runs,
    so only for callers without any (not under DistributedDataParallel).
    """
    global _fallback_warned
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _check_act(act)
    _check_momentum(momentum)
    groups = _check_groups(x, groups, training)
    sync = _syncs(process_group, training)
    args = (weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope)
    if groups > 1 and (sync or not _groups_fit(x, groups)):  # one call per group
        return torch.cat([bn_act(part, *args, impl=impl, process_group=process_group,
                                 num_batches_tracked=num_batches_tracked,
                                 grads_into_params=grads_into_params)
                          for part in x.chunk(groups)])
    if sync and (impl == "ref" or triton is None or not (x.is_cuda or _INTERPRET)):
        _count_batch(num_batches_tracked, training)
        return _SyncBnActRef.apply(x, weight, bias, running_mean, running_var, float(momentum),
                                   float(eps), act, float(negative_slope), process_group)
    if launches.listening() and (impl == "ref" or not x.is_cuda) and x.numel() and x.dim() >= 2:
        # a kernel ledger (off CUDA: whatever impl) counts the twin as the launches it stands for
        return _CountedRef.apply(x, *args, num_batches_tracked, groups, grads_into_params)
    if impl == "ref" or x.numel() == 0:  # (nothing to launch for an empty batch)
        return bn_act_ref(x, *args, num_batches_tracked, groups)
    if triton is None or not (x.is_cuda or _INTERPRET):
        if not _fallback_warned:
            _fallback_warned = True
            why = "triton is not importable" if triton is None else \
                "CPU tensors need TRITON_INTERPRET=1 set before triton is imported"
            warnings.warn(f"bn_act: impl='triton' falls back to the PyTorch reference ({why})",
                          RuntimeWarning, stacklevel=2)
        return bn_act_ref(x, *args, num_batches_tracked, groups)
    _check_inputs(x, weight, bias, running_mean, running_var, training, num_batches_tracked)
    return _BnAct.apply(x, weight, bias, running_mean, running_var, bool(training), float(momentum),
                        float(eps), _ACT_ID[act], float(negative_slope),
                        process_group if sync else None,
                        num_batches_tracked if training else None, groups, grads_into_params)


def _groups_fit(x, groups):
    """Whether the kernels can take ``groups`` row groups in one call's launches: off a GPU,
    always (the twin, or the interpreter's tiles below); on one, where no tile straddles two."""
    if not x.is_cuda and not _INTERPRET or triton is None or x.dim() < 2 or not x.numel():
        return True
    N, C = x.shape[0], x.shape[1]
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()
    return _launch_config(N, C, x.numel() // (N * C), channels_last, _device_index(x),
                          groups)["aligned"]


def _check_inputs(x, weight, bias, running_mean, running_var, training, num_batches_tracked=None):
    if x.dim() < 2:
        raise ValueError(f"bn_act expects (N, C, *spatial), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"bn_act supports float32, float16 and bfloat16 inputs, got {x.dtype}")
    C = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and (t.shape != (C,) or t.device != x.device):
            raise ValueError(f"{name} must be a ({C},) tensor on {x.device}, got "
                             f"{tuple(t.shape)} on {t.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be both given or both None")
    if num_batches_tracked is not None and (num_batches_tracked.numel() != 1
                                            or num_batches_tracked.device != x.device):
        raise ValueError(f"num_batches_tracked must be one element on {x.device}")
    if not training and running_mean is None:
        raise ValueError("eval mode (training=False) needs running_mean and running_var")
    if training and x.numel() // C <= 1:  # F.batch_norm's own check
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    if x.numel() >= 2**31:
        raise ValueError("bn_act indexes with int32: inputs must have fewer than 2**31 elements")


# ------------------------------------------------------------------------------------------------
# Launch configuration
# ------------------------------------------------------------------------------------------------
_TILE = 4096  # elements of one (BLOCK_R, BLOCK_C) tile on a GPU


@functools.lru_cache(maxsize=None)
def _num_sms(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _geometry(x):
    """(x viewed in a layout the kernels read, channels_last flag, N, C, S)."""
    N, C = x.shape[0], x.shape[1]
    S = x.numel() // max(N * C, 1)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
        return x, True, N, C, S
    # Contiguous, or any other strides: read as NCHW (a copy only in the last case). When C == 1
    # or S == 1 both layouts are the same bytes and the NCHW reading is exact for both.
    return x.contiguous(), False, N, C, S


def _launch_config(N, C, S, channels_last, device_index, groups=1):
    """Tile sizes and the split of rows over programs, fixed per shape (no autotuning)."""
    return _config(N, C, S, channels_last, None if _INTERPRET else _num_sms(device_index), groups)


@functools.lru_cache(maxsize=1024)
def _config(N, C, S, channels_last, sms, groups=1):
    """``_launch_config`` for a GPU of ``sms`` multiprocessors (None: the interpreter's), the
    rows in ``groups`` row groups of N / groups images each (``units`` per group)."""
    M = N * S // groups  # rows per group

    def np2(n):  # block sizes of at least 2: a masked spare lane is free, 1-wide layouts a corner
        return max(2, triton.next_power_of_2(n))

    if sms is None:
        # ~1.4 ms per program instance: few programs, but small tiles so that tests still cover
        # several channel blocks, several row chunks, several units per chunk and ragged tails.
        BLOCK_C = min(np2(C), 8)
        BLOCK_R = 8
        target_programs, num_warps = 3 * triton.cdiv(C, BLOCK_C), 1
        BLOCK_CF, BLOCK_P = min(np2(C), 8), 2
    else:
        if channels_last:  # channels are contiguous: tiles wide in C
            BLOCK_C = min(np2(C), 64)
            BLOCK_R = min(_TILE // BLOCK_C, np2(M))
        else:  # spatial positions are contiguous: tiles long in S
            BLOCK_R = min(np2(S), 512)
            BLOCK_C = min(np2(C), _TILE // BLOCK_R)
        target_programs = 4 * sms
        num_warps = 8 if BLOCK_R * BLOCK_C >= 4096 else 4
        BLOCK_CF, BLOCK_P = min(np2(C), 32), 128
    n_cblocks = triton.cdiv(C, BLOCK_C)
    nsb = triton.cdiv(S, BLOCK_R)  # units per image (NCHW only)
    units = triton.cdiv(M, BLOCK_R) if channels_last else N // groups * nsb
    group_chunks = max(1, min(units, triton.cdiv(target_programs, n_cblocks * groups)))
    units_per_prog = triton.cdiv(units, group_chunks)
    group_chunks = triton.cdiv(units, units_per_prog)  # no program without work
    return dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, n_cblocks=n_cblocks, nsb=nsb, units=units,
                units_per_prog=units_per_prog, group_chunks=group_chunks,
                chunks=groups * group_chunks, num_warps=num_warps,
                BLOCK_CF=BLOCK_CF, BLOCK_P=min(BLOCK_P, np2(group_chunks)),
                # the folded finalize's tile of partials: (BLOCK_PF, BLOCK_C), at most 1024 values
                BLOCK_PF=min(BLOCK_P, np2(group_chunks), max(2, 1024 // BLOCK_C)),
                # a unit never straddles two groups: (NCHW: a unit is in one image)
                aligned=groups == 1 or not channels_last or M % BLOCK_R == 0)


# A kernel ledger on a machine without a GPU models the launches on an H100 SXM's 132 SMs.
LEDGER_SMS = 132


def kernel_launches(direction, shape, itemsize, channels_last, training=True, need_dx=True,
                    need_dw=True, need_db=True, sms=None, groups=1, fold=None):
    """The Triton launches of one call (``direction`` "forward" or "backward") on an input of
    ``shape`` and ``itemsize``, with the bytes each reads and writes, for a kernel ledger
    (fastwgan.kernels._launches). ``sms``: the GPU's multiprocessors (None: ``LEDGER_SMS``)."""
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    groups = groups if training else 1
    fold = FOLD_FINALIZE if fold is None else fold
    cfg = _config(N, C, S, channels_last, sms or LEDGER_SMS, groups)
    if not cfg["aligned"]:  # one call per group (bn_act does so)
        part = (N // groups,) + tuple(shape[1:])
        return groups * kernel_launches(direction, part, itemsize, channels_last, training,
                                        need_dx, need_dw, need_db, sms, fold=fold)
    x, part, vec = N * C * S * itemsize, cfg["chunks"] * C * 4, C * 4 * groups
    if direction == "forward":
        apply = Launch("bn_act_fwd", 2 * x + 4 * vec)  # x, mean, rstd, weight, bias -> y
        if not training:
            return [apply]
        stats = [Launch("bn_stats_partial", x + 3 * part),
                 Launch("bn_stats_finalize", 3 * part + 6 * vec)]  # running stats read, written
        return _folded(stats, fold) + [apply]
    out = []
    need_coef = need_dx and training
    if need_dw or need_db or need_coef:
        out += _folded([Launch("bn_act_bwd_partial", 2 * x + 4 * vec + 2 * part),
                        Launch("bn_act_bwd_finalize",
                               2 * part + vec * (need_dw + need_db + 2 * need_coef))], fold)
    if need_dx:
        out.append(Launch("bn_act_bwd_dx", 3 * x + 6 * vec))
    return out


def _folded(pair, fold):
    """A partial-sum launch and its finalize, or (``fold``) the one launch doing both."""
    if not fold:
        return pair
    return [Launch(pair[0].name + "+finalize", pair[0].bytes + pair[1].bytes)]


def _launches_of(x, direction, **kw):
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()
    return kernel_launches(direction, tuple(x.shape), x.element_size(), channels_last, **kw)


class _CountedRef(torch.autograd.Function):
    """The twin, counted by a listening ledger as the Triton launches it stands for (forward and
    backward), its own aten ops not counted. Same values as ``bn_act_ref``: it runs it."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, act,
                negative_slope, num_batches_tracked, groups, into_grad):
        launches.record("bn_act", _launches_of(x, "forward", training=training, groups=groups))
        ctx.params = (weight, bias) if into_grad else (None, None)
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip((x, weight, bias), ctx.needs_input_grad[:3])]
        with launches.suppressed(), torch.enable_grad():  # (the counter: in the finalize kernel)
            y = bn_act_ref(*leaves, running_mean, running_var, training, momentum, eps, act,
                           negative_slope, num_batches_tracked, groups)
        ctx.graph, ctx.leaves, ctx.training, ctx.groups = y, leaves, training, groups
        return y.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        needs = ctx.needs_input_grad[:3]
        launches.record("bn_act", _launches_of(dy, "backward", training=ctx.training,
                                               need_dx=needs[0], need_dw=needs[1], need_db=needs[2],
                                               groups=ctx.groups))
        wanted = [t for t, need in zip(ctx.leaves, needs) if need and t is not None]
        with launches.suppressed():
            grads = iter(torch.autograd.grad(ctx.graph, wanted, dy) if wanted else ())
            out = [next(grads) if need and t is not None else None
                   for t, need in zip(ctx.leaves, needs)]
            for i, param in ((1, ctx.params[0]), (2, ctx.params[1])):  # into .grad, as the kernel
                target = _grad_target(param, out[i] is not None)
                if target is not None:
                    target.add_(out[i])
                    out[i] = None
        return (*out, None, None, None, None, None, None, None, None, None, None)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _tile(
        u,                          # unit index
        cols,                       # (BLOCK_C,) channel indices
        M, C, S, NSB,               # rows, channels, spatial size, units per image (NCHW)
        BLOCK_R: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        """Element offsets (BLOCK_R, BLOCK_C) and the row mask (BLOCK_R,) of unit ``u``."""
        r = tl.arange(0, BLOCK_R)
        if CHANNELS_LAST:  # (M, C) row-major
            rows = u * BLOCK_R + r
            row_mask = rows < M
            offs = rows[:, None] * C + cols[None, :]
        else:  # (N, C, S): unit u is spatial block u % NSB of image u // NSB
            n = u // NSB
            s = (u % NSB) * BLOCK_R + r
            row_mask = s < S
            offs = n * C * S + cols[None, :] * S + s[:, None]
        return offs, row_mask

    @triton.jit
    def _unit_range(pid_k, UNITS, UNITS_PER_PROG, GROUP_CHUNKS):
        """Program ``pid_k``'s row group and units [u_start, u_end): each group's UNITS units
        are cut into GROUP_CHUNKS chunks of UNITS_PER_PROG units (its last one shorter)."""
        g = pid_k // GROUP_CHUNKS
        base = g * UNITS
        u_start = base + (pid_k - g * GROUP_CHUNKS) * UNITS_PER_PROG
        u_end = tl.minimum(u_start + UNITS_PER_PROG, base + UNITS)
        return g, u_start, u_end

    @triton.jit
    def _act_fwd(y, negative_slope, ACT: tl.constexpr):
        if ACT == 1:  # relu
            y = tl.where(y > 0, y, 0.0)
        elif ACT == 2:  # leaky_relu
            y = tl.where(y > 0, y, y * negative_slope)
        return y

    @triton.jit
    def _act_bwd(dy, y_pre, negative_slope, ACT: tl.constexpr):
        """dy * act'(y_pre); the derivative at 0 is torch's (0 for relu, slope for leaky)."""
        if ACT == 1:
            dy = tl.where(y_pre > 0, dy, 0.0)
        elif ACT == 2:
            dy = tl.where(y_pre > 0, dy, dy * negative_slope)
        return dy

    @triton.jit
    def _bn_stats_partial_kernel(
        x_ptr,                      # input, (N, C, *spatial) in either layout
        part_ptr,                   # fp32 (3, chunks, C) out: count, mean, M2 of each chunk
        stats_ptr,                  # FOLD: _bn_stats_finalize_kernel's outputs and buffers
        running_mean_ptr,
        running_var_ptr,
        count_ptr,
        tickets_ptr,                # FOLD: int32 (n_cblocks,) zeros, left zeros
        M, C, S, NSB,               # rows, channels, spatial size, units per image (NCHW)
        UNITS, UNITS_PER_PROG,      # units per row group, units per row chunk
        GROUP_CHUNKS,               # row chunks per row group
        eps, momentum,
        FOLD: tl.constexpr,         # the last program of a channel block combines the partials
        HAS_RUNNING: tl.constexpr,
        HAS_COUNT: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        pid_c = tl.program_id(0)
        pid_k = tl.program_id(1)
        chunks = tl.num_programs(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        grp, u_start, u_end = _unit_range(pid_k, UNITS, UNITS_PER_PROG, GROUP_CHUNKS)
        # shift: the chunk's first row (always valid), close to the mean in distribution
        if CHANNELS_LAST:
            first = u_start * BLOCK_R * C + cols
        else:
            first = (u_start // NSB) * C * S + cols * S + (u_start % NSB) * BLOCK_R
        shift = tl.load(x_ptr + first, mask=col_mask, other=0.0).to(tl.float32)
        # accumulate per lane: sums of (x - shift), (x - shift)^2, and the row count
        s1 = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_R], dtype=tl.float32)
        for u in range(u_start, u_end):
            offs, row_mask = _tile(u, cols, M, C, S, NSB, BLOCK_R, CHANNELS_LAST)
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - shift[None, :], 0.0)
            s1 += d
            s2 += d * d
            cnt += row_mask.to(tl.float32)
        # reduce the lanes, then centre: M2 = sum d^2 - (sum d)^2 / n, well-conditioned thanks
        # to the shift
        n = tl.sum(cnt, axis=0)
        sum_d = tl.sum(s1, axis=0)
        mean = shift + sum_d / n
        m2 = tl.maximum(tl.sum(s2, axis=0) - sum_d * (sum_d / n), 0.0)
        out = part_ptr + pid_k * C + cols
        tl.store(out, tl.zeros([BLOCK_C], dtype=tl.float32) + n, mask=col_mask)
        tl.store(out + chunks * C, mean, mask=col_mask)
        tl.store(out + 2 * chunks * C, m2, mask=col_mask)
        if FOLD:
            # Finalize here rather than in a launch of its own: each program takes a ticket
            # (acq_rel: its partials are visible to whoever takes a later one); the channel
            # block's last one combines them all, then puts the ticket counter back to 0 for the
            # next call (and CUDA graph replay).
            ticket = tl.atomic_add(tickets_ptr + pid_c, 1, sem="acq_rel", scope="gpu")
            if ticket == chunks - 1:
                tl.store(tickets_ptr + pid_c, 0)
                _stats_combine(part_ptr, stats_ptr, running_mean_ptr, running_var_ptr, count_ptr,
                               cols, col_mask, C, GROUP_CHUNKS, chunks // GROUP_CHUNKS, eps,
                               momentum, pid_c == 0, HAS_RUNNING, HAS_COUNT, False, BLOCK_P,
                               BLOCK_C)

    @triton.jit
    def _stats_combine(part_ptr, stats_ptr, running_mean_ptr, running_var_ptr, count_ptr, cols,
                       col_mask, C, P, GROUPS, eps, momentum, count_here,
                       HAS_RUNNING: tl.constexpr, HAS_COUNT: tl.constexpr, MOMENTS: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """The statistics of channels ``cols`` from the partials (see _bn_stats_finalize_kernel);
        ``count_here``: this program adds to the batch counter."""
        plane = GROUPS * P * C  # between the count, mean and M2 planes
        if HAS_RUNNING:
            rm = tl.load(running_mean_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            rv = tl.load(running_var_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        else:
            rm = tl.zeros([BLOCK_C], dtype=tl.float32)
            rv = tl.zeros([BLOCK_C], dtype=tl.float32)
        for g in range(0, GROUPS):
            n = tl.zeros([BLOCK_C], dtype=tl.float32)
            mean = tl.zeros([BLOCK_C], dtype=tl.float32)
            m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
            for p0 in range(0, P, BLOCK_P):
                # load a block of the group's partials (masked ones have count 0, weigh nothing)
                ps = p0 + tl.arange(0, BLOCK_P)
                mask = (ps < P)[:, None] & col_mask[None, :]
                offs = (g * P + ps)[:, None] * C + cols[None, :]
                n_i = tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
                mean_i = tl.load(part_ptr + plane + offs, mask=mask, other=0.0, cache_modifier=".cg")
                m2_i = tl.load(part_ptr + 2 * plane + offs, mask=mask, other=0.0,
                               cache_modifier=".cg")
                # combine the block: its count, mean and M2
                n_b = tl.sum(n_i, axis=0)
                n_b_safe = tl.where(n_b > 0, n_b, 1.0)
                mean_b = tl.sum(n_i * mean_i, axis=0) / n_b_safe
                dev = mean_i - mean_b[None, :]
                m2_b = tl.sum(m2_i + n_i * dev * dev, axis=0)
                # Chan's parallel update of the running (n, mean, M2)
                n_new = n + n_b
                n_new_safe = tl.where(n_new > 0, n_new, 1.0)
                delta = mean_b - mean
                mean += delta * (n_b / n_new_safe)
                m2 += m2_b + delta * delta * (n * (n_b / n_new_safe))
                n = n_new
            n_safe = tl.where(n > 0, n, 2.0)
            var = m2 / n_safe  # biased: what normalisation uses
            rstd = tl.rsqrt(var + eps)
            if MOMENTS:  # this rank's part of the group's statistics, gathered for a second pass
                tl.store(stats_ptr + cols, n, mask=col_mask)
                tl.store(stats_ptr + C + cols, mean, mask=col_mask)
                tl.store(stats_ptr + 2 * C + cols, m2, mask=col_mask)
            else:
                tl.store(stats_ptr + g * 2 * C + cols, mean, mask=col_mask)
                tl.store(stats_ptr + g * 2 * C + C + cols, rstd, mask=col_mask)
            # torch's update, with the unbiased variance M2 / (n - 1); the groups in turn, as
            # that many calls would (rounded to the buffers' fp32 after each, as they would)
            rm = (1.0 - momentum) * rm + momentum * mean
            rv = (1.0 - momentum) * rv + momentum * (m2 / (n_safe - 1.0))
        if HAS_RUNNING:
            tl.store(running_mean_ptr + cols, rm.to(running_mean_ptr.dtype.element_ty), mask=col_mask)
            tl.store(running_var_ptr + cols, rv.to(running_var_ptr.dtype.element_ty), mask=col_mask)
        if HAS_COUNT:  # the module's batch counter, here rather than in a launch of its own
            if count_here:
                tl.store(count_ptr, tl.load(count_ptr) + GROUPS)

    @triton.jit
    def _bn_stats_finalize_kernel(
        part_ptr,                   # fp32 (3, GROUPS * P, C): count, mean, M2 per chunk
        stats_ptr,                  # fp32 (GROUPS, 2, C) out: batch mean, rstd; (3, C) with MOMENTS
        running_mean_ptr,           # (C,) updated in place when HAS_RUNNING, by each group in turn
        running_var_ptr,            # (C,) updated in place when HAS_RUNNING, by each group in turn
        count_ptr,                  # () int64 num_batches_tracked, += GROUPS when HAS_COUNT
        C, P, GROUPS,               # channels, chunks per row group, row groups
        eps, momentum,
        HAS_RUNNING: tl.constexpr,
        HAS_COUNT: tl.constexpr,
        MOMENTS: tl.constexpr,      # write the combined count, mean, M2 (a rank's, for sync BN)
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        _stats_combine(part_ptr, stats_ptr, running_mean_ptr, running_var_ptr, count_ptr, cols,
                       cols < C, C, P, GROUPS, eps, momentum, tl.program_id(0) == 0, HAS_RUNNING,
                       HAS_COUNT, MOMENTS, BLOCK_P, BLOCK_C)

    @triton.jit
    def _bn_act_fwd_kernel(
        x_ptr,                      # input, (N, C, *spatial)
        y_ptr,                      # output, same shape, layout and dtype
        mean_ptr,                   # (C,) batch mean (training) or running_mean (eval)
        second_ptr,                 # (C,) batch rstd (training) or running_var (eval)
        w_ptr,                      # (C,) weight
        b_ptr,                      # (C,) bias
        saved_ptr,                  # fp32 (2, C) out, eval only: the mean and rstd used
        M, C, S, NSB, UNITS, UNITS_PER_PROG, GROUP_CHUNKS,
        eps, negative_slope,
        ACT: tl.constexpr,
        FROM_RUNNING: tl.constexpr,  # second_ptr holds a variance: rstd = rsqrt(var + eps)
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        pid_c = tl.program_id(0)
        pid_k = tl.program_id(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        grp, u_start, u_end = _unit_range(pid_k, UNITS, UNITS_PER_PROG, GROUP_CHUNKS)
        # per-channel affine map of the program's row group: y = x * scale + shift (training:
        # the group's (mean, rstd) at g * 2C; eval has one group)
        mean = tl.load(mean_ptr + grp * 2 * C + cols, mask=col_mask, other=0.0).to(tl.float32)
        second = tl.load(second_ptr + grp * 2 * C + cols, mask=col_mask, other=1.0).to(tl.float32)
        if FROM_RUNNING:
            rstd = tl.rsqrt(second + eps)
            if pid_k == 0:
                tl.store(saved_ptr + cols, mean, mask=col_mask)
                tl.store(saved_ptr + C + cols, rstd, mask=col_mask)
        else:
            rstd = second
        w = tl.load(w_ptr + cols, mask=col_mask, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        scale = rstd * w
        shift = b - mean * scale
        for u in range(u_start, u_end):
            # load, normalise, activate, store in y's dtype
            offs, row_mask = _tile(u, cols, M, C, S, NSB, BLOCK_R, CHANNELS_LAST)
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = _act_fwd(x * scale[None, :] + shift[None, :], negative_slope, ACT)
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _saved_affine(stats_ptr, w_ptr, b_ptr, cols, col_mask, C):
        """The forward's mean and rstd of channels ``cols``, and the scale and shift that make
        its pre-activation: y_pre = x * scale + shift (fp32, (BLOCK_C,) each)."""
        mean = tl.load(stats_ptr + cols, mask=col_mask, other=0.0)
        rstd = tl.load(stats_ptr + C + cols, mask=col_mask, other=0.0)
        w = tl.load(w_ptr + cols, mask=col_mask, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        scale = rstd * w
        return mean, rstd, scale, b - mean * scale

    @triton.jit
    def _bn_act_bwd_partial_kernel(
        x_ptr,                      # saved input, (N, C, *spatial)
        dy_ptr,                     # upstream gradient, same shape and layout
        stats_ptr,                  # fp32 (2, C): mean, rstd of the forward
        w_ptr,                      # (C,) weight
        b_ptr,                      # (C,) bias
        part_ptr,                   # fp32 (2, chunks, C) out: sum g, sum g * x_hat per chunk
        dw_ptr,                     # FOLD: _bn_act_bwd_finalize_kernel's outputs
        db_ptr,
        coef_ptr,
        tickets_ptr,                # FOLD: int32 (n_cblocks,) zeros, left zeros
        M, C, S, NSB, UNITS, UNITS_PER_PROG, GROUP_CHUNKS,
        negative_slope, inv_n,
        ACT: tl.constexpr,
        FOLD: tl.constexpr,         # the last program of a channel block combines the partials
        WRITE_DW: tl.constexpr,
        WRITE_DB: tl.constexpr,
        WRITE_COEF: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        pid_c = tl.program_id(0)
        pid_k = tl.program_id(1)
        chunks = tl.num_programs(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        grp, u_start, u_end = _unit_range(pid_k, UNITS, UNITS_PER_PROG, GROUP_CHUNKS)
        mean, rstd, scale, shift = _saved_affine(stats_ptr + grp * 2 * C, w_ptr, b_ptr, cols,
                                                 col_mask, C)
        acc_g = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for u in range(u_start, u_end):
            offs, row_mask = _tile(u, cols, M, C, S, NSB, BLOCK_R, CHANNELS_LAST)
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            # the activation's mask from the forward's pre-activation, recomputed
            g = _act_bwd(dy, x * scale[None, :] + shift[None, :], negative_slope, ACT)
            x_hat = (x - mean[None, :]) * rstd[None, :]
            acc_g += g
            acc_gx += g * x_hat
        out = part_ptr + pid_k * C + cols
        tl.store(out, tl.sum(acc_g, axis=0), mask=col_mask)
        tl.store(out + chunks * C, tl.sum(acc_gx, axis=0), mask=col_mask)
        if FOLD:  # the finalize, by the channel block's last program (_bn_stats_partial_kernel)
            ticket = tl.atomic_add(tickets_ptr + pid_c, 1, sem="acq_rel", scope="gpu")
            if ticket == chunks - 1:
                tl.store(tickets_ptr + pid_c, 0)
                _grad_combine(part_ptr, dw_ptr, db_ptr, coef_ptr, cols, col_mask, C, GROUP_CHUNKS,
                              chunks // GROUP_CHUNKS, inv_n, WRITE_DW, WRITE_DB, WRITE_COEF,
                              BLOCK_P, BLOCK_C)

    @triton.jit
    def _grad_combine(part_ptr, dw_ptr, db_ptr, coef_ptr, cols, col_mask, C, P, GROUPS, inv_n,
                      WRITE_DW: tl.constexpr, WRITE_DB: tl.constexpr, WRITE_COEF: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """dweight, dbias and the dx coefficients of channels ``cols`` from the partials (see
        _bn_act_bwd_finalize_kernel)."""
        sum_g = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_gx = tl.zeros([BLOCK_C], dtype=tl.float32)
        for g in range(0, GROUPS):
            acc_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
            acc_gx = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
            for p0 in range(0, P, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                mask = (ps < P)[:, None] & col_mask[None, :]
                offs = (g * P + ps)[:, None] * C + cols[None, :]
                acc_g += tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
                acc_gx += tl.load(part_ptr + GROUPS * P * C + offs, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            group_g = tl.sum(acc_g, axis=0)
            group_gx = tl.sum(acc_gx, axis=0)
            if WRITE_COEF:
                tl.store(coef_ptr + g * 2 * C + cols, group_g * inv_n, mask=col_mask)
                tl.store(coef_ptr + g * 2 * C + C + cols, group_gx * inv_n, mask=col_mask)
            sum_g += group_g
            sum_gx += group_gx
        # WRITE_DW, WRITE_DB: 0 no, 1 store, 2 add into what is there (the parameter's .grad)
        if WRITE_DW == 2:
            sum_gx += tl.load(dw_ptr + cols, mask=col_mask, other=0.0)
        if WRITE_DB == 2:
            sum_g += tl.load(db_ptr + cols, mask=col_mask, other=0.0)
        if WRITE_DW > 0:
            tl.store(dw_ptr + cols, sum_gx, mask=col_mask)
        if WRITE_DB > 0:
            tl.store(db_ptr + cols, sum_g, mask=col_mask)

    @triton.jit
    def _bn_act_bwd_finalize_kernel(
        part_ptr,                   # fp32 (2, GROUPS * P, C): sum g, sum g * x_hat per chunk
        dw_ptr,                     # fp32 (C,) out when WRITE_DW: sum g * x_hat, all groups (+=: 2)
        db_ptr,                     # fp32 (C,) out when WRITE_DB: sum g, all groups (+=: 2)
        coef_ptr,                   # fp32 (GROUPS, 2, C) out when WRITE_COEF: mean g, mean g * x_hat
        C, P, GROUPS, inv_n,        # channels, chunks per row group, row groups, 1 / group's rows
        WRITE_DW: tl.constexpr,
        WRITE_DB: tl.constexpr,
        WRITE_COEF: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        _grad_combine(part_ptr, dw_ptr, db_ptr, coef_ptr, cols, cols < C, C, P, GROUPS, inv_n,
                      WRITE_DW, WRITE_DB, WRITE_COEF, BLOCK_P, BLOCK_C)

    @triton.jit
    def _bn_act_bwd_dx_kernel(
        x_ptr,                      # saved input, (N, C, *spatial)
        dy_ptr,                     # upstream gradient, same shape and layout
        dx_ptr,                     # out, same shape, layout and dtype as x
        stats_ptr,                  # fp32 (2, C): mean, rstd of the forward
        w_ptr,                      # (C,) weight
        b_ptr,                      # (C,) bias
        coef_ptr,                   # fp32 (2, C): mean g, mean g * x_hat (TRAINING only)
        M, C, S, NSB, UNITS, UNITS_PER_PROG, GROUP_CHUNKS,
        negative_slope,
        ACT: tl.constexpr,
        TRAINING: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        pid_c = tl.program_id(0)
        pid_k = tl.program_id(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        grp, u_start, u_end = _unit_range(pid_k, UNITS, UNITS_PER_PROG, GROUP_CHUNKS)
        mean, rstd, scale, shift = _saved_affine(stats_ptr + grp * 2 * C, w_ptr, b_ptr, cols,
                                                 col_mask, C)
        if TRAINING:
            mean_g = tl.load(coef_ptr + grp * 2 * C + cols, mask=col_mask, other=0.0)
            mean_gx = tl.load(coef_ptr + grp * 2 * C + C + cols, mask=col_mask, other=0.0)
        for u in range(u_start, u_end):
            offs, row_mask = _tile(u, cols, M, C, S, NSB, BLOCK_R, CHANNELS_LAST)
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = _act_bwd(dy, x * scale[None, :] + shift[None, :], negative_slope, ACT)
            if TRAINING:
                # BatchNorm backward with batch statistics (Ioffe & Szegedy 2015, section 3):
                # dx = rstd * w * (g - mean(g) - x_hat * mean(g * x_hat))
                x_hat = (x - mean[None, :]) * rstd[None, :]
                dx = scale[None, :] * (g - mean_g[None, :] - x_hat * mean_gx[None, :])
            else:  # the statistics are constants
                dx = scale[None, :] * g
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launch wrappers and the autograd Function
# ------------------------------------------------------------------------------------------------
def _device_index(t):
    return t.device.index if t.is_cuda else -1


# Whether the partial-sum kernels finalize by their last program (one launch each way fewer);
# the sync-bn path, whose collective comes in between, launches the finalize on its own.
FOLD_FINALIZE = True
_TICKETS: dict = {}


def _tickets(device, n):
    """The int32 counters of the folded finalize, one per channel block: zeros, allocated once
    per device (before any CUDA graph capture: the first call is eager) and left zeros by every
    launch that uses them."""
    t = _TICKETS.get(device)
    if t is None or t.numel() < n:
        t = _TICKETS[device] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return t


def _grad_target(param, needed):
    """``param.grad`` where a gradient can be added straight into it (an fp32 (C,) contiguous
    tensor), else None."""
    grad = None if param is None or not needed else param.grad
    if grad is None or grad.dtype != torch.float32 or not grad.is_contiguous():
        return None
    return grad


def _sms_of(x):
    return _num_sms(x.device.index) if x.is_cuda and not _INTERPRET else None


def _grid_args(cfg, N, C, S):
    M = N * S
    return (M, C, S, cfg["nsb"], cfg["units"], cfg["units_per_prog"], cfg["group_chunks"])


def _finalize_stats(part, out, running_mean, running_var, C, P, eps, momentum, BLOCK_CF,
                    BLOCK_P, moments=False, count=None, groups=1):
    """Combine the (3, groups * P, C) partials into ``out``: each group's (mean, rstd) and the
    running statistics' update (group after group), or with ``moments`` the combined (count,
    mean, M2) of one group."""
    has_running = running_mean is not None
    _bn_stats_finalize_kernel[(triton.cdiv(C, BLOCK_CF),)](
        part, out, running_mean if has_running else out, running_var if has_running else out,
        count if count is not None else out,
        C, P, groups, eps, momentum, HAS_RUNNING=has_running, HAS_COUNT=count is not None,
        MOMENTS=moments, BLOCK_P=BLOCK_P,
        BLOCK_C=BLOCK_CF, num_warps=4)


def _grad_sums(ctx, x, dy, stats, w, b, cfg, grid, dims, blocks, need_dw, need_db, need_coef,
               n_all):
    """The backward's per-channel sums of g and g * x_hat, split over programs, then combined:
    dweight, dbias (or added into the parameters' .grad: ``into_w``, ``into_b``) and the dx
    coefficients. Returns (dw, db, coef, into_w, into_b)."""
    group, groups, C = ctx.group, ctx.groups, x.shape[1]
    N, S = ctx.geometry[1], ctx.geometry[3]
    f32 = dict(dtype=torch.float32, device=x.device)
    part = torch.empty((2, cfg["chunks"], C), **f32)
    # straight into the parameters' .grad (ctx.into_grad: the caller has no grad hooks)
    into_w, into_b = (_grad_target(p, need) if ctx.into_grad else None
                      for p, need in zip(ctx.params, (need_dw, need_db)))
    dw = into_w if into_w is not None else torch.empty(C, **f32) if need_dw else None
    db = into_b if into_b is not None else torch.empty(C, **f32) if need_db else None
    coef = torch.empty((groups, 2, C), **f32) if need_coef else None
    # sync BN: the rank's sums (inv_n 1), summed over the group, over the group's count
    inv_n = 1.0 if group is not None else groups / (N * S)
    outs = (dw if need_dw else part, db if need_db else part, coef if need_coef else part)
    writes = dict(WRITE_DW=2 if into_w is not None else int(need_dw),
                  WRITE_DB=2 if into_b is not None else int(need_db), WRITE_COEF=need_coef)
    fold = group is None and FOLD_FINALIZE  # the finalize in the partial kernel
    _bn_act_bwd_partial_kernel[grid](
        x, dy, stats, w, b, part, *outs, _tickets(x.device, cfg["n_cblocks"]), *dims,
        ctx.negative_slope, inv_n, ACT=ctx.act, FOLD=fold, BLOCK_P=cfg["BLOCK_PF"],
        **writes, **blocks)
    if not fold:
        _bn_act_bwd_finalize_kernel[(triton.cdiv(C, cfg["BLOCK_CF"]),)](
            part, *outs, C, cfg["group_chunks"], groups, inv_n, **writes,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_CF"], num_warps=4)
    if need_coef and group is not None:
        _all_reduce_sum_(coef, group).div_(n_all[0])
    return dw, db, coef, into_w, into_b


class _BnAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, act,
                negative_slope, group=None, count=None, groups=1, into_grad=False):
        # (1) shapes and layout
        x, channels_last, N, C, S = _geometry(x)
        cfg = _launch_config(N, C, S, channels_last, _device_index(x), groups)
        grid = (cfg["n_cblocks"], cfg["chunks"])
        dims = _grid_args(cfg, N, C, S)
        blocks = dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_C=cfg["BLOCK_C"], CHANNELS_LAST=channels_last,
                      num_warps=cfg["num_warps"])
        f32 = dict(dtype=torch.float32, device=x.device)
        w = weight if weight is not None else torch.ones(C, **f32)
        b = bias if bias is not None else torch.zeros(C, **f32)
        # (2) allocate
        y = torch.empty_like(x)
        stats = torch.empty((groups, 2, C), **f32)  # each group's mean, rstd: saved for backward
        # (3) launch
        launches.record("bn_act", kernel_launches("forward", (N, C, S), x.element_size(),
                                                  channels_last, training, sms=_sms_of(x),
                                                  groups=groups,
                                                  fold=group is None and FOLD_FINALIZE))
        n_all = None  # sync BN: the group's count per channel, for the backward
        if training and group is None and FOLD_FINALIZE:  # two launches
            part = torch.empty((3, cfg["chunks"], C), **f32)
            _bn_stats_partial_kernel[grid](
                x, part, stats, running_mean if running_mean is not None else stats,
                running_var if running_var is not None else stats,
                count if count is not None else stats, _tickets(x.device, cfg["n_cblocks"]),
                *dims, eps, momentum, FOLD=True, HAS_RUNNING=running_mean is not None,
                HAS_COUNT=count is not None, BLOCK_P=cfg["BLOCK_PF"], **blocks)
            flat = stats.view(-1)
            _bn_act_fwd_kernel[grid](x, y, flat, flat[C:], w, b, stats, *dims, eps,
                                     negative_slope, ACT=act, FROM_RUNNING=False, **blocks)
        elif training:
            part = torch.empty((3, cfg["chunks"], C), **f32)
            _bn_stats_partial_kernel[grid](x, part, part, part, part, part, part, *dims, eps,
                                           momentum, FOLD=False, HAS_RUNNING=False,
                                           HAS_COUNT=False, BLOCK_P=2, **blocks)
            if group is not None:  # this rank's moments, gathered: the group's partials
                moments = torch.empty((3, C), **f32)
                _finalize_stats(part, moments, None, None, C, cfg["chunks"], eps, momentum,
                                cfg["BLOCK_CF"], BLOCK_P=cfg["BLOCK_P"], moments=True)
                part = _all_gather_stacked(moments, group).transpose(0, 1).contiguous()  # (3, W, C)
                n_all = part[0].sum(0)  # (C,) the group's count, for the backward
            _finalize_stats(part, stats, running_mean, running_var, C,
                            part.shape[1] // groups, eps, momentum, cfg["BLOCK_CF"], count=count,
                            groups=groups,
                            BLOCK_P=cfg["BLOCK_P"] if group is None else
                            min(cfg["BLOCK_P"], max(2, triton.next_power_of_2(part.shape[1]))))
            flat = stats.view(-1)  # the kernel adds group g's offset g * 2C
            _bn_act_fwd_kernel[grid](x, y, flat, flat[C:], w, b, stats, *dims, eps,
                                     negative_slope, ACT=act, FROM_RUNNING=False, **blocks)
        else:
            _bn_act_fwd_kernel[grid](x, y, running_mean, running_var, w, b, stats, *dims, eps,
                                     negative_slope, ACT=act, FROM_RUNNING=True, **blocks)
        ctx.save_for_backward(x, w, b, stats, *(() if n_all is None else (n_all,)))
        ctx.group, ctx.groups = group, groups
        ctx.into_grad, ctx.params = into_grad, ((weight, bias) if into_grad else (None, None))
        ctx.geometry = (channels_last, N, C, S)
        ctx.training, ctx.act, ctx.negative_slope = training, act, negative_slope
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w, b, stats, *n_all = ctx.saved_tensors
        channels_last, N, C, S = ctx.geometry
        group = ctx.group
        need_dx = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1] and ctx.has_weight
        need_db = ctx.needs_input_grad[2] and ctx.has_bias
        dx = dw = db = None
        # the kernels read dy with x's layout
        dy = dy.contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)
        groups = ctx.groups
        cfg = _launch_config(N, C, S, channels_last, _device_index(x), groups)
        grid = (cfg["n_cblocks"], cfg["chunks"])
        dims = _grid_args(cfg, N, C, S)
        blocks = dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_C=cfg["BLOCK_C"], CHANNELS_LAST=channels_last,
                      num_warps=cfg["num_warps"])
        need_coef = need_dx and ctx.training
        launches.record("bn_act", kernel_launches("backward", (N, C, S), x.element_size(),
                                                  channels_last, ctx.training, need_dx, need_dw,
                                                  need_db, sms=_sms_of(x), groups=groups,
                                                  fold=group is None and FOLD_FINALIZE))
        coef = into_w = into_b = None
        if need_dw or need_db or need_coef:
            dw, db, coef, into_w, into_b = _grad_sums(ctx, x, dy, stats, w, b, cfg, grid, dims,
                                                      blocks, need_dw, need_db, need_coef,
                                                      n_all)
        if need_dx:
            dx = torch.empty_like(x)
            _bn_act_bwd_dx_kernel[grid](x, dy, dx, stats, w, b, coef if need_coef else stats,
                                        *dims, ctx.negative_slope, ACT=ctx.act,
                                        TRAINING=ctx.training, **blocks)
        if into_w is not None:
            dw = None  # added into weight.grad already
        if into_b is not None:
            db = None
        if dw is not None and dw.dtype != w.dtype:
            dw = dw.to(w.dtype)
        if db is not None and db.dtype != b.dtype:
            db = db.to(b.dtype)
        return dx, dw, db, None, None, None, None, None, None, None, None, None, None, None
