"""Sliced Wasserstein distance, Fréchet distance and the evaluation CLI (fastwgan.metrics, fastwgan.eval).

The SWD is checked against an independent NumPy implementation written here with plain loops
(same sampled centres and directions, taken from ``sample_plan``), its pyramid against the
reference code's scipy.ndimage formulation, and its behaviour on structured images (random
smooth colour blobs): about 0 against itself, growing with noise and with blur.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastwgan.config import Config
from fastwgan.eval import main as eval_main
from fastwgan.metrics import (fid_from_features, frechet_distance, generate_uint8, laplacian_pyramid,
                              sample_plan, sliced_wasserstein, swd_for_training, wasserstein_1d)
from fastwgan.models import Critic, Generator


# ------------------------------------------------------------------------------------------------
# Structured test images
# ------------------------------------------------------------------------------------------------
def blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): a flat background plus 6 Gaussian colour blobs per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.1, 0.9, (2, n, 6, 1, 1))
    r = rng.uniform(0.05, 0.25, (n, 6, 1, 1))
    colour = rng.uniform(-1, 1, (n, 6, 3))
    w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))  # (n, 6, H, W)
    img = rng.uniform(0.2, 0.8, (n, 3, 1, 1)) + 0.5 * np.einsum("nkhw,nkc->nchw", w, colour)
    return torch.from_numpy(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))


def add_noise(a: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (a.float() + sigma * torch.randn(a.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def blur(a: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3 box blurs (edges replicated), rounded back to uint8."""
    x = a.float()
    for _ in range(passes):
        x = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def faces32() -> torch.Tensor:
    return blobs(64, 32, seed=0)


# ------------------------------------------------------------------------------------------------
# An independent NumPy SWD: loops, float64, the reference code's definitions
# ------------------------------------------------------------------------------------------------
_K5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def np_blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """5x5 binomial filter of one image (C, H, W), mirrored borders (scipy "mirror" = numpy "reflect")."""
    c, h, w = x.shape
    p = np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    out = np.zeros_like(x)
    for dy in range(5):
        for dx in range(5):
            out += gain * _K5[dy, dx] * p[:, dy:dy + h, dx:dx + w]
    return out


def np_laplacian(img: np.ndarray, levels: int) -> list[np.ndarray]:
    g = [img]
    for _ in range(levels - 1):
        g.append(np_blur(g[-1])[:, ::2, ::2])
    bands = []
    for k in range(levels - 1):
        up = np.zeros_like(g[k])
        up[:, ::2, ::2] = g[k + 1]
        bands.append(g[k] - np_blur(up, 4.0))
    return bands + [g[-1]]


def np_swd(a: np.ndarray, b: np.ndarray, plan) -> list[float]:
    """SWD x 1e3 per level, finest first, with the centres and directions of ``plan``."""
    r = plan.nhood_size // 2
    levels = len(plan.resolutions)
    pyr_a = [np_laplacian(img.astype(np.float64), levels) for img in a]
    pyr_b = [np_laplacian(img.astype(np.float64), levels) for img in b]
    out = []
    for lv in range(levels):
        sets = []
        for pyr, (ys, xs) in ((pyr_a, plan.centres_a[lv]), (pyr_b, plan.centres_b[lv])):
            desc = []
            for i in range(len(pyr)):
                for j in range(ys.shape[1]):
                    y, x = int(ys[i, j]), int(xs[i, j])
                    desc.append(pyr[i][lv][:, y - r:y + r + 1, x - r:x + r + 1])
            desc = np.stack(desc)  # (M, C, k, k)
            for c in range(desc.shape[1]):
                desc[:, c] = (desc[:, c] - desc[:, c].mean()) / desc[:, c].std()
            sets.append(desc.reshape(len(desc), -1))
        dirs = plan.dirs[lv].double().numpy()
        dists = []
        for p in range(dirs.shape[1]):
            pa, pb = np.sort(sets[0] @ dirs[:, p]), np.sort(sets[1] @ dirs[:, p])
            dists.append(np.mean(np.abs(pa - pb)))
        out.append(1e3 * np.mean(dists))
    return out


def test_matches_numpy_reference():
    a, b = blobs(5, 32, seed=3), add_noise(blobs(5, 32, seed=4), 6.0)
    plan = sample_plan(5, 5, 32, seed=11)
    got = sliced_wasserstein(a, b, plan=plan)
    want = np_swd(a.numpy(), b.numpy(), plan)
    assert got["resolutions"] == [32, 16]
    np.testing.assert_allclose(got["levels"], want, rtol=2e-4)
    assert got["mean"] == pytest.approx(np.mean(want), rel=2e-4)
    # without a plan, the same seed draws the same plan
    assert sliced_wasserstein(a, b, seed=11) == got


