"""Fused BatchNorm + activation (``fastwgan.kernels.bn_act``) against its twin and nn.BatchNorm2d.

On CPU the Triton kernels run under the interpreter (conftest.py sets TRITON_INTERPRET=1), in fp32,
at tiny shapes. Under the interpreter the launch configuration uses 8-channel blocks, 8-row units
and at most 3 row chunks, so these shapes cover several channel blocks, several row chunks, several
units per chunk, ragged tails in both directions and a multi-block finalize.

Tolerances (fp32). The kernels and torch sum in different orders, so results differ by rounding:
  y, dx, running stats: values of order 1 to 10, rtol 1e-5 / atol 1e-5 (about 100 fp32 ulps);
  dweight, dbias: sums of up to N*H*W = 162 terms of magnitude up to ~10, so a different summation
  order moves them by up to ~162 * 6e-8 * 10 = 1e-4: rtol 1e-5 / atol 1e-4.
The GPU tests (compiled kernels, fp32 / bf16 / fp16) bound the error by torch's own error at that
precision, flash-attention style: max|fast - ref_fp32| <= 2 * max|ref_lowp - ref_fp32| + atol.
Every comparison takes the gradients without the activation's ties (``fastwgan.parity.untie``):
elements whose pre-activation lies within rounding of 0, where either side is right.
"""
from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch
from torch import nn

from fastwgan.config import Config
from fastwgan.kernels import bn_act, bn_act_ref
from fastwgan.models import Critic, Generator
from fastwgan.parity import activation_ties, bn_case, bn_error_bound, bn_launches, untie
from fastwgan.parity import bn_inputs as make_inputs
from fastwgan.parity import bn_run as run

# the module (the package attribute ``bn_act`` is the function)
bn_act_mod = importlib.import_module("fastwgan.kernels.bn_act")

ACTS = ["relu", "leaky_relu", "none"]
SLOPE = 0.2

SHAPES = [
    pytest.param((2, 4, 3, 3), id="C4-3x3"),      # C a power of two, odd spatial size
    pytest.param((2, 3, 5, 7), id="C3-5x7"),      # C not a power of two, odd non-square spatial
    pytest.param((1, 6, 3, 5), id="N1-C6-3x5"),   # batch 1 with H*W > 1
    pytest.param((2, 20, 2, 3), id="C20-2x3"),    # three channel blocks, the last one ragged
    pytest.param((3, 5, 1, 1), id="C5-1x1"),      # H = W = 1: both layouts are the same bytes
    pytest.param((2, 3, 9, 9), id="C3-9x9"),      # several units per chunk (NCHW: 11 per image)
    pytest.param((2, 16, 4, 4), id="C16-4x4"),    # powers of two everywhere (a generator block)
]
LAYOUTS = [
    pytest.param(torch.contiguous_format, id="nchw"),
    pytest.param(torch.channels_last, id="channels_last"),
]
TOL = {  # (rtol, atol); see the module docstring
    "y": (1e-5, 1e-5),
    "running_mean": (1e-5, 1e-5),
    "running_var": (1e-5, 1e-5),
    "dx": (1e-5, 1e-5),
    "dweight": (1e-5, 1e-4),
    "dbias": (1e-5, 1e-4),
}


def nn_module_fn(training, act):
    """nn.BatchNorm2d + the activation module, as a function of (x, w, b, rm, rv)."""

    def fn(x, w, b, rm, rv):
        bn = nn.BatchNorm2d(x.shape[1], eps=1e-5, momentum=0.1).to(x.device).train(training)
        # the caller's tensors stand in for the module's (the running stats update in place)
        y = torch.func.functional_call(
            bn, {"weight": w, "bias": b, "running_mean": rm, "running_var": rv}, (x,))
        a = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(SLOPE), "none": nn.Identity()}[act]
        return a(y)

    return fn


