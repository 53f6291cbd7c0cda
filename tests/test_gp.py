"""WGAN-GP: the penalty against finite differences, the critic without BatchNorm, the defaults
and bad values of its flags, and runs that train and resume."""
import json
import math

import pytest
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import train
from fastwgan.config import Config
from fastwgan.models import Critic, Generator, LayerNorm2d
from fastwgan.losses.wgan_gp import critic_step_gp, gradient_penalty
from fastwgan.steps import StepConfig

from tiny import resume_is_exact_and_crosses_engines, smoke_flags

pytestmark = pytest.mark.usefixtures("private_cache")  # the run tests' decoded data


def tiny_critic(norm, seed=0):
    torch.manual_seed(seed)
    D = Critic(16, ndf=4, norm=norm).double()
    # move the layer norms' scale and offset off 1 and 0, so that they count
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, LayerNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return D


def finite_difference_norms(D, x, h=1e-6):
    """||grad_x D(x_i)||_2 for each sample by central differences, one coordinate at a time (all
    coordinates of a sample in one batch: D scores each sample on its own)."""
    norms = []
    for xi in x:
        d = xi.numel()
        eye = torch.eye(d, dtype=x.dtype).view(d, *xi.shape) * h
        with torch.no_grad():
            grad = (D(xi + eye) - D(xi - eye)) / (2 * h)
        norms.append(grad.norm())
    return torch.stack(norms)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_penalty_equals_finite_differences(norm):
    D = tiny_critic(norm)
    g = torch.Generator().manual_seed(1)
    real = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    fake = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    # larger weights: gradient norms near 1, where the penalty is small and most sensitive
    with torch.no_grad():
        for p in D.parameters():
            p.mul_(4 if p.dim() > 1 else 1)
    eps = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    gp, mean_norm = gradient_penalty(D, real, fake, eps)
    assert gp.dtype == torch.float64
    x_hat = eps * real + (1 - eps) * fake
    norms = finite_difference_norms(D, x_hat)
    assert norms.min() > 0.1  # a gradient to measure
    torch.testing.assert_close(mean_norm, norms.mean(), rtol=1e-3, atol=0)
    torch.testing.assert_close(gp, ((norms - 1) ** 2).mean(), rtol=1e-3, atol=1e-6)


def test_penalty_gradient_in_the_weights_is_the_double_backward():
    # d gp / d weights through create_graph: gradcheck against finite differences in float64
    torch.manual_seed(0)
    D = Critic(16, ndf=2, norm="layer").double()
    params = list(D.parameters())
    real, fake = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    eps = torch.tensor([0.25, 0.75], dtype=torch.float64).view(2, 1, 1, 1)

    def gp_of(*ws):  # the critic with its parameters replaced by ``ws``
        state = {n: w for (n, _), w in zip(D.named_parameters(), ws)}
        return gradient_penalty(lambda x: torch.func.functional_call(D, state, (x,)), real, fake, eps)[0]

    assert torch.autograd.gradcheck(gp_of, [p.detach().clone().requires_grad_() for p in params],
                                    eps=1e-6, atol=1e-6, rtol=1e-3)


def test_critic_step_gp_by_hand():
    torch.manual_seed(0)
    G, D = Generator(16, nz=8, ngf=4), Critic(16, ndf=4, norm="none")
    real, z = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 8)
    eps = torch.rand(4, 1, 1, 1)
    D_ref = Critic(16, ndf=4, norm="none")
    D_ref.load_state_dict(D.state_dict())
    opt = torch.optim.SGD(D.parameters(), lr=0.1)
    out = critic_step_gp(G, D, opt, real, z, StepConfig(None, gp_weight=7.0), eps=eps)
    with torch.no_grad():
        fake = G(z)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    (grad,) = torch.autograd.grad(D_ref(x_hat).sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    loss = D_ref(fake).mean() - D_ref(real).mean() + 7.0 * ((norms - 1) ** 2).mean()
    grads = torch.autograd.grad(loss, list(D_ref.parameters()))
    tol = dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss_d"], loss.detach(), **tol)
    torch.testing.assert_close(out["grad_norm"], norms.mean().detach(), **tol)
    for p, p0, g in zip(D.parameters(), D_ref.parameters(), grads):  # one SGD step, no clipping
        torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * g, **tol)