def test_pyramid_matches_reference_scipy():
    """The reference's pyr_down / pyr_up are scipy.ndimage.convolve(mode="mirror") with the 5x5 kernel."""
    ndimage = pytest.importorskip("scipy.ndimage")
    k = _K5.astype(np.float32)[None, None]

    def ref_down(x):
        return ndimage.convolve(x, k, mode="mirror")[:, :, ::2, ::2]

    def ref_up(x):
        n, c, h, w = x.shape
        up = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
        up[:, :, ::2, ::2] = x
        return ndimage.convolve(up, k * 4.0, mode="mirror")

    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    ref = [x]
    for _ in range(2):
        ref.append(ref_down(ref[-1]))
        ref[-2] = ref[-2] - ref_up(ref[-1])
    got = laplacian_pyramid(torch.from_numpy(x), 3)
    assert [tuple(t.shape[-2:]) for t in got] == [(64, 64), (32, 32), (16, 16)]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.numpy(), r, atol=2e-3)


# ------------------------------------------------------------------------------------------------
# Behaviour on structured images
# ------------------------------------------------------------------------------------------------
def test_self_distance_is_about_zero(faces32):
    """Against itself the SWD is only the sampling noise of the neighbourhood draws: about 20 (x1e3)
    at 64 images, far below a visible change; with the same centres on both sides it is exactly 0."""
    self_d = sliced_wasserstein(faces32, faces32)
    noisy = sliced_wasserstein(faces32, add_noise(faces32, 4.0))
    assert max(self_d["levels"]) < 35.0
    assert self_d["mean"] < 0.25 * noisy["mean"]
    plan = sample_plan(64, 64, 32)
    plan.centres_b = plan.centres_a
    assert sliced_wasserstein(faces32, faces32, plan=plan)["levels"] == [0.0, 0.0]


def test_self_distance_shrinks_with_more_images():
    small = sliced_wasserstein(blobs(32, 32, 5), blobs(32, 32, 5))["mean"]
    large = sliced_wasserstein(blobs(256, 32, 5), blobs(256, 32, 5))["mean"]
    assert large < 0.6 * small  # about 1/sqrt(8) in theory


def test_grows_with_noise(faces32):
    sigmas = [0, 2, 6, 16, 32]
    res = [sliced_wasserstein(faces32, add_noise(faces32, s)) for s in sigmas]
    means = [r["mean"] for r in res]
    coarse = [r["levels"][-1] for r in res]
    assert all(x < y for x, y in zip(means, means[1:])), means
    assert all(x < y for x, y in zip(coarse, coarse[1:])), coarse


def test_grows_with_blur(faces32):
    res = [sliced_wasserstein(faces32, blur(faces32, p)) for p in (0, 1, 2, 4)]
    means = [r["mean"] for r in res]
    finest = [r["levels"][0] for r in res]
    assert all(x < y for x, y in zip(means, means[1:])), means
    assert all(x < y for x, y in zip(finest, finest[1:])), finest


def test_deterministic_and_seed_matters_little(faces32):
    other = add_noise(faces32, 8.0)
    first = sliced_wasserstein(faces32, other, seed=3)
    assert sliced_wasserstein(faces32, other, seed=3) == first
    means = [sliced_wasserstein(faces32, other, seed=s)["mean"] for s in (0, 1, 2)]
    assert len(set(means)) == 3
    assert max(means) / min(means) < 1.1, means


def test_uint8_and_float_inputs_agree(faces32):
    other = blur(faces32, 1)
    as_float = faces32.float() / 127.5 - 1.0  # what the training loader feeds the networks
    want = sliced_wasserstein(faces32, other)
    assert sliced_wasserstein(as_float, other) == want
    assert sliced_wasserstein(as_float.double(), other.float() / 127.5 - 1.0) == want


def test_chunking_does_not_change_the_result(faces32):
    other = add_noise(faces32, 8.0)
    assert (sliced_wasserstein(faces32, other, batch_size=7)
            == sliced_wasserstein(faces32, other, batch_size=256))


def test_sample_plan_stays_inside():
    plan = sample_plan(4, 6, 64, seed=0)
    assert plan.resolutions == [64, 32, 16]
    for lv, res in enumerate(plan.resolutions):
        for (ys, xs), n in ((plan.centres_a[lv], 4), (plan.centres_b[lv], 6)):
            assert ys.shape == xs.shape == (n, 128)
            for t in (ys, xs):
                assert t.min() >= 3 and t.max() <= res - 4
        assert plan.dirs[lv].shape == (147, 512)
        torch.testing.assert_close(plan.dirs[lv].norm(dim=0), torch.ones(512))


