"""K networks as one grouped network: the same outputs, gradients and running statistics as the
members side by side (fp32: grouped and plain convolutions sum in another order)."""
import copy

import pytest
import torch

from fastwgan.models import Critic, Generator
from fastwgan.sweep.grouped import GroupedCritic, GroupedGenerator

K, N, NZ = 3, 4, 16


def assert_near(a, b, name):
    """Within 1e-4 of the tensor's largest value: rounding scales with the tensor, and through
    BatchNorm of 4 samples an element near zero keeps the error of its larger neighbours."""
    worst = (a - b).abs().max().item()
    assert worst <= 1e-4 * b.abs().max().item() + 1e-7, f"{name}: {worst:.3g}"


def members(norm="batch"):
    Gs, Ds = [], []
    for k in range(K):
        torch.manual_seed(k)
        Gs.append(Generator(32, NZ, 8))
        Ds.append(Critic(32, 8, norm=norm))
    return Gs, Ds


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])  # the critics of every loss
def test_grouped_equals_members(norm):
    Gs, Ds = members(norm)
    plain_G, plain_D = copy.deepcopy(Gs), copy.deepcopy(Ds)
    GG, GD = GroupedGenerator(Gs), GroupedCritic(Ds)
    z = [torch.randn(N, NZ) for _ in range(K)]
    fake = GG(torch.cat(z, 1))                      # (N, K*3, 32, 32)
    scores = GD(fake)                               # (N, K)
    scores.sum().backward()
    plain = [d(g(zk)) for g, d, zk in zip(plain_G, plain_D, z)]
    torch.stack(plain, 1).sum().backward()
    assert scores.shape == (N, K)
    torch.testing.assert_close(scores, torch.stack(plain, 1), rtol=1e-4, atol=1e-6)
    for grouped, single in [*zip(Gs, plain_G), *zip(Ds, plain_D)]:
        for (name, p), q in zip(grouped.named_parameters(), single.parameters()):
            assert_near(p.grad, q.grad, name)
        for (name, b), c in zip(grouped.state_dict().items(), single.state_dict().values()):
            assert_near(b.float(), c.float(), name)


def test_a_members_nan_stays_in_its_group():
    Gs, Ds = members()
    GG, GD = GroupedGenerator(Gs), GroupedCritic(Ds)
    with torch.no_grad():
        Gs[1].blocks[0].conv.weight.fill_(float("nan"))
    scores = GD(GG(torch.randn(N, K * NZ)))
    assert torch.isnan(scores[:, 1]).all()
    assert torch.isfinite(scores[:, [0, 2]]).all()


def test_one_batch_of_real_and_fake_is_two_calls():
    """The fast engine's critic step with the kernels sends real and fake as one batch of 2N
    (fastwgan.models.row_groups): the grouped critic normalises each half by its own statistics
    and counts it as a call, as two calls do."""
    from fastwgan.models import row_groups

    _, Ds = members()
    two, one = GroupedCritic(copy.deepcopy(Ds)), GroupedCritic(Ds)
    real, fake = torch.randn(N, K * 3, 32, 32), torch.randn(N, K * 3, 32, 32)
    expected = torch.cat([two(real), two(fake)])
    with row_groups(one, 2):
        got = one(torch.cat([real, fake]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)  # conv rounding at batch 2N
    for (name, b), c in zip(one.state_dict().items(), two.state_dict().values()):
        assert_near(b.float(), c.float(), name)
    assert all(int(d.blocks[1].bn.num_batches_tracked) == 2 for d in Ds)
