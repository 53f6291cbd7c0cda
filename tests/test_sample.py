"""python -m fastwgan.sample --interpolate: spherical walks between pairs of z."""
import pytest
import torch
from PIL import Image

from fastwgan import sample, train
from fastwgan.models import Generator

from oddfiles import make_good_folder


pytestmark = pytest.mark.usefixtures("private_cache")


def test_slerp_ends_and_great_circle():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 100, generator=g), torch.randn(3, 100, generator=g)
    z1 = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)  # equal norms
    walk = sample.slerp(z0, z1, torch.linspace(0, 1, 9))
    assert walk.shape == (3, 9, 100)
    assert torch.equal(walk[:, 0], z0) and torch.equal(walk[:, -1], z1)
    # on the great circle: the norm stays, and the angle grows in equal steps
    torch.testing.assert_close(walk.norm(dim=2), z0.norm(dim=1, keepdim=True).expand(3, 9))
    cos = torch.nn.functional.cosine_similarity(walk[:, :-1], walk[:, 1:], dim=2)
    torch.testing.assert_close(cos, cos[:, :1].expand_as(cos))
    # a linear walk would shrink the norm midway: the spherical one does not
    assert ((z0 + z1) / 2).norm(dim=1).max() < walk[:, 4].norm(dim=1).min() - 0.5
    # a pair that is parallel falls back to the straight line, without NaN
    par = sample.slerp(z0[:1], 2 * z0[:1], torch.linspace(0, 1, 5))
    assert torch.isfinite(par).all()
    torch.testing.assert_close(par[0, 2], 1.5 * z0[0])


def test_walk_shape_and_ends_are_the_plain_samples():
    torch.manual_seed(0)
    G = Generator(32, nz=16, ngf=8).eval()
    walk = sample.interpolate(G, 3, 8, seed=5, device=torch.device("cpu"))
    assert walk.shape == (3, 8, 3, 32, 32)
    plain = sample.generate(G, 6, seed=5, device=torch.device("cpu"))
    torch.testing.assert_close(walk[:, 0], plain[0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(walk[:, -1], plain[1::2], rtol=0, atol=1e-6)
    assert not torch.allclose(walk[:, 3], walk[:, 0])  # it moves
    torch.testing.assert_close(sample.interpolate(G, 3, 8, seed=5, device=torch.device("cpu")), walk)


def test_cli_writes_the_walk_and_the_gif(tmp_path):
    make_good_folder(tmp_path / "data", n=10)
    out = tmp_path / "r"
    assert train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data", str(tmp_path / "data"),
                       "--out", str(out), "--iters", "1"]) == 0
    args = [str(out), "--interpolate", "4", "--steps", "9", "--seed", "2"]
    assert sample.main([*args, "--out", str(tmp_path / "walk.png"), "--gif", str(tmp_path / "walk.gif")]) == 0
    png = Image.open(tmp_path / "walk.png")
    assert png.size == (9 * 34 + 2, 4 * 34 + 2)  # a row per pair, a column per step, 2-pixel padding
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.format == "GIF" and gif.n_frames == 2 * 9 - 2  # forth and back
    assert gif.size == (2 * 34 + 2, 2 * 34 + 2)  # the 4 rows' images side by side, 2x2
    # seeded: the same file again; another seed, another walk
    assert sample.main([*args, "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "walk.png").read_bytes()
    assert sample.main([str(out), "--interpolate", "4", "--steps", "9", "--seed", "3",
                        "--out", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "walk.png").read_bytes()
    # the default file is walk.png beside the checkpoint
    assert sample.main([str(out), "--interpolate", "2"]) == 0 and (out / "walk.png").exists()
