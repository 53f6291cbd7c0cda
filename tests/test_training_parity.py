"""Does the fast engine learn as well as the reference? Train both, compare SWD to the data.

The two backends draw their batches differently (the reference: a shuffle per epoch; the fast
engine: i.i.d. draws on the device), so their trajectories differ from the first step and only
the quality of the result can be compared: each must improve far on the untrained generator, and
their distances to the data must be close. Slow: minutes on a 2-core CPU.
"""
import json
import os

import pytest
import torch

from fastwgan import train
from fastwgan.config import Config
from fastwgan.data import open_dataset, sample_images
from fastwgan.metrics import swd_for_training
from fastwgan.models import Generator


def final_swd(out):
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["swd"]


def untrained_swd(cfg: Config, n: int, device="cpu"):
    torch.manual_seed(cfg.seed)
    G = Generator(cfg.image_size, cfg.nz, cfg.ngf).to(device)
    real = sample_images(open_dataset(None), cfg.image_size, cfg.crop, n, cfg.seed + 3)
    return swd_for_training(G, real, z_seed=cfg.seed + 2)["mean"]


def train_both(tmp_path, flags, iters, n_eval):
    common = ["--no-progress", "--iters", str(iters), "--eval-every", str(iters), "--eval-n", str(n_eval),
              "--sample-every", str(iters), "--ckpt-every", str(iters), *flags]
    swd = {}
    for backend in ("reference", "fast"):
        out = tmp_path / backend
        assert train.main([*common, "--backend", backend, "--out", str(out)]) == 0
        swd[backend] = final_swd(out)
    return swd


def check(swd, start, what, capsys):
    with capsys.disabled():
        print(f"\nSWD x1e3 after {what}: reference {swd['reference']:.1f}, fast {swd['fast']:.1f}; "
              f"untrained generator {start:.1f}")
    for name, value in swd.items():
        assert value < 0.6 * start, (name, value, start)
    # different data order, same recipe: within 30% of each other
    assert abs(swd["fast"] - swd["reference"]) <= 0.3 * max(swd.values()), swd


@pytest.mark.slow
def test_fast_learns_as_well_as_reference_cpu(tmp_path, capsys):
    flags = ["--preset", "cpu", "--ngf", "16", "--ndf", "16", "--lr", "2e-4"]
    iters, n_eval = 300, 512
    swd = train_both(tmp_path, flags, iters, n_eval)
    start = untrained_swd(Config(image_size=32, ngf=16, ndf=16), n_eval)
    check(swd, start, f"{iters} iterations", capsys)


@pytest.mark.slow
@pytest.mark.gpu
def test_fast_learns_as_well_as_reference_gpu(tmp_path, capsys):
    """The 64x64 paper recipe for a few thousand iterations on the built-in faces
    (FASTWGAN_PARITY_ITERS sets fewer, for a quick look)."""
    iters, n_eval = int(os.environ.get("FASTWGAN_PARITY_ITERS", 2000)), 2048
    swd = train_both(tmp_path, ["--amp"], iters, n_eval)
    start = untrained_swd(Config(), n_eval, "cuda")
    check(swd, start, f"{iters} iterations (64x64, bf16)", capsys)


def learns_on_cpu(tmp_path, capsys, loss: str, lr: float, iters: int = 100, n_eval: int = 512) -> None:
    """``--loss loss`` at ``lr`` (the cpu preset at width 16) ends below 0.6 of the untrained
    generator's SWD after ``iters`` iterations."""
    out = tmp_path / loss
    assert train.main(["--no-progress", "--preset", "cpu", "--ngf", "16", "--ndf", "16", "--loss", loss,
                       "--lr", str(lr), "--iters", str(iters), "--eval-every", str(iters), "--eval-n", str(n_eval),
                       "--sample-every", str(iters), "--ckpt-every", str(iters), "--out", str(out)]) == 0
    swd = final_swd(out)
    start = untrained_swd(Config(image_size=32, ngf=16, ndf=16), n_eval)
    with capsys.disabled():
        print(f"\nSWD x1e3 of {loss} after {iters} iterations: {swd:.1f}; untrained generator {start:.1f}")
    assert swd < 0.6 * start, (swd, start)


@pytest.mark.slow
def test_wgan_gp_learns_cpu(tmp_path, capsys):
    """WGAN-GP (Adam betas (0, 0.9), no warm-up phases, critic without BatchNorm) moves far from
    the untrained generator. At width 16 its default lr of 1e-4 barely moves in a short run
    (bench/RESULTS.md: with 3e-4, SWD 229 at iteration 50 and 149 at 150), so the test takes 1e-3:
    107 at iteration 100. bench/RESULTS.md compares it with weight clipping at the cpu preset's
    full size."""
    learns_on_cpu(tmp_path, capsys, "wgan-gp", 1e-3)