def test_wasserstein_1d_closed_form():
    u = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    v = u[:, torch.randperm(1000)] + torch.tensor([[0.5], [-2.0], [0.0]])
    u0, v0 = u.clone(), v.clone()
    torch.testing.assert_close(wasserstein_1d(u, v), torch.tensor([0.5, 2.0, 0.0]), atol=1e-5, rtol=0)
    assert torch.equal(u, u0) and torch.equal(v, v0)  # inputs untouched unless overwrite=True


@pytest.mark.parametrize("a_shape, b_shape, why", [
    ((4, 3, 32, 32), (5, 3, 32, 32), "same size"),     # different image counts
    ((4, 3, 32, 32), (4, 3, 64, 64), "differ in shape"),
    ((4, 3, 32, 16), (4, 3, 32, 16), "square"),
    ((4, 3, 8, 8), (4, 3, 8, 8), "at least 16"),       # below the coarsest level
    ((4, 3, 48, 48), (4, 3, 48, 48), None),            # 48 -> 24: allowed
])
def test_input_checks(a_shape, b_shape, why):
    a, b = torch.zeros(a_shape, dtype=torch.uint8), torch.zeros(b_shape, dtype=torch.uint8)
    if why is None:
        assert sliced_wasserstein(a, b, dirs_per_repeat=8)["resolutions"] == [48, 24]
        return
    with pytest.raises(ValueError, match=why):
        sliced_wasserstein(a, b)


# ------------------------------------------------------------------------------------------------
# During training
# ------------------------------------------------------------------------------------------------
def test_swd_for_training():
    torch.manual_seed(0)
    gen = Generator(image_size=32, nz=8, ngf=4).train()
    real = blobs(40, 32, seed=2)
    got = swd_for_training(gen, real, n=24, z_seed=5, seed=1)
    assert gen.training  # mode restored
    assert swd_for_training(gen, real, n=24, z_seed=5, seed=1) == got
    fake = generate_uint8(gen, 24, z_seed=5)
    assert fake.dtype == torch.uint8 and fake.shape == (24, 3, 32, 32)
    assert got == sliced_wasserstein(real[:24], fake, seed=1)
    with pytest.raises(ValueError, match="only 40"):
        swd_for_training(gen, real, n=41)


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------
def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)
    # commuting, non-diagonal: the same value in a rotated basis; torch inputs are accepted
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    got = frechet_distance(torch.from_numpy(mu1 @ q.T), torch.from_numpy(s1), mu2 @ q.T, s2)
    assert got == pytest.approx(want, rel=1e-8)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 12)), rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formulation
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert fid_from_features(x, y) == pytest.approx(want, rel=1e-8)


# ------------------------------------------------------------------------------------------------
# The evaluation CLI
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A run directory with a tiny checkpoint in the trainer's format."""
    torch.manual_seed(0)
    cfg = Config(image_size=32, nz=8, ngf=4, ndf=4, crop=30)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": cfg.to_dict(), "generator": Generator(32, 8, 4).state_dict(),
                "critic": Critic(32, 4).state_dict(), "iteration": 7}, run / "checkpoint.pt")
    return run


@pytest.fixture
def fake_real(monkeypatch):
    """Replaces the data loader; records its arguments."""
    import fastwgan.data

    calls = []

    def load_real_images(data_dir, image_size, crop, n, seed=0):
        calls.append(dict(data_dir=data_dir, image_size=image_size, crop=crop, n=n, seed=seed))
        return blobs(min(n, 20), image_size, seed=seed)

    monkeypatch.setattr(fastwgan.data, "load_real_images", load_real_images)
    return calls


