"""The built-in synthetic face dataset: deterministic, CelebA-shaped, cached atomically, face-like."""
import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from fastwgan.data import synthetic
from fastwgan.data.synthetic import (HEIGHT, JPEG_QUALITY, VERSION, WIDTH, dataset_name,
                                     ensure_synthetic_dataset, render_face)

N = 12  # small: a dozen images take well under a second


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)  # (H, W, 3)


@pytest.fixture
def folder(tmp_path):
    return ensure_synthetic_dataset(tmp_path / "cache", n=N, seed=0)


def test_folder_layout_and_manifest(folder, tmp_path):
    assert folder == tmp_path / "cache" / dataset_name(N, 0)
    assert folder.name == f"synthetic-faces-{VERSION}-n{N}-s0"
    assert sorted(p.name for p in folder.glob("*.jpg")) == [f"{i:06d}.jpg" for i in range(N)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["count"], manifest["seed"], manifest["version"]) == (N, 0, VERSION)
    assert (folder / "README.txt").read_text().strip()
    for path in folder.glob("*.jpg"):
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (WIDTH, HEIGHT))
    assert (WIDTH, HEIGHT) == (178, 218)  # CelebA's aligned crops


def test_deterministic_across_runs(folder, tmp_path):
    again = ensure_synthetic_dataset(tmp_path / "other", n=N, seed=0)
    for i in range(N):
        name = f"{i:06d}.jpg"
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name


def test_each_image_regenerates_alone(folder):
    # image i depends on (seed, i) only: drawn out of order, it is the same file
    for i in (7, 0, 11):
        assert _jpeg_bytes(render_face(0, i)) == (folder / f"{i:06d}.jpg").read_bytes()
    assert render_face(3, 5).tobytes() == render_face(3, 5).tobytes()


def test_images_differ(folder, tmp_path):
    images = [_pixels(folder / f"{i:06d}.jpg") for i in range(N)]
    for i in range(N):
        for j in range(i + 1, N):
            assert np.abs(images[i] - images[j]).mean() > 5, (i, j)
    other_seed = ensure_synthetic_dataset(tmp_path / "cache", n=N, seed=1)
    assert other_seed != folder
    assert np.abs(_pixels(other_seed / "000000.jpg") - images[0]).mean() > 5


def test_existing_folder_is_returned_without_regenerating(folder, tmp_path, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def must_not_draw(seed, index):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(synthetic, "render_face", must_not_draw)
    assert ensure_synthetic_dataset(tmp_path / "cache", n=N, seed=0) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "fw"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synthetic.default_cache_root() == tmp_path / "fw"
    monkeypatch.delenv("FASTWGAN_CACHE")
    assert synthetic.default_cache_root() == tmp_path / "xdg" / "fastwgan"
    assert ensure_synthetic_dataset(n=2, seed=0) == tmp_path / "xdg" / "fastwgan" / dataset_name(2, 0)


def test_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    real = synthetic.render_face

    def dies_at_5(seed, index):
        if index == 5:
            raise KeyboardInterrupt
        return real(seed, index)

    monkeypatch.setattr(synthetic, "render_face", dies_at_5)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path, n=N, seed=0)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temporary one

    monkeypatch.setattr(synthetic, "render_face", real)
    folder = ensure_synthetic_dataset(tmp_path, n=N, seed=0)
    assert len(list(folder.glob("*.jpg"))) == N


def test_partial_folders_are_ignored(tmp_path):
    name = dataset_name(N, 0)
    # a generation killed hard (no cleanup), an hour old, and a fresh one possibly still running
    stale, fresh = tmp_path / f".{name}.tmp-1-dead", tmp_path / f".{name}.tmp-2-live"
    for tmp in (stale, fresh):
        tmp.mkdir()
        render_face(0, 0).save(tmp / "000000.jpg")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    # a half-written folder under the final name (no manifest): not taken as complete
    final = tmp_path / name
    final.mkdir()
    (final / "000000.jpg").write_bytes(b"truncated")

    assert ensure_synthetic_dataset(tmp_path, n=N, seed=0) == final
    assert len(list(final.glob("*.jpg"))) == N
    assert _pixels(final / "000000.jpg").shape == (HEIGHT, WIDTH, 3)
    assert not stale.exists()
    assert fresh.exists()  # another process may still be writing there


def test_racing_generator_wins(tmp_path, monkeypatch):
    # while we draw, another process finishes the same folder first: ours is discarded
    real = synthetic._write_images
    name = dataset_name(N, 0)

    def racing(folder, n, seed):
        rival = tmp_path / f".{name}.tmp-rival"
        rival.mkdir()
        real(rival, n, seed)
        (rival / "manifest.json").write_text(json.dumps({"version": VERSION, "count": n, "seed": seed}))
        (rival / "rival").touch()
        os.rename(rival, tmp_path / name)
        real(folder, n, seed)

    monkeypatch.setattr(synthetic, "_write_images", racing)
    folder = ensure_synthetic_dataset(tmp_path, n=N, seed=0)
    assert folder == tmp_path / name
    assert (folder / "rival").exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # our temporary folder is gone


def test_images_have_face_structure(folder):
    # cheap checks in output pixels: the cheeks under the eyes are skin, the eye band holds dark
    # pupils, and the face stands out from the background in the top corners
    for i in range(N):
        img = _pixels(folder / f"{i:06d}.jpg")
        cheeks = img[116:134, 69:109]                      # (18, 40, 3) below the eyes
        r, g, b = cheeks[..., 0], cheeks[..., 1], cheeks[..., 2]
        skin = (r > b + 10) & (r >= g - 5)                 # skin from light to dark: red over blue
        assert skin.mean() > 0.8, (i, skin.mean())
        luma = img.mean(axis=-1)
        eyes = luma[98:116, 55:123]
        assert eyes.min() < 0.6 * np.median(luma[116:134, 69:109]), i
        corners = np.concatenate([img[:12, :12].reshape(-1, 3), img[:12, -12:].reshape(-1, 3)])
        assert np.abs(corners.mean(0) - cheeks.reshape(-1, 3).mean(0)).sum() > 20, i


def test_rejects_empty_dataset(tmp_path):
    with pytest.raises(ValueError):
        ensure_synthetic_dataset(tmp_path, n=0)
