"""The gradient penalty under bf16 autocast against fp32, at the 64x64 DCGAN critic (no norm).

Why fastwgan computes the penalty in fp32 under --amp: this prints, for the critic at its init and
with its weights scaled so that the input gradients' norms are near 1 (where a trained WGAN-GP
critic keeps them), the relative error of the per-sample gradient norms, of the penalty
E[(norm - 1)^2], and of the penalty's gradient in the critic's weights, when D(x_hat) and its
input gradient run under bf16 autocast.

    python bench/gp_bf16.py [--batch 16] [--device cpu]
"""
from __future__ import annotations

import argparse

import torch

from fastwgan.build import build_critic
from fastwgan.runconfig import preset_config


def penalty(D, x_hat, amp: bool):
    x_hat = x_hat.detach().requires_grad_(True)
    with torch.autocast(x_hat.device.type, dtype=torch.bfloat16, enabled=amp):
        out = D(x_hat).float()
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norms = grad.float().flatten(1).norm(dim=1)
    gp = ((norms - 1) ** 2).mean()
    wgrad = torch.autograd.grad(gp, list(D.parameters()))
    return norms.detach(), gp.detach(), torch.cat([g.flatten() for g in wgrad]).float()


def critic_term_gradient(D, x, amp: bool):
    """The weight gradient of mean D(x), the Wasserstein term, for comparison."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = D(x).float().mean()
    return torch.cat([g.flatten() for g in torch.autograd.grad(out, list(D.parameters()))]).float()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    D = build_critic(preset_config(loss="wgan-gp")).to(args.device)  # 64x64, width 64, no norm
    x_hat = torch.rand(args.batch, 3, 64, 64, device=args.device) * 2 - 1
    for label, scale in [("init (N(0, 0.02))", 1.0), ("weights x1.89 (norms near 1)", 1.886)]:
        with torch.no_grad():
            for p in D.parameters():
                p.mul_(scale)
        n32, gp32, w32 = penalty(D, x_hat, amp=False)
        n16, gp16, w16 = penalty(D, x_hat, amp=True)
        print(f"{label}: grad norm mean {n32.mean():.4g}; bf16 vs fp32 relative error: "
              f"per-sample norms max {((n16 - n32).abs() / n32).max():.2e}, "
              f"penalty {abs(gp16 - gp32) / gp32:.2e} ({gp16:.4g} vs {gp32:.4g}), "
              f"penalty's weight gradient {rel(w16, w32):.2e}; the Wasserstein term's weight gradient "
              f"{rel(critic_term_gradient(D, x_hat, True), critic_term_gradient(D, x_hat, False)):.2e}")


if __name__ == "__main__":
    main()
