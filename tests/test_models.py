import pytest
import torch
from torch import nn

from fastwgan.models import Block, Critic, Generator, set_impl


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_every_size(size):
    G, D = Generator(size, nz=16, ngf=8), Critic(size, ndf=8)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, size, size)
    assert x.abs().max() <= 1  # tanh
    assert D(x).shape == (3,)
    assert G(torch.randn(3, 16, 1, 1)).shape == (3, 3, size, size)


def test_paper_sizes_64():
    # the paper code's networks at 64x64, ngf = ndf = 64 (shared/FACTS.md: 3.57 M and 2.76 M)
    G, D = Generator(64), Critic(64)
    assert sum(p.numel() for p in G.parameters()) == 3_576_704
    assert sum(p.numel() for p in D.parameters()) == 2_765_568
    convs = [m for m in [*G.modules(), *D.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs and all(m.bias is None for m in convs)
    widths = [b.conv.out_channels for b in G.blocks]
    assert widths == [512, 256, 128, 64]
    assert [b.conv.out_channels for b in D.blocks] == [64, 128, 256, 512]
    assert D.blocks[0].bn is None  # no BatchNorm on the critic's first layer


def test_extra_layers():
    G, D = Generator(32, nz=8, ngf=8, extra_layers=2), Critic(32, ndf=8, extra_layers=2)
    assert len(G.blocks) == len(Generator(32, nz=8, ngf=8).blocks) + 2
    assert D(G(torch.randn(2, 8))).shape == (2,)


def test_init_statistics():
    torch.manual_seed(0)
    D = Critic(64)
    w = torch.cat([m.weight.flatten() for m in D.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = [m for m in D.modules() if isinstance(m, nn.BatchNorm2d)]
    gw = torch.cat([m.weight for m in bn]).detach()
    assert abs(gw.mean().item() - 1) < 5e-3 and abs(gw.std().item() - 0.02) < 5e-3
    assert all((m.bias == 0).all() for m in bn)


def test_bad_image_size():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)
    with pytest.raises(ValueError, match="impl"):
        Critic(32, impl="cuda")


def test_state_dict_round_trip_across_impl():
    torch.manual_seed(0)
    G = Generator(32, nz=8, ngf=8)
    G(torch.randn(4, 8))  # move the running statistics away from their initial values
    sd = G.state_dict()
    H = Generator(32, nz=8, ngf=8, impl="triton")
    assert list(H.state_dict()) == list(sd)
    H.load_state_dict(sd)
    for k, v in H.state_dict().items():
        assert torch.equal(v, sd[k]), k
    set_impl(H, "ref")
    assert all(b.impl == "ref" for b in H.modules() if isinstance(b, Block))
    G.eval(), H.eval()
    z = torch.randn(2, 8)
    assert torch.equal(G(z), H(z))
