"""fastwgan.weight_cast: the weight gradient added straight into .grad, bit for bit what autocast's
cast and autograd's accumulation give."""
import copy

import pytest
import torch
from torch import nn

from fastwgan.weight_cast import conv_forward, set_cast_into_grad


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 4, 4, 2, 1, bias=False),
                                  lambda: nn.ConvTranspose2d(3, 4, 4, 2, 1, bias=False)],
                         ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("grad_before", ["zeros", "values", "none"])
def test_gradient_into_grad_equals_autocast(make, grad_before):
    torch.manual_seed(0)
    plain = make()
    marked = set_cast_into_grad(copy.deepcopy(plain))
    x = torch.randn(2, 3, 6, 6)
    dy = None
    for conv in (plain, marked):
        if grad_before == "zeros":
            conv.weight.grad = torch.zeros_like(conv.weight)
        elif grad_before == "values":
            conv.weight.grad = torch.full_like(conv.weight, 0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            y = conv_forward(conv, x)
        assert y.dtype == torch.bfloat16
        dy = torch.randn_like(y) if dy is None else dy
        y.backward(dy)
    assert torch.equal(marked.weight.grad, plain.weight.grad)  # bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        assert torch.equal(conv_forward(marked, x), plain(x))


def test_outside_autocast_or_unmarked_is_the_module():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(conv_forward(set_cast_into_grad(conv), x), conv(x))
    assert torch.equal(conv_forward(set_cast_into_grad(conv, False), x), conv(x))
