"""The critic's clipping order against the paper's code (martinarjovsky/WassersteinGAN).

The paper's code clamps every critic parameter before each RMSprop step; fastwgan clips after
each step (Algorithm 1) and once when an engine is built. From the same fresh weights, batches
and z, both give the same critic sequence: the same parameters (once the paper's last step is
clamped too) and the same RMSprop ``square_avg``.
"""
import copy

import pytest
import torch

from fastwgan.config import Config
from fastwgan.engine import ReferenceEngine
from fastwgan.fast import FastEngine
from fastwgan.models import Critic, Generator

from test_fast import TINY, FixedBatches, batches

STEPS = 6


def paper_critic_steps(G, D, data, cfg):
    """The paper code's critic loop: clamp every parameter, then one RMSprop step."""
    opt = torch.optim.RMSprop(D.parameters(), lr=cfg.learning_rate)
    for i in range(STEPS):
        with torch.no_grad():
            for p in D.parameters():
                p.clamp_(-cfg.clip, cfg.clip)
        real = data[i % len(data)]
        torch.manual_seed(1000 + i)
        z = torch.randn(cfg.batch_size, cfg.nz)
        with torch.no_grad():
            fake = G(z)
        opt.zero_grad()
        loss = D(fake).mean() - D(real).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():  # fastwgan's last step ends with its clip
        for p in D.parameters():
            p.clamp_(-cfg.clip, cfg.clip)
    return opt


def engine_critic_steps(make, G, D, data, cfg):
    engine = make(cfg, G, D, FixedBatches(data))
    for i in range(STEPS):
        torch.manual_seed(1000 + i)
        engine.critic()
    return engine


ENGINES = {
    "reference": lambda cfg, G, D, src: ReferenceEngine(cfg, G, D, src, torch.device("cpu"), None),
    "fast": lambda cfg, G, D, src: FastEngine(cfg, G, D, src, torch.device("cpu"), None, graphs=False,
                                              impl="ref"),
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_critic_equals_clamp_before_step(name):
    # the paper's learning rate and clip: BatchNorm weights near 1 and most conv weights lie
    # outside [-0.01, 0.01] at initialisation, so the first gradient differs without the clip
    cfg = Config(**{**TINY, "lr": 5e-5, "clip": 0.01})
    torch.manual_seed(0)
    G, D = Generator(cfg.image_size, cfg.nz, cfg.ngf), Critic(cfg.image_size, cfg.ndf)
    assert max(p.abs().max().item() for p in D.parameters()) > 10 * cfg.clip
    data = batches(cfg, 4)
    paper_G, paper_D = copy.deepcopy(G), copy.deepcopy(D)
    paper_opt = paper_critic_steps(paper_G, paper_D, data, cfg)
    engine = engine_critic_steps(ENGINES[name], G, D, data, cfg)

    tol = dict(rtol=1e-6, atol=1e-9)
    for (k, p), q in zip(engine.D.named_parameters(), paper_D.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m: f"{k}: {m}", **tol)
    ours, theirs = engine.opt_d.state_dict()["state"], paper_opt.state_dict()["state"]
    assert len(ours) == len(theirs) == len(list(D.parameters()))
    for i, s in theirs.items():
        torch.testing.assert_close(ours[i]["square_avg"], s["square_avg"], msg=lambda m: f"{i}: {m}",
                                   rtol=1e-5, atol=1e-12)


def test_clip_at_build_is_a_no_op_for_a_clipped_critic():
    cfg = Config(**TINY)
    torch.manual_seed(0)
    G, D = Generator(cfg.image_size, cfg.nz, cfg.ngf), Critic(cfg.image_size, cfg.ndf)
    with torch.no_grad():
        for p in D.parameters():
            p.clamp_(-cfg.clip, cfg.clip)
    before = copy.deepcopy(D.state_dict())
    ReferenceEngine(cfg, G, D, iter([]), torch.device("cpu"), None)
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k