def assert_all_close(actual: dict, expected: dict, what: str, tol=TOL):
    assert actual.keys() == expected.keys()
    for k in expected:
        rtol, atol = tol[k]
        # assert_close reports the greatest differences and their indices
        torch.testing.assert_close(actual[k], expected[k], rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{what}, {k}: {m}")


# ------------------------------------------------------------------------------------------------
# Parity, every edge case
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_twin_and_nn_batchnorm(shape, layout, act, training):
    x, w, b, rm, rv, dy = make_inputs(shape, layout)
    dy, _ = untie(x, w, b, rm, rv, dy, training, act)
    kw = dict(training=training, momentum=0.1, eps=1e-5, act=act, negative_slope=SLOPE)
    fast = run(bn_act, x, w, b, rm, rv, dy, impl="triton", **kw)
    twin = run(bn_act_ref, x, w, b, rm, rv, dy, **kw)
    module = run(nn_module_fn(training, act), x, w, b, rm, rv, dy)
    assert_all_close(fast, twin, "triton vs bn_act_ref")
    assert_all_close(fast, module, "triton vs nn.BatchNorm2d + activation")
    # same dtype and memory format as the input, for y and dx
    for k in ("y", "dx"):
        assert fast[k].dtype == x.dtype
        assert fast[k].is_contiguous(memory_format=layout), k
    if not training:  # eval leaves the running statistics alone
        assert torch.equal(fast["running_mean"], rm) and torch.equal(fast["running_var"], rv)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_without_running_stats(layout):
    # track_running_stats=False: batch statistics, nothing to update
    x, w, b, _, _, dy = make_inputs((2, 5, 3, 3), layout, seed=1)
    fast = run(bn_act, x, w, b, None, None, dy, training=True)
    twin = run(bn_act_ref, x, w, b, None, None, dy, training=True)
    assert_all_close(fast, twin, "running stats None")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("which", ["none", "weight_only", "bias_only"])
def test_affine_false(which, training):
    # weight and/or bias None count as ones and zeros; their gradients do not exist
    x, w, b, rm, rv, dy = make_inputs((2, 6, 3, 3), torch.channels_last, seed=2)
    w = w if which == "weight_only" else None
    b = b if which == "bias_only" else None
    outs = []
    for fn in (bn_act, bn_act_ref):
        xl = x.clone().requires_grad_()
        wl = None if w is None else w.clone().requires_grad_()
        bl = None if b is None else b.clone().requires_grad_()
        rml, rvl = rm.clone(), rv.clone()
        y = fn(xl, wl, bl, rml, rvl, training=training, act="leaky_relu")
        leaves = [t for t in (xl, wl, bl) if t is not None]
        outs.append([y, rml, rvl, *torch.autograd.grad(y, leaves, dy)])
    for i, (a, e) in enumerate(zip(*outs)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4,
                                   msg=lambda m, i=i: f"output {i}: {m}")


class _MustNotLaunch:
    """Stands in for a kernel that ctx.needs_input_grad says must not run."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, grid):
        raise AssertionError(f"{self.name} was launched although its result is not needed")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_only_needed_gradients_are_computed(monkeypatch, training):
    x, w, b, rm, rv, dy = make_inputs((2, 5, 3, 3), torch.contiguous_format, seed=3)
    kw = dict(training=training, act="relu")
    ref = run(bn_act_ref, x, w, b, rm, rv, dy, **kw)
    # x frozen (the first layer's input): no dx kernel
    with monkeypatch.context() as m:
        m.setattr(bn_act_mod, "_bn_act_bwd_dx_kernel", _MustNotLaunch("the dx kernel"))
        wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = bn_act(x, wl, bl, rm.clone(), rv.clone(), **kw)
        dw, db = torch.autograd.grad(y, (wl, bl), dy)
    torch.testing.assert_close(dw, ref["dweight"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(db, ref["dbias"], rtol=1e-5, atol=1e-4)
    # parameters frozen: eval needs no reduction at all, training still needs the sums for dx
    with monkeypatch.context() as m:
        if not training:
            m.setattr(bn_act_mod, "_bn_act_bwd_partial_kernel", _MustNotLaunch("the partial sums"))
            m.setattr(bn_act_mod, "_bn_act_bwd_finalize_kernel", _MustNotLaunch("the finalize"))
        xl = x.clone().requires_grad_()
        y = bn_act(xl, w, b, rm.clone(), rv.clone(), **kw)
        (dx,) = torch.autograd.grad(y, (xl,), dy)
    torch.testing.assert_close(dx, ref["dx"], rtol=1e-5, atol=1e-5)


def test_grad_in_another_layout_than_x():
    # y is channels_last but the upstream gradient arrives contiguous (and the reverse)
    for layout, other in ((torch.channels_last, torch.contiguous_format),
                          (torch.contiguous_format, torch.channels_last)):
        x, w, b, rm, rv, dy = make_inputs((2, 5, 3, 4), layout, seed=4)
        dy = dy.contiguous(memory_format=other)
        assert_all_close(run(bn_act, x, w, b, rm, rv, dy), run(bn_act_ref, x, w, b, rm, rv, dy),
                         f"dy in {other}")


def test_non_dense_input():
    # a strided view (neither layout): read through a contiguous copy, still correct
    x, w, b, rm, rv, dy = make_inputs((2, 5, 6, 4), torch.contiguous_format, seed=5)
    x, dy = x[:, :, ::2], dy[:, :, ::2]
    assert not x.is_contiguous()
    assert_all_close(run(bn_act, x, w, b, rm, rv, dy), run(bn_act_ref, x, w, b, rm, rv, dy),
                     "strided input")


def test_impl_ref_is_the_twin():
    x, w, b, rm, rv, dy = make_inputs((2, 3, 3, 3), torch.contiguous_format)
    a = run(bn_act, x, w, b, rm, rv, dy, impl="ref", act="leaky_relu")
    e = run(bn_act_ref, x, w, b, rm, rv, dy, act="leaky_relu")
    for k in e:
        assert torch.equal(a[k], e[k]), k


def test_falls_back_to_the_twin_with_one_warning(monkeypatch):
    # CPU tensors without the interpreter: the compiled kernels cannot run
    monkeypatch.setattr(bn_act_mod, "_INTERPRET", False)
    monkeypatch.setattr(bn_act_mod, "_fallback_warned", False)
    x, w, b, rm, rv, dy = make_inputs((2, 3, 3, 3), torch.contiguous_format)
    with pytest.warns(RuntimeWarning, match="falls back"):
        a = run(bn_act, x, w, b, rm, rv, dy, impl="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        run(bn_act, x, w, b, rm, rv, dy, impl="triton")
    e = run(bn_act_ref, x, w, b, rm, rv, dy)
    for k in e:
        assert torch.equal(a[k], e[k]), k


@pytest.mark.parametrize("bad, match", [
    (dict(act="gelu"), "act must be one of"),
    (dict(impl="cuda"), "impl must be one of"),
    (dict(momentum=None), "momentum=None"),
    (dict(training=False, running=False), "eval mode"),
    (dict(shape=(1, 4, 1, 1)), "more than 1 value per channel"),  # torch's own rule
    (dict(weight_shape=(3,)), "weight must be"),
])
def test_clear_errors(bad, match):
    bad = dict(bad)
    shape = bad.pop("shape", (2, 4, 3, 3))
    x, w, b, rm, rv, _ = make_inputs(shape, torch.contiguous_format)
    if "weight_shape" in bad:
        w = torch.ones(bad.pop("weight_shape"))
    if not bad.pop("running", True):
        rm = rv = None
    with pytest.raises(ValueError, match=match):
        bn_act(x, w, b, rm, rv, **bad)


# ------------------------------------------------------------------------------------------------
# Ties at the activation's threshold
# ------------------------------------------------------------------------------------------------
# The trainer's start-of-run check on a GPU: the critic's first BatchNorm block at batch 64, fp32,
# its seed-0 inputs. One element's pre-activation is -5.47e-7 in fp64: fp32 rounding may put it on
# either side of 0, and where the kernel and torch took opposite sides the check failed with
# "dx: 1.43 > 2 * 0 + 4.16e-05" (torch's own fp32 error being 0 against itself).
START_OF_RUN = dict(shape=(64, 128, 16, 16), layout=torch.channels_last, act="leaky_relu",
                    training=True)
TIED = (14, 84, 7, 10)


def pre_activation_fp64(x, w, b):
    """bn(x) in fp64 with the batch's statistics, and the per-channel scale w * rstd (N, C, 1, 1)."""
    xd = x.detach().double()
    var, mean = torch.var_mean(xd, (0, 2, 3), unbiased=False, keepdim=True)
    scale = w.detach().double().view(1, -1, 1, 1) * (var + 1e-5).rsqrt()
    return (xd - mean) * scale + b.detach().double().view(1, -1, 1, 1), scale


def rounds_ties_up(x, w, b, rm, rv, impl=None, **kw):
    """The twin on x with each element whose fp64 pre-activation lies in (-1e-6, 0] moved to
    4e-6 above 0 (by a few ulps of x: the batch statistics move by 1e-10): a kernel whose fp32
    rounding error there has the other sign than torch's. (At ``TIED`` torch's fp32 value is
    -1.75e-6, 1.2e-6 below fp64's; the twin computing this stand-in lands near +2.8e-6.)"""
    pre, scale = pre_activation_fp64(x, w, b)
    shift = torch.where((pre > -1e-6) & (pre <= 0), (4e-6 - pre) / scale, 0.0)
    return bn_act_ref(x + shift.to(x.dtype), w, b, rm, rv, **kw)


def mask_threshold_at(delta):
    """The twin's forward, but the derivative of an activation whose threshold is at ``delta``
    instead of 0: a kernel with a wrong mask near the threshold (training, batch statistics)."""
    def fn(x, w, b, rm, rv, impl=None, **kw):
        y = bn_act_ref(x, w, b, rm, rv, **kw)
        shifted = bn_act_ref(x, w, b - delta, None, None, **kw)
        return y.detach() + (shifted - shifted.detach())
    return fn


def test_the_start_of_run_case_has_a_tie():
    x, w, b, rm, rv, _ = make_inputs(START_OF_RUN["shape"], START_OF_RUN["layout"])
    pre, _ = pre_activation_fp64(x, w, b)
    assert pre[TIED].item() == pytest.approx(-5.47e-7, rel=1e-3)
    assert int((pre.abs() < 1e-6).sum()) == 1  # the only one as close
    ties = activation_ties(x, w, b, rm, rv, True, "leaky_relu")
    assert ties[TIED]
    # the width is fp32 rounding (parity.TIE_ULPS_*): a few dozen of 2 million elements
    assert 1 <= int(ties.sum()) <= 100
    assert not activation_ties(x, w, b, rm, rv, True, "none").any()


@pytest.fixture
def one_thread():
    """torch on one CPU thread: the twin's batch statistics are a reduction whose order, and so
    the fp32 value at ``TIED`` that the stand-in kernel rounds the other way, follows the thread
    count; the reported failure is the one-thread value."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_tie_rounded_the_other_way_is_left_out_and_counted(monkeypatch, one_thread):
    shape, layout, act, training = START_OF_RUN.values()
    x, w, b, rm, rv, dy = make_inputs(shape, layout)
    kw = dict(training=training, act=act, negative_slope=SLOPE)
    # compared with the tie in the gradients, as before: the failure seen at the start of a run
    fast = run(rounds_ties_up, x, w, b, rm, rv, dy, **kw)
    ref = run(bn_act_ref, x, w, b, rm, rv, dy, **kw)
    problem = bn_error_bound(fast, ref, ref, torch.float32)
    assert problem is not None and problem.startswith(
        f"dx: max |fast - ref_fp32| = 1.43 > 2 * 0 + 4.16e-05, worst at {TIED}")
    # the comparison the self-check, the GPU tests and the start-of-run check make
    monkeypatch.setattr(bn_act_mod, "bn_act", rounds_ties_up)
    note = bn_case(shape, torch.float32, layout, act, training, torch.device("cpu"))
    n = int(activation_ties(x, w, b, rm, rv, training, act).sum())
    assert note == (f"{n} of 2,097,152 elements within rounding of the leaky_relu threshold left "
                    "out of the gradients")


def test_a_wrong_mask_near_the_threshold_still_fails(monkeypatch):
    # a threshold at 1e-3 flips the derivative of ~800 elements, each ~100x farther from 0 than
    # the widest tie: the comparison must not take them for ties
    shape, layout, act, training = START_OF_RUN.values()
    monkeypatch.setattr(bn_act_mod, "bn_act", mask_threshold_at(1e-3))
    with pytest.raises(AssertionError, match=r"^dx: max \|fast - ref_fp32\| = .* \(\d+ of 2,097,152 "
                                             r"elements within rounding of the leaky_relu"):
        bn_case(shape, torch.float32, layout, act, training, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# The whole networks, impl="triton" against impl="ref" with the same weights
# ------------------------------------------------------------------------------------------------
MODEL_TOL = dict(rtol=1e-4, atol=1e-5)  # several layers: per-layer 1e-6 differences compound


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("net", ["generator", "critic"])
def test_networks_triton_matches_ref(net, layout):
    torch.manual_seed(0)
    if net == "generator":
        def make(impl):
            return Generator(image_size=32, nz=8, ngf=4, impl=impl)
        inp = torch.randn(2, 8, 1, 1)
    else:
        def make(impl):
            return Critic(image_size=32, ndf=4, impl=impl)
        inp = torch.randn(2, 3, 32, 32)
    ref, fast = make("ref"), make("triton")
    fast.load_state_dict(ref.state_dict())
    ref.to(memory_format=layout)
    fast.to(memory_format=layout)
    inp = inp.contiguous(memory_format=layout)
    inp_ref, inp_fast = inp.clone().requires_grad_(), inp.clone().requires_grad_()

    # training step: forward, backward of a fixed random projection
    out_ref, out_fast = ref(inp_ref), fast(inp_fast)
    probe = torch.randn_like(out_ref)
    (out_ref * probe).sum().backward()
    (out_fast * probe).sum().backward()
    torch.testing.assert_close(out_fast, out_ref, **MODEL_TOL, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(inp_fast.grad, inp_ref.grad, **MODEL_TOL,
                               msg=lambda m: f"input grad: {m}")
    buffers_ref = dict(ref.named_buffers())
    for name, buf in fast.named_buffers():  # running stats and num_batches_tracked
        torch.testing.assert_close(buf, buffers_ref[name], **MODEL_TOL,
                                   msg=lambda m, name=name: f"buffer {name}: {m}")
    params_ref = dict(ref.named_parameters())
    n_grads = 0
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, params_ref[name].grad, **MODEL_TOL,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")
        n_grads += 1
    assert n_grads == len(params_ref)

    # eval: the running statistics just updated
    ref.eval()
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(inp), ref(inp), **MODEL_TOL,
                                   msg=lambda m: f"eval output: {m}")


# ------------------------------------------------------------------------------------------------
# Compiled kernels on a GPU, fp32 / bf16 / fp16
# ------------------------------------------------------------------------------------------------
GPU_SHAPES = [
    (64, 512, 4, 4),    # the generator's first block, batch 64
    (64, 64, 32, 32),   # one channel block, hundreds of row chunks
    (8, 96, 7, 9),      # C not a power of two, odd spatial
    (1, 128, 5, 3),     # batch 1
    (3, 1000, 2, 2),    # many channel blocks, ragged last one
]
GPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# By default the GPU matrix is what the trainer launches (every DCGAN 64x64 block at batch 64,
# channels_last, fp32 and bf16, training mode, and the generator's blocks in eval mode for the
# sample grids): the kernels compile per variant, and a first GPU call has minutes, not the
# quarter of an hour the whole matrix takes to compile. FASTWGAN_GPU_MATRIX=full runs every
# shape above x dtype x layout x activation x mode.
FULL_GPU_MATRIX = os.environ.get("FASTWGAN_GPU_MATRIX", "") == "full"


def _gpu_cases():
    def case(shape, dtype, layout, act, training):
        lid = "nchw" if layout == torch.contiguous_format else "channels_last"
        return pytest.param(shape, dtype, layout, act, training, id="-".join(
            ["x".join(map(str, shape)), str(dtype).split(".")[-1], lid, act,
             "train" if training else "eval"]))

    if FULL_GPU_MATRIX:
        return [case(s, d, lay.values[0], a, t) for s in GPU_SHAPES for d in GPU_DTYPES
                for lay in LAYOUTS for a in ACTS for t in (True, False)]
    return [case(s, d, torch.channels_last, a, t) for d in (torch.float32, torch.bfloat16)
            for s, a, t in bn_launches(Config().resolved())]


@pytest.mark.gpu
@pytest.mark.parametrize("shape, dtype, layout, act, training", _gpu_cases())
def test_gpu_error_within_torch_error(shape, dtype, layout, act, training):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, w, b, rm, rv, dy = make_inputs(shape, layout, device="cuda", dtype=dtype)
    dy, ties = untie(x, w, b, rm, rv, dy, training, act)
    kw = dict(training=training, act=act, negative_slope=SLOPE)
    fast = run(bn_act, x, w, b, rm, rv, dy, impl="triton", **kw)
    ref_low = run(bn_act_ref, x, w, b, rm, rv, dy, **kw)  # torch at the input's precision
    ref_32 = run(bn_act_ref, x.float(), w, b, rm, rv, dy.float(), **kw)  # same values, upcast
    assert fast["y"].dtype == dtype and fast["dx"].dtype == dtype
    assert fast["y"].is_contiguous(memory_format=layout)
    assert fast["dx"].is_contiguous(memory_format=layout)
    problem = bn_error_bound(fast, ref_low, ref_32, dtype)
    assert problem is None, f"{problem} ({ties} ties left out of the gradients)"


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    # no host sync or allocation outside the graph pool: forward and backward replay in a graph
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, w, b, rm, rv, dy = make_inputs((16, 64, 8, 8), torch.channels_last, device="cuda")
    w.requires_grad_()
    b.requires_grad_()

    def step():
        xl = x.detach().requires_grad_()
        y = bn_act(xl, w, b, rm, rv, training=True, act="relu")
        return (y, *torch.autograd.grad(y, (xl, w, b), dy))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles the kernels before the capture
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    x.copy_(torch.randn_like(x))  # new data in the static input
    rm_ref, rv_ref = rm.clone(), rv.clone()
    graph.replay()
    torch.cuda.synchronize()
    ref = run(bn_act_ref, x, w.detach(), b.detach(), rm_ref, rv_ref, dy, training=True, act="relu")
    got = dict(zip(("y", "dx", "dweight", "dbias"), outs), running_mean=rm, running_var=rv)
    # fp32 on a GPU: sums over 1024 rows in different orders
    assert_all_close(got, ref, "CUDA graph replay",
                     tol={k: (1e-5, 1e-4) for k in ref})


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_num_batches_tracked_counts_training_calls(impl, training):
    # the Triton path increments it in the statistics' finalize kernel, the twin with add_:
    # nn.BatchNorm2d's count either way (+1 per training call, unchanged in eval)
    x, w, b, rm, rv, _ = make_inputs((2, 5, 3, 3), torch.contiguous_format, seed=5)
    count = torch.tensor(7, dtype=torch.long)
    for _ in range(2):
        bn_act(x, w, b, rm, rv, training=training, act="relu", impl=impl, num_batches_tracked=count)
    assert count.item() == (9 if training else 7)


def _two_calls(x, w, b, rm, rv, groups=2, count=None, **kw):
    """The specification of ``groups``: one twin call per group of images, concatenated."""
    return torch.cat([bn_act_ref(part, w, b, rm, rv, num_batches_tracked=count, **kw)
                      for part in x.chunk(groups)])


@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [
    pytest.param((4, 5, 2, 2), id="aligned"),      # 8 rows per group: whole interpreter tiles
    pytest.param((4, 3, 3, 3), id="ragged"),       # 18 rows per group: channels_last straddles
    pytest.param((6, 20, 2, 3), id="C20-3-per"),   # three channel blocks, 3 images per group
])
def test_row_groups_equal_one_call_per_group(shape, layout, impl):
    x, w, b, rm, rv, dy = make_inputs(shape, layout, seed=7)
    dy, _ = untie(x, w, b, rm, rv, dy, True, "leaky_relu")
    kw = dict(training=True, momentum=0.1, eps=1e-5, act="leaky_relu", negative_slope=SLOPE)
    count, count_ref = torch.tensor(0), torch.tensor(0)
    fast = run(lambda *a, **k: bn_act(*a, **k, impl=impl, groups=2, num_batches_tracked=count),
               x, w, b, rm, rv, dy, **kw)
    twin = run(lambda *a, **k: _two_calls(*a, **k, count=count_ref), x, w, b, rm, rv, dy, **kw)
    assert_all_close(fast, twin, f"{impl} groups=2 vs two twin calls")
    assert count.item() == count_ref.item() == 2
    assert fast["y"].is_contiguous(memory_format=layout)
    # the halves are not normalised together: one call over the whole batch differs
    whole = run(bn_act_ref, x, w, b, rm, rv, dy, **kw)
    assert not torch.allclose(whole["y"], fast["y"], rtol=1e-3, atol=1e-3)


def test_row_groups_in_eval_are_one_group():
    x, w, b, rm, rv, _ = make_inputs((4, 3, 2, 2), torch.contiguous_format, seed=8)
    y = bn_act(x, w, b, rm, rv, training=False, act="relu", groups=2)
    torch.testing.assert_close(y, bn_act_ref(x, w, b, rm, rv, training=False, act="relu"),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal groups"):
        bn_act(x[:3], w, b, rm, rv, training=True, groups=2)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "finalize-launch"])
@pytest.mark.parametrize("groups", [1, 2])
def test_finalize_folded_or_launched_on_its_own(monkeypatch, fold, groups):
    # the partial kernels' last program finalizes (FOLD_FINALIZE), or the finalize kernels run
    # on their own (the sync-bn path's order): the same results, and the ticket counters of the
    # folded path are left at zero for the next call
    monkeypatch.setattr(bn_act_mod, "FOLD_FINALIZE", fold)
    x, w, b, rm, rv, dy = make_inputs((4, 20, 3, 3), torch.channels_last, seed=9)
    kw = dict(training=True, momentum=0.1, eps=1e-5, act="relu", negative_slope=SLOPE)
    fast = run(lambda *a, **k: bn_act(*a, **k, groups=groups), x, w, b, rm, rv, dy, **kw)
    twin = run(lambda *a, **k: _two_calls(*a, **k, groups=groups), x, w, b, rm, rv, dy, **kw)
    assert_all_close(fast, twin, f"fold={fold}, groups={groups}")
    assert all(int(t.abs().sum()) == 0 for t in bn_act_mod._TICKETS.values())


@pytest.mark.parametrize("groups", [1, 2])
def test_grads_into_params_adds_into_grad_bit_for_bit(groups):
    # dweight and dbias added into the parameters' existing .grad by the reducing kernel (no
    # AccumulateGrad): the same fp32 sums as autograd's accumulation, bit for bit
    x, w, b, rm, rv, dy = make_inputs((4, 5, 2, 2), torch.channels_last, seed=11)
    results = []
    for into in (False, True):
        xl, wl, bl = (t.detach().clone().requires_grad_() for t in (x, w, b))
        wl.grad, bl.grad = torch.full_like(w, 0.5), torch.full_like(b, -0.25)
        y = bn_act(xl, wl, bl, rm.clone(), rv.clone(), training=True, act="relu", groups=groups,
                   grads_into_params=into)
        y.backward(dy)
        results.append((xl.grad, wl.grad, bl.grad))
    for plain, into in zip(*results):
        assert torch.equal(plain, into)


def test_grads_into_params_without_dx():
    # x frozen (no dx kernel): the parameters' gradients are still added once, not also returned
    x, w, b, rm, rv, dy = make_inputs((4, 5, 2, 2), torch.contiguous_format, seed=12)
    wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
    wl.grad, bl.grad = torch.zeros_like(w), torch.zeros_like(b)
    y = bn_act(x, wl, bl, rm.clone(), rv.clone(), training=True, act="relu", grads_into_params=True)
    y.backward(dy)
    ref = run(bn_act_ref, x, w, b, rm, rv, dy, training=True, act="relu")
    torch.testing.assert_close(wl.grad, ref["dweight"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bl.grad, ref["dbias"], rtol=1e-5, atol=1e-4)
