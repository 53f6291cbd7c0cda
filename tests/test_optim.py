"""RMSpropClip and the rmsprop_clip kernel against torch.optim.RMSprop followed by clamp_.

On CPU the kernel runs under the Triton interpreter (conftest.py sets TRITON_INTERPRET=1); the
``gpu`` tests compare the compiled kernel on CUDA and are skipped here with the reason.

Tolerance (fp32): rtol 1e-6 (about 8 ulp), plus atol 1e-6 * PARAM_SCALE for parameters. The
kernel does torch's operations in torch's order (including the fma torch's CPU and CUDA builds
use in addcmul), but not always bit for bit: torch's vectorised CPU sqrt is not correctly
rounded (1 ulp off on ~17% of inputs here) where the kernel's is, and torch's CUDA addcdiv
computes p + (-lr) * (g / avg) where its CPU kernel, and this one, compute p + (-lr * g) / avg.
Each step may therefore differ by one rounding of the update, i.e. at most an ulp or two of p,
and the gradients are the same in both runs (seeded), so nothing amplifies the differences over
10 steps. The absolute term covers parameters that pass near zero, where one ulp of the operands
(~0.02) is large relative to the result.
"""
import copy
import importlib
import io
import warnings

import pytest
import torch
from torch.testing import assert_close

from fastwgan.models import Critic
from fastwgan.optim import ALIGN, RMSpropClip

rc = importlib.import_module("fastwgan.kernels.rmsprop_clip")  # the module, not the function

PARAM_SCALE = 0.02  # the critic's init std; parameters are drawn at this scale
P_TOL = dict(rtol=1e-6, atol=1e-6 * PARAM_SCALE)
V_TOL = dict(rtol=1e-6, atol=1e-12)  # square_avg >= 0, a sum of positive terms
STEPS = 10

SHAPE_SETS = {
    # sizes that are not multiples of the block (1024) nor of the alignment (64)
    "ragged": [(1025,), (33, 31), (7, 3, 5, 5), (2049,), (1,)],
    # one 0-dim parameter
    "scalar": [()],
    # the real critic's parameters at small width: 4D conv weights, BN weights and biases
    "critic": [tuple(p.shape) for p in Critic(image_size=32, ndf=8).parameters()],
}
CONFIGS = {
    # (lr, alpha, eps, clip)
    "paper-critic": (5e-5, 0.99, 1e-8, 0.01),
    "generator": (5e-5, 0.99, 1e-8, None),
    # a large lr: every parameter reaches the clip within a few steps; alpha and eps not torch's
    "large-lr": (1e-3, 0.9, 1e-6, 0.01),
}
IMPLS = ["ref", "triton"]


def _params(shapes, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen) * PARAM_SCALE).to(device)) for s in shapes]