def _one_error_line(err: str, what: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m fastwgan.eval: error: ") and what in lines[0], err
    assert "Traceback" not in err


def test_eval_table_and_json(run_dir, fake_real, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert eval_main([str(run_dir), "--n", "16", "--seed", "3", "--device", "cpu", "--batch-size", "5",
                      "--metric", "swd", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "resolution" in table and "average" in table and "iteration 7" in table
    assert fake_real == [dict(data_dir=None, image_size=32, crop=30, n=16, seed=3)]  # the run's settings
    result = json.loads(out.read_text())
    assert result["n"] == 16 and result["iteration"] == 7 and result["fid"] is None
    swd = result["swd"]
    assert swd["resolutions"] == [32, 16] and swd["scale"] == 1000.0 and swd["directions"] == 512
    for res, v in zip(swd["resolutions"], swd["levels"]):
        assert any(line.split() == [str(res), f"{v:.3f}"] for line in table.splitlines())
    # the same numbers as the library on the same generator, noise and real images
    gen = Generator(32, 8, 4)
    gen.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["generator"])
    want = sliced_wasserstein(blobs(16, 32, seed=3), generate_uint8(gen, 16, z_seed=3), seed=3)
    assert swd["levels"] == want["levels"] and swd["mean"] == want["mean"]


def test_eval_fewer_real_images_and_crop_flag(run_dir, fake_real, capsys):
    argv = [str(run_dir / "checkpoint.pt"), "--n", "50", "--crop", "28", "--data", str(run_dir),
            "--metric", "swd"]
    assert eval_main(argv) == 0
    cap = capsys.readouterr()
    assert fake_real[0]["crop"] == 28 and fake_real[0]["data_dir"] == str(run_dir)
    assert "20 generated vs 20 real" in cap.out and "only 20 real images" in cap.err


class _FakeInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: uint8 images in, features out."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)  # (N, 12)
        return torch.cat([f, f * f], dim=1)


def png_folder(folder, n: int, size: int, seed: int) -> str:
    from PIL import Image

    folder.mkdir()
    for i, img in enumerate(blobs(n, size, seed=seed)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    return str(folder)


@pytest.mark.usefixtures("private_cache")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_eval_fid_with_torchscript_weights(run_dir, tmp_path, capsys):
    """NVIDIA's wrapping (uint8 in, return_features=True): every real image of --data against the
    generated ones."""
    from fastwgan.data import open_dataset, sample_images

    weights = tmp_path / "inception.pt"
    torch.jit.script(_FakeInception()).save(str(weights))
    data = png_folder(tmp_path / "imgs", 12, 32, seed=5)
    out = tmp_path / "eval.json"
    assert eval_main([str(run_dir), "--n", "16", "--data", data, "--metric", "fid",
                      "--fid-weights", str(weights), "--json", str(out)]) == 0
    assert "FID" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kid"] is None and result["swd"] is None and result["inception"]["real_n"] == 12
    gen = Generator(32, 8, 4)
    gen.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["generator"])
    model = _FakeInception()
    real = sample_images(open_dataset(data), 32, 30, 12)  # all of them, as the run's crop (30)
    want = fid_from_features(model(real), model(generate_uint8(gen, 16, z_seed=0)))
    assert result["fid"] == pytest.approx(want, rel=1e-6) and result["fid"] > 0  # float32 features


class _NotInception(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


@pytest.mark.usefixtures("private_cache")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_eval_fid_with_a_foreign_torchscript_module(run_dir, tmp_path, capsys):
    weights = tmp_path / "other.pt"
    torch.jit.script(_NotInception()).save(str(weights))
    data = png_folder(tmp_path / "imgs", 4, 32, seed=5)
    assert eval_main([str(run_dir), "--n", "4", "--data", data, "--fid-weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    _one_error_line(err.splitlines()[-1], "the Inception model failed")


def test_eval_with_image_folder(run_dir, tmp_path, capsys):
    """Through the real loader: a folder of PNGs, center-cropped and resized to the run's size."""
    folder = png_folder(tmp_path / "imgs", 12, 40, seed=9)
    assert eval_main([str(run_dir), "--data", folder, "--n", "12", "--metric", "swd"]) == 0
    assert "12 generated vs 12 real" in capsys.readouterr().out


@pytest.mark.parametrize("extra, what", [
    (["--n", "x"], "--n"),                    # bad flag value
    (["--bogus"], "unrecognized"),            # unknown flag
    (["--n", "0"], "--n must be at least 1"),
    (["--batch-size", "0"], "--batch-size"),
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--fid-weights", "/no/such/file.pt"], "/no/such/file.pt"),
    (["--json", "/no/such/dir/x.json"], "--json"),
    (["--metric", "fad"], "--metric: unknown fad"),
])
def test_eval_flag_errors(run_dir, fake_real, capsys, extra, what):
    assert eval_main([str(run_dir), *extra]) == 2
    _one_error_line(capsys.readouterr().err, what)


def test_eval_file_errors(run_dir, tmp_path, capsys):
    cases = []
    cases.append(([str(tmp_path / "missing")], "missing"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases.append(([str(junk)], "junk.pt"))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    cases.append(([str(other)], "not a fastwgan checkpoint"))
    wrong = tmp_path / "wrong.pt"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["config"]["ngf"] = 8
    torch.save(ckpt, wrong)
    cases.append(([str(wrong)], "does not match"))
    state_dict = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.zeros(3)}, state_dict)
    cases.append(([str(run_dir), "--fid-weights", str(state_dict)], "not a TorchScript"))
    if not torch.cuda.is_available():
        cases.append(([str(run_dir), "--device", "cuda"], "CUDA"))
    for argv, what in cases:
        assert eval_main(argv) == 2, argv
        _one_error_line(capsys.readouterr().err, what)


def test_eval_module_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastwgan.eval", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "nothing")