def test_penalty_step_does_not_sync_with_the_host():
    # what the fast engine captures for wgan-gp: eps drawn on the device, the double backward
    from test_fast import HostSyncGuard

    torch.manual_seed(0)
    G, D = Generator(16, nz=8, ngf=4), Critic(16, ndf=4, norm="layer")
    opt = torch.optim.SGD(D.parameters(), lr=0.1)
    real, z = torch.rand(4, 3, 16, 16), torch.randn(4, 8)
    with HostSyncGuard() as guard:
        critic_step_gp(G, D, opt, real, z, StepConfig(None))
    assert guard.ops > 0


# --- the critic ---

@pytest.mark.parametrize("norm", ["none", "layer"])
def test_critic_scores_each_sample_alone(norm):
    torch.manual_seed(0)
    D = Critic(32, ndf=8, norm=norm)
    x = torch.randn(4, 3, 32, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert (sum(isinstance(m, LayerNorm2d) for m in D.modules()) > 0) == (norm == "layer")
    torch.testing.assert_close(D(x)[:2], D(x[:2]))  # with BatchNorm the other samples would count


def test_layer_norm_over_c_h_w_per_sample():
    ln = LayerNorm2d(3)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        ln.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(2, 3, 4, 4) * 5 + 2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight.view(3, 1, 1) + ln.bias.view(3, 1, 1)
    torch.testing.assert_close(ln(x), expected)


# --- config ---

def test_wgan_gp_defaults_are_the_gp_papers():
    cfg = Config(loss="wgan-gp").resolved()
    assert (cfg.lr, cfg.adam_beta1, cfg.adam_beta2, cfg.n_critic, cfg.gp_weight) == (1e-4, 0.0, 0.9, 5, 10.0)
    assert cfg.critic_norm == "none" and cfg.n_critic_warmup == 5 and not cfg.warmup_phases
    assert {cfg.n_critic_at(i) for i in range(1001)} == {5}
    assert Config(loss="wgan-gp", n_critic=3).resolved().n_critic_warmup == 3
    # the other losses as before
    wgan = Config().resolved()
    assert (wgan.lr, wgan.n_critic_warmup, wgan.critic_norm, wgan.adam_beta1) == (5e-5, 100, "batch", None)
    gan = Config(loss="gan").resolved()
    assert (gan.lr, gan.adam_betas, gan.critic_norm) == (2e-4, (0.5, 0.999), "batch")


@pytest.mark.parametrize("flags,message", [
    (["--gp-weight", "0"], "--gp-weight must be positive"),
    (["--gp-weight", "-1"], "--gp-weight must be positive"),
    (["--gp-weight", "nan"], "--gp-weight must be positive"),
    (["--critic-norm", "batch"], "--critic-norm batch cannot train --loss wgan-gp"),
    (["--adam-beta2", "1"], "--adam-beta2 must be in [0, 1)"),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, flags, message):
    assert train.main(["--preset", "smoke", "--loss", "wgan-gp", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


# --- runs ---

def smoke(data, *flags):
    return smoke_flags("wgan-gp", data, *flags)


def test_run_logs_defaults_penalty_and_gradient_norm(tmp_path, data):
    out = tmp_path / "r"
    assert train.main(smoke(data, "--out", out, "--iters", 2, "--critic-norm", "layer", "--clip", 0.05)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["lr"], cfg["adam_beta1"], cfg["adam_beta2"], cfg["gp_weight"]) == (1e-4, 0.0, 0.9, 10.0)
    assert cfg["critic_norm"] == "layer" and cfg["n_critic_warmup"] == cfg["n_critic"]
    log = (out / "train.log").read_text()
    assert ("loss: wgan-gp (gradient penalty weight 10, critic norm layer), Adam lr 0.0001 betas (0, 0.9), "
            "2 critic steps, no warm-up phases, z ~ N(0, 1) of size 100") in log
    assert "instead of clipping: --clip ignored" in log
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["gp"] >= 0 and r["grad_norm"] > 0 and math.isfinite(r["wdist"])
        assert r["wdist"] == pytest.approx(r["d_real"] - r["d_fake"])
        # loss_d is the Wasserstein term plus the penalty
        assert r["loss_d"] == pytest.approx(-r["wdist"] + 10 * r["gp"], rel=1e-5, abs=1e-6)
    sd = ckpt_io.load(out)["critic"]
    assert not any("running_mean" in k for k in sd) and any(".ln." in k for k in sd)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_resume_is_exact_and_crosses_engines(tmp_path, data, backend):
    resume_is_exact_and_crosses_engines(tmp_path, smoke(data), backend)


def test_resume_under_another_loss_is_refused(tmp_path, data, capsys):
    out = tmp_path / "r"
    assert train.main(smoke(data, "--out", out, "--iters", 1)) == 0
    capsys.readouterr()
    for loss in ("wgan", "gan"):
        assert train.main(["--resume", str(out), "--loss", loss, "--iters", "2"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --loss {loss} differs from the checkpoint's wgan-gp; a resumed run keeps its networks and loss\n"
    assert train.main(["--resume", str(out), "--critic-norm", "layer", "--iters", "2"]) == 2
    assert ckpt_io.load(out)["iteration"] == 1


@pytest.mark.slow  # about a minute under the Triton interpreter on a loaded 2-core CPU
def test_fast_engine_with_triton_kernels_under_interpreter():
    # the generator's fused BatchNorm + ReLU (interpreted), the critic on plain torch ops under
    # the double backward: one iteration against the reference
    from test_fast import TINY, run_both

    cfg = Config(**{**TINY, "ngf": 4, "ndf": 4, "batch_size": 2, "n_critic_warmup": None, "lr": 1e-4},
                 loss="wgan-gp")
    ref, fast = run_both(cfg, iterations=[0], impl="triton")
    assert fast.impl == "triton" and fast.plain_critic_blocks == []
    assert "gradient penalty: critic without bn_act" in fast.describe()
    torch.testing.assert_close(fast.sums, ref.sums, rtol=1e-4, atol=1e-6)
    for a, b in [(ref.G, fast.G), (ref.D, fast.D)]:
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_a_critic_with_batchnorm_keeps_plain_blocks_under_the_penalty():
    # Config refuses --critic-norm batch with wgan-gp; an engine built around such a critic
    # anyway keeps those blocks off the once-differentiable bn_act
    from fastwgan.fast import keep_twice_differentiable

    D = Critic(32, ndf=4, impl="triton")
    assert keep_twice_differentiable(D, "wgan") == []
    assert keep_twice_differentiable(D, "wgan-gp") == [1, 2]
    assert [b.impl for b in D.blocks] == ["triton", "ref", "ref"]


def test_cpu_gp_preset_is_the_cpu_preset_with_the_penalty():
    cfg, _, _ = train.parse_config(["--preset", "cpu-gp", "--out", "unused"])
    cpu, _, _ = train.parse_config(["--preset", "cpu", "--out", "unused"])
    assert (cfg.loss, cfg.learning_rate, cfg.adam_betas, cfg.critic_normalization) == \
        ("wgan-gp", 5e-4, (0.0, 0.9), "none")
    assert cfg.critic_warmup == cfg.n_critic  # no warm-up phases
    same = ("image_size", "ngf", "ndf", "batch_size", "iters", "n_critic", "sample_every")
    assert [getattr(cfg, k) for k in same] == [getattr(cpu, k) for k in same]
    # a flag still wins over the preset
    assert train.parse_config(["--preset", "cpu-gp", "--lr", "1e-4", "--out", "unused"])[0].learning_rate == 1e-4
