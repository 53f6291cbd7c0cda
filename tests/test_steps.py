"""The two phases against hand-computed expectations."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastwgan.config import Config
from fastwgan.models import Critic, Generator
from fastwgan.losses import LOSSES
from fastwgan.steps import StepConfig, make_optimizers

WGAN, GAN = LOSSES["wgan"], LOSSES["gan"]

LR, ALPHA, EPS = 1e-3, 0.99, 1e-8
# fp32, same operations in the same order as the step itself: agreement to rounding.
TOL = dict(rtol=1e-6, atol=1e-7)


def nets(seed=0):
    torch.manual_seed(seed)
    return Generator(32, nz=8, ngf=8), Critic(32, ndf=8)


def first_rmsprop_step(p, g, clip=None):
    """torch.optim.RMSprop's first step by hand: v = (1 - alpha) g^2, p - lr g / (sqrt(v) + eps)."""
    v = (1 - ALPHA) * g * g
    p = p - LR * g / (v.sqrt() + EPS)
    return p.clamp(-clip, clip) if clip is not None else p


@pytest.mark.parametrize("clip", [0.01, 0.5])
def test_critic_step_wgan(clip):
    G, D = nets()
    real, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 8)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    opt_d = torch.optim.RMSprop(D.parameters(), lr=LR, alpha=ALPHA, eps=EPS)
    g_before = copy.deepcopy(G.state_dict())

    out = WGAN.critic_step(G, D, opt_d, real, z, StepConfig(clip))

    # expected: loss_D = mean D(G(z)) - mean D(real), the gradient of it, one RMSprop step, clip
    with torch.no_grad():
        fake = G_ref(z)
    d_real, d_fake = D_ref(real).mean(), D_ref(fake).mean()
    loss = d_fake - d_real
    grads = torch.autograd.grad(loss, list(D_ref.parameters()))
    torch.testing.assert_close(out["loss_d"], loss.detach(), **TOL)
    torch.testing.assert_close(out["d_real"] - out["d_fake"], -loss.detach(), **TOL)
    for p, p0, g in zip(D.parameters(), D_ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), first_rmsprop_step(p0.detach(), g, clip), **TOL)
        assert p.abs().max() <= clip
    assert any(not torch.equal(p, p0) for p, p0 in zip(D.parameters(), D_ref.parameters()))
    # the generator's weights are untouched (its BatchNorm statistics move, as in the paper's code)
    for k, v in G.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, g_before[k]), k


def test_generator_step_wgan():
    G, D = nets(1)
    z = torch.randn(4, 8)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    d_params = copy.deepcopy(list(D.parameters()))
    opt_g = torch.optim.RMSprop(G.parameters(), lr=LR, alpha=ALPHA, eps=EPS)

    out = WGAN.generator_step(G, D, opt_g, z, StepConfig(0.01))

    loss = -D_ref(G_ref(z)).mean()
    grads = torch.autograd.grad(loss, list(G_ref.parameters()))
    torch.testing.assert_close(out["loss_g"], loss.detach(), **TOL)
    for p, p0, g in zip(G.parameters(), G_ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), first_rmsprop_step(p0.detach(), g), **TOL)
    for p, p0 in zip(D.parameters(), d_params):
        assert torch.equal(p, p0) and p.grad is None and p.requires_grad  # flags restored


def test_gan_losses():
    G, D = nets(2)
    real, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 8)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    opt_g, opt_d = make_optimizers(G, D, "adam", 2e-4)
    assert isinstance(opt_d, torch.optim.Adam) and opt_d.defaults["betas"] == (0.5, 0.999)
    out = GAN.critic_step(G, D, opt_d, real, z, StepConfig(None))
    with torch.no_grad():
        fake = G_ref(z)
        # BCE with logits: -log sigmoid(x) for real, -log(1 - sigmoid(x)) for fake
        expected = F.softplus(-D_ref(real)).mean() + F.softplus(D_ref(fake)).mean()
    torch.testing.assert_close(out["loss_d"], expected, **TOL)
    # no clipping in the GAN baseline: BatchNorm weights stay near 1
    assert max(p.abs().max().item() for p in D.parameters()) > 0.5
    out = GAN.generator_step(G, D, opt_g, z, StepConfig(None))
    with torch.no_grad():
        D_ref.load_state_dict(D.state_dict())
        torch.testing.assert_close(out["loss_g"], F.softplus(-D_ref(G_ref(z))).mean(), **TOL)


def test_n_critic_schedule():
    cfg = Config()
    sched = [cfg.n_critic_at(i) for i in range(1001)]
    assert sched[:25] == [100] * 25 and sched[25] == 5 and sched[499] == 5
    assert sched[500] == 100 and sched[501] == 5 and sched[1000] == 100
    assert sum(sched) == 27 * 100 + (1001 - 27) * 5
    assert {Config(n_critic=3, n_critic_warmup=3).n_critic_at(i) for i in range(600)} == {3}
    assert {Config(loss="gan").n_critic_at(i) for i in range(600)} == {1}
    # the paper's full recipe: about 521 k critic steps for 1e5 generator iterations (FACTS.md)
    assert sum(Config().n_critic_at(i) for i in range(100_000)) == 25 * 100 + 199 * 100 + (100_000 - 224) * 5