def _grads(shapes, seed, device="cpu"):
    """Seeded gradients, one scale per parameter over four decades (as a critic's layers differ)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return [(torch.randn(s, generator=gen) * 10.0 ** (i % 4 - 2)).to(device) for i, s in enumerate(shapes)]


def _torch_step(opt, params, grads, clip):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    if clip is not None:
        with torch.no_grad():
            for p in params:
                p.clamp_(-clip, clip)


def _our_step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad.copy_(g)  # in place: the grads are views of the flat buffer
    opt.step()


def _assert_same_state(ours, theirs, params_ours, params_theirs, steps):
    for i, (p, q) in enumerate(zip(params_ours, params_theirs)):
        assert_close(p, q, **P_TOL, msg=lambda m: f"param {i} {tuple(p.shape)}: {m}")
        s, t = ours.state[p], theirs.state[q]
        assert_close(s["square_avg"], t["square_avg"], **V_TOL, msg=lambda m: f"square_avg {i}: {m}")
        assert float(s["step"]) == float(t["step"]) == steps


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_matches_torch_rmsprop_then_clamp(shapes, config, impl):
    lr, alpha, eps, clip = config
    ours_p, theirs_p = _params(shapes), _params(shapes)
    ours = RMSpropClip(ours_p, lr=lr, alpha=alpha, eps=eps, clip=clip, impl=impl)
    theirs = torch.optim.RMSprop(theirs_p, lr=lr, alpha=alpha, eps=eps)
    assert ours.impl_of() == impl
    for step in range(STEPS):
        grads = _grads(shapes, step)
        _our_step(ours, ours_p, grads)
        _torch_step(theirs, theirs_p, grads, clip)
    _assert_same_state(ours, theirs, ours_p, theirs_p, STEPS)
    if clip is not None:
        assert max(p.abs().max().item() for p in ours_p) <= clip


@pytest.mark.parametrize("impl", IMPLS)
def test_lr_change_takes_effect(impl):
    shapes = SHAPE_SETS["ragged"]
    ours_p, theirs_p = _params(shapes), _params(shapes)
    ours = RMSpropClip(ours_p, lr=1e-3, clip=0.01, impl=impl)
    theirs = torch.optim.RMSprop(theirs_p, lr=1e-3)
    for step in range(6):
        if step == 3:  # as an lr scheduler does it
            ours.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = 2.5e-4
        grads = _grads(shapes, step)
        _our_step(ours, ours_p, grads)
        _torch_step(theirs, theirs_p, grads, 0.01)
    _assert_same_state(ours, theirs, ours_p, theirs_p, 6)
    assert ours.lr_tensor().item() == torch.tensor(2.5e-4).item()


def test_sync_lr_writes_the_device_tensor_that_the_kernel_reads():
    shapes = [(300,)]
    p = _params(shapes)
    opt = RMSpropClip(p, lr=1e-3, impl="triton")
    opt.param_groups[0]["lr"] = 0.0
    opt.sync_lr()
    assert opt.lr_tensor().item() == 0.0
    before = p[0].detach().clone()
    p[0].grad.copy_(_grads(shapes, 0)[0])
    b = opt.buffers()
    # the launch step() makes, reading lr from the tensor: lr 0 leaves the parameter unchanged
    rc._launch(b.param, b.grad, b.square_avg, b.lr, 0.99, 1e-8, None, b.step)
    assert torch.equal(p[0], before)
    assert b.step.item() == 1


# --- the kernel alone, against its twin -------------------------------------------------------

@pytest.mark.parametrize("n", [1, 63, 1023, 1024, 1025, 3 * 1024 + 17])  # around BLOCK_SIZE
@pytest.mark.parametrize("clip", [None, 0.01])
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_kernel_matches_twin(n, clip, lr_kind):
    gen = torch.Generator().manual_seed(n)
    tail = 100  # elements past n that the kernel must not touch (masking)
    p0 = torch.randn(n + tail, generator=gen) * PARAM_SCALE
    v0 = torch.rand(n + tail, generator=gen) * 1e-2
    lr = 1e-3 if lr_kind == "float" else torch.tensor(1e-3)
    p_k, v_k, p_r, v_r = p0.clone(), v0.clone(), p0.clone(), v0.clone()
    s_k, s_r = torch.zeros(()), torch.zeros(())
    for _ in range(3):
        g = torch.randn(n, generator=gen)
        rc.rmsprop_clip(p_k[:n], g, v_k[:n], lr, 0.99, 1e-8, clip, s_k, impl="triton")
        rc.rmsprop_clip_ref(p_r[:n], g, v_r[:n], lr, 0.99, 1e-8, clip, s_r)
    assert_close(p_k, p_r, **P_TOL)
    assert_close(v_k, v_r, **V_TOL)
    assert torch.equal(p_k[n:], p0[n:]) and torch.equal(v_k[n:], v0[n:])
    assert s_k.item() == s_r.item() == 3


def test_twin_with_tensor_lr_equals_twin_with_float_lr():
    gen = torch.Generator().manual_seed(0)
    p, v, g = torch.randn(5000, generator=gen) * PARAM_SCALE, torch.rand(5000, generator=gen), torch.randn(5000, generator=gen)
    p2, v2 = p.clone(), v.clone()
    rc.rmsprop_clip_ref(p, g, v, 1e-3, 0.99, 1e-8, 0.01)
    rc.rmsprop_clip_ref(p2, g, v2, torch.tensor(1e-3), 0.99, 1e-8, 0.01)
    assert torch.equal(p, p2) and torch.equal(v, v2)


@pytest.mark.parametrize("impl", IMPLS)
def test_bitwise_deterministic(impl):
    shapes = SHAPE_SETS["critic"]
    runs = []
    for _ in range(2):
        params = _params(shapes)
        opt = RMSpropClip(params, lr=1e-3, clip=0.01, impl=impl)
        for step in range(3):
            _our_step(opt, params, _grads(shapes, step))
        runs.append((opt.buffers().param.clone(), opt.buffers().square_avg.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# --- state_dict, both ways --------------------------------------------------------------------

def _checkpoint(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("impl", IMPLS)
def test_state_dict_ours_to_torch(impl):
    shapes, clip = SHAPE_SETS["critic"], 0.01
    a_p = _params(shapes)
    a = RMSpropClip(a_p, lr=1e-3, clip=clip, impl=impl)
    for step in range(5):
        _our_step(a, a_p, _grads(shapes, step))
    sd = _checkpoint(a.state_dict())
    assert set(sd["state"][0]) == {"step", "square_avg"}
    assert sd["state"][0]["step"].device.type == "cpu" and sd["state"][0]["step"].dtype == torch.float32
    b_p = [torch.nn.Parameter(p.detach().clone()) for p in a_p]
    b = torch.optim.RMSprop(b_p, lr=0.5)  # lr, alpha and eps come from the checkpoint
    b.load_state_dict(sd)
    assert b.param_groups[0]["lr"] == 1e-3
    for step in range(5, 10):
        grads = _grads(shapes, step)
        _our_step(a, a_p, grads)
        _torch_step(b, b_p, grads, clip)
    _assert_same_state(a, b, a_p, b_p, 10)


@pytest.mark.parametrize("impl", IMPLS)
def test_state_dict_torch_to_ours(impl):
    shapes, clip = SHAPE_SETS["critic"], 0.01
    a_p = _params(shapes)
    a = torch.optim.RMSprop(a_p, lr=1e-3, alpha=0.9)
    for step in range(5):
        _torch_step(a, a_p, _grads(shapes, step), clip)
    sd = _checkpoint(a.state_dict())
    b_p = [torch.nn.Parameter(p.detach().clone()) for p in a_p]
    b = RMSpropClip(b_p, lr=0.5, alpha=0.5, clip=clip, impl=impl)
    b.load_state_dict(sd)
    group = b.param_groups[0]
    assert (group["lr"], group["alpha"], group["clip"]) == (1e-3, 0.9, clip)  # clip kept: torch has none
    assert "momentum" not in group and "capturable" not in group
    assert b.lr_tensor().item() == torch.tensor(1e-3).item()
    assert b.state[b_p[0]]["square_avg"].data_ptr() == b.buffers().square_avg.data_ptr()  # still flat
    for step in range(5, 10):
        grads = _grads(shapes, step)
        _torch_step(a, a_p, grads, clip)
        _our_step(b, b_p, grads)
    _assert_same_state(b, a, b_p, a_p, 10)


def test_state_dict_from_fresh_torch_optimizer_resets_state():
    shapes = SHAPE_SETS["ragged"]
    params = _params(shapes)
    ours = RMSpropClip(params, lr=1e-3)
    _our_step(ours, params, _grads(shapes, 0))
    ours.load_state_dict(torch.optim.RMSprop(_params(shapes), lr=1e-3).state_dict())
    assert ours.buffers().square_avg.abs().max().item() == 0.0
    assert ours.buffers().step.item() == 0.0


def test_load_rejects_what_the_step_does_not_implement():
    params = _params([(10,)])
    theirs = torch.optim.RMSprop(params, lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        RMSpropClip(_params([(10,)])).load_state_dict(theirs.state_dict())


# --- flat buffers with a real module ----------------------------------------------------------

def _critic_pair():
    torch.manual_seed(0)
    a = Critic(image_size=32, ndf=8)
    b = copy.deepcopy(a)
    return a, b


def _in_buffer(t, buf):
    start, itemsize = buf.data_ptr(), buf.element_size()
    return start <= t.data_ptr() and t.data_ptr() + t.numel() * itemsize <= start + buf.numel() * itemsize


def test_parameters_and_backward_gradients_live_in_the_flat_buffers():
    critic, twin = _critic_pair()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = critic(x).detach()
    opt = RMSpropClip(critic.parameters(), clip=0.01)
    bufs = opt.buffers()
    assert torch.equal(critic(x).detach(), before)  # moving the parameters changed nothing
    grad_views = [p.grad for p in critic.parameters()]
    critic(x).mean().backward()
    twin(x).mean().backward()
    for p, q, view in zip(critic.parameters(), twin.parameters(), grad_views):
        assert p.grad is view
        assert _in_buffer(p, bufs.param) and _in_buffer(p.grad, bufs.grad)
        assert p.grad.stride() == p.stride()
        assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    # the flat buffer holds every gradient, at its offset, padding zero
    flat = torch.cat([q.grad.flatten() for q in twin.parameters()])
    assert_close(bufs.grad[bufs.grad != 0], flat[flat != 0], rtol=1e-6, atol=0)
    assert bufs.param.numel() % ALIGN == 0


def test_zero_grad_keeps_the_views():
    critic, _ = _critic_pair()
    opt = RMSpropClip(critic.parameters())
    views = [p.grad for p in critic.parameters()]
    x = torch.randn(2, 3, 32, 32)
    critic(x).mean().backward()
    opt.zero_grad()
    assert opt.buffers().grad.abs().max().item() == 0.0
    assert all(p.grad is v for p, v in zip(critic.parameters(), views))
    critic(x).mean().backward()
    assert opt.buffers().grad.abs().max().item() > 0.0  # backward accumulated into the buffer again
    opt.zero_grad(set_to_none=True)  # ignored: None would detach the views
    assert all(p.grad is v for p, v in zip(critic.parameters(), views))


def test_module_zero_grad_is_repaired_with_one_warning():
    critic, twin = _critic_pair()
    ours = RMSpropClip(critic.parameters(), lr=1e-3, clip=0.01, impl="ref")
    theirs = torch.optim.RMSprop(twin.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="no longer a view") as record:
        for _ in range(2):
            critic.zero_grad()  # set_to_none=True: backward makes new .grad tensors
            twin.zero_grad()
            critic(x).mean().backward()
            twin(x).mean().backward()
            ours.step()
            theirs.step()
            with torch.no_grad():
                for q in twin.parameters():
                    q.clamp_(-0.01, 0.01)
    assert sum("no longer a view" in str(w.message) for w in record) == 1
    assert all(p.grad is v for p, v in zip(critic.parameters(), ours._groups[0].grad_views))
    for p, q in zip(critic.parameters(), twin.parameters()):
        assert_close(p, q, **P_TOL)


def test_module_load_state_dict_copies_into_the_views():
    critic, _ = _critic_pair()
    opt = RMSpropClip(critic.parameters())
    other = Critic(image_size=32, ndf=8)
    critic.load_state_dict(other.state_dict())
    for p, q in zip(critic.parameters(), other.parameters()):
        assert torch.equal(p, q) and _in_buffer(p, opt.buffers().param)
    opt.step()  # still attached: no error


def test_replacing_a_parameter_raises():
    critic, _ = _critic_pair()
    opt = RMSpropClip(critic.parameters())
    p = next(critic.parameters())
    p.data = p.data.clone()
    with pytest.raises(RuntimeError, match="no longer views"):
        opt.step()


def test_channels_last_parameters_keep_their_strides():
    conv = torch.nn.Conv2d(3, 8, 4).to(memory_format=torch.channels_last)
    stride = conv.weight.stride()
    RMSpropClip(conv.parameters())
    assert conv.weight.stride() == stride and conv.weight.grad.stride() == stride


def test_invalid_arguments():
    with pytest.raises(TypeError, match="fp32"):
        RMSpropClip([torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))])
    with pytest.raises(ValueError, match="clip"):
        RMSpropClip(_params([(3,)]), clip=0.0)
    with pytest.raises(ValueError, match="impl"):
        RMSpropClip(_params([(3,)]), impl="cuda")


def test_several_groups():
    shapes_a, shapes_b = SHAPE_SETS["ragged"], SHAPE_SETS["scalar"]
    a_p, b_p = _params(shapes_a), _params(shapes_b, seed=1)
    ours = RMSpropClip([{"params": a_p}, {"params": b_p, "lr": 1e-3, "clip": None}], lr=5e-5, clip=0.01)
    ta_p, tb_p = _params(shapes_a), _params(shapes_b, seed=1)
    theirs_a, theirs_b = torch.optim.RMSprop(ta_p, lr=5e-5), torch.optim.RMSprop(tb_p, lr=1e-3)
    for step in range(3):
        ga, gb = _grads(shapes_a, step), _grads(shapes_b, step)
        for p, g in zip(a_p + b_p, ga + gb):
            p.grad.copy_(g)
        ours.step()
        _torch_step(theirs_a, ta_p, ga, 0.01)
        _torch_step(theirs_b, tb_p, gb, None)
    for p, q in zip(a_p + b_p, ta_p + tb_p):
        assert_close(p, q, **P_TOL)


# --- fallback ---------------------------------------------------------------------------------

def test_fallback_without_the_interpreter_warns_once(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    shapes = SHAPE_SETS["ragged"]
    params = _params(shapes)
    with pytest.warns(UserWarning, match="Triton interpreter") as record:
        opt = RMSpropClip(params, impl="triton")
    assert len(record) == 1 and opt.impl_of() == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per step
        _our_step(opt, params, _grads(shapes, 0))


def test_fallback_without_triton_warns(monkeypatch):
    monkeypatch.setattr(rc, "_rmsprop_clip_kernel", None)
    with pytest.warns(UserWarning, match="not importable"):
        opt = RMSpropClip(_params([(10,)]), impl="triton")
    assert opt.impl_of() == "ref"
    p, g, v = torch.zeros(5), torch.ones(5), torch.zeros(5)
    with pytest.warns(UserWarning, match="not importable"):
        rc.rmsprop_clip(p, g, v, 1e-3, 0.99, 1e-8, 0.01)
    assert (p < 0).all()  # the twin stepped


def test_ref_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RMSpropClip(_params([(10,)]), impl="ref")


# --- compiled kernel on CUDA ------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("clip", [None, 0.01])
def test_gpu_matches_torch_on_the_dcgan_critic(clip):
    shapes = [tuple(p.shape) for p in Critic(image_size=64).parameters()]  # 2.76 M parameters
    ours_p, theirs_p = _params(shapes, device="cuda"), _params(shapes, device="cuda")
    ours = RMSpropClip(ours_p, lr=1e-3, clip=clip, impl="triton")
    theirs = torch.optim.RMSprop(theirs_p, lr=1e-3)  # foreach on CUDA
    assert ours.impl_of() == "triton"
    for step in range(STEPS):
        grads = _grads(shapes, step, device="cuda")
        _our_step(ours, ours_p, grads)
        _torch_step(theirs, theirs_p, grads, clip)
    _assert_same_state(ours, theirs, ours_p, theirs_p, STEPS)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 1025, 2_765_568, 27_655_680 + 3])
def test_gpu_kernel_matches_twin(n):
    gen = torch.Generator(device="cuda").manual_seed(0)
    p0 = torch.randn(n, device="cuda", generator=gen) * PARAM_SCALE
    v0 = torch.rand(n, device="cuda", generator=gen) * 1e-2
    p_k, v_k, p_r, v_r = p0.clone(), v0.clone(), p0.clone(), v0.clone()
    lr = torch.tensor(1e-3, device="cuda")
    s_k, s_r = torch.zeros((), device="cuda"), torch.zeros((), device="cuda")
    for _ in range(3):
        g = torch.randn(n, device="cuda", generator=gen)
        rc.rmsprop_clip(p_k, g, v_k, lr, 0.99, 1e-8, 0.01, s_k, impl="triton")
        rc.rmsprop_clip_ref(p_r, g, v_r, 1e-3, 0.99, 1e-8, 0.01, s_r)
    assert_close(p_k, p_r, **P_TOL)
    assert_close(v_k, v_r, **V_TOL)
    assert s_k.item() == s_r.item() == 3


@pytest.mark.gpu
def test_gpu_bitwise_deterministic():
    shapes = [tuple(p.shape) for p in Critic(image_size=64).parameters()]
    runs = []
    for _ in range(2):
        params = _params(shapes, device="cuda")
        opt = RMSpropClip(params, lr=1e-3, clip=0.01)
        for step in range(3):
            _our_step(opt, params, _grads(shapes, step, device="cuda"))
        runs.append(opt.buffers().param.clone())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.gpu
def test_gpu_step_captures_in_a_cuda_graph_and_reads_lr_on_replay():
    shapes = [tuple(p.shape) for p in Critic(image_size=64).parameters()]
    params = _params(shapes, device="cuda")
    opt = RMSpropClip(params, lr=1e-3, clip=0.01)
    for p, g in zip(params, _grads(shapes, 0, device="cuda")):
        p.grad.copy_(g)  # static gradients in the flat buffer
    b = opt.buffers()
    # the twin, on copies of the flat buffers
    p_r, v_r, g_r = b.param.clone(), b.square_avg.clone(), b.grad.clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up compiles the kernel before capture
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    rc.rmsprop_clip_ref(p_r, g_r, v_r, 1e-3, 0.99, 1e-8, 0.01)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    # capture records without running: the buffers still hold the warm-up step
    assert_close(b.param, p_r, **P_TOL)
    for lr in (1e-3, 1e-3, 2.5e-4):
        opt.param_groups[0]["lr"] = lr
        opt.sync_lr()  # what a training loop does after an lr scheduler step
        graph.replay()
        rc.rmsprop_clip_ref(p_r, g_r, v_r, lr, 0.99, 1e-8, 0.01)
    torch.cuda.synchronize()
    assert_close(b.param, p_r, **P_TOL)
    assert_close(b.square_avg, v_r, **V_TOL)
    assert b.step.item() == 4  # warm-up + 3 replays: the counter advances on the device
