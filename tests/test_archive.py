"""--data img_align_celeba.zip: training and evaluation read a zip of images without unpacking it."""
import os
import zipfile

import numpy as np
import pytest
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import eval as eval_cli
from fastwgan import train
from fastwgan.config import Config
from fastwgan.data import Batches, DataError, open_dataset
from fastwgan.data.archive import ZipMember, scan_zip
from fastwgan.data.files import load_image

from oddfiles import make_good_folder, zip_folder

TINY = ["--preset", "smoke", "--no-progress", "--workers", "0", "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def unpacked(tmp_path):
    root = tmp_path / "celeba" / "img_align_celeba"
    make_good_folder(root / "a", n=5, seed=1)
    make_good_folder(root / "b", n=5, seed=2)
    return root


def test_members_decode_as_the_files(tmp_path, unpacked):
    z = zip_folder(unpacked, tmp_path / "c.zip", extra={
        "img_align_celeba/empty.jpg": b"", "img_align_celeba/notes.jpg": b"hello",
        "img_align_celeba/cut.jpg": (unpacked / "a").glob("*.jpg").__next__().read_bytes()[:300],
        "__MACOSX/img_align_celeba/._x.jpg": b"\0", "readme.txt": b"not an image"})
    scan = scan_zip(z)
    assert len(scan.files) == 10 and all(isinstance(m, ZipMember) for m in scan.files)
    assert sorted(m.name for m, _ in scan.bad) == ["cut.jpg", "empty.jpg", "notes.jpg"]
    assert "skipped 3 unusable file(s) of 13" in scan.warning()
    files = sorted(p for p in unpacked.rglob("*") if p.is_file())
    assert [m.member for m in scan.files] == [p.relative_to(unpacked.parent).as_posix() for p in files]
    for m, p in zip(scan.files, files):
        assert np.array_equal(load_image(m, 32, None), load_image(p, 32, None))


def weights(out):
    return ckpt_io.load(out)["generator"]


@pytest.mark.parametrize("mode,workers", [("resident", "0"), ("stream", "1")])  # a worker process reads it
def test_training_from_the_zip_is_training_from_the_folder(tmp_path, unpacked, mode, workers, capsys):
    z = zip_folder(unpacked, tmp_path / "c.zip", compress=zipfile.ZIP_STORED)
    common = [*TINY, "--iters", "3", "--data-mode", mode, "--workers", workers, "--data-backend", "pillow"]
    assert train.main([*common, "--data", str(z), "--out", str(tmp_path / "z")]) == 0
    assert "Pillow decodes the zip's members" in capsys.readouterr().out
    assert train.main([*common, "--data", str(unpacked), "--out", str(tmp_path / "f")]) == 0
    a, b = weights(tmp_path / "z"), weights(tmp_path / "f")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resident_cache_follows_the_zip(tmp_path, unpacked):
    z = zip_folder(unpacked, tmp_path / "c.zip")
    dataset = open_dataset(str(z))

    def loader():
        return Batches(open_dataset(str(z)), 32, None, 4, 0, torch.device("cpu"), mode="resident", workers=0)

    assert not loader().from_cache and loader().from_cache
    os.utime(z, ns=(0, z.stat().st_mtime_ns + 10**9))  # the zip changed
    assert not loader().from_cache
    assert len(dataset.files) == 10


def test_without_dali_auto_decodes_a_zip_with_pillow(tmp_path, unpacked, monkeypatch):
    # DALI decodes a zip as it decodes a folder (tests/test_dali.py); without DALI, auto is Pillow
    from fastwgan.data import dali

    monkeypatch.setattr(dali, "dali_available", lambda: False)
    z = zip_folder(unpacked, tmp_path / "c.zip")
    b = Batches(open_dataset(str(z)), 32, None, 4, 0, torch.device("cpu"), workers=0, backend="auto")
    assert b.backend == "pillow" and "Pillow decodes the zip's members" in b.describe()
    assert next(b).shape == (4, 3, 32, 32)
    with pytest.raises(DataError, match="DALI is not installed"):
        Batches(open_dataset(str(z)), 32, None, 4, 0, torch.device("cpu"), workers=0, backend="dali")


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("not a zip"), "is not a zip file"),
    (lambda p: p.write_bytes(zipfile_bytes()[:-30]), "is not a zip file"),   # end record cut off
    (lambda p: zipfile.ZipFile(p, "w").writestr("a.txt", "x"), "no .jpg, .jpeg or .png files found inside"),
    (lambda p: zipfile.ZipFile(p, "w").writestr("a.jpg", "x"), "none of the 1 image files inside"),
    (lambda p: None, "data not found"),
])
def test_a_zip_that_cannot_train_is_one_line(tmp_path, make, message, capsys):
    z = tmp_path / "bad.zip"
    make(z)
    assert train.main([*TINY, "--data", str(z), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_damaged_member_is_left_out(tmp_path, unpacked):
    z = zip_folder(unpacked, tmp_path / "c.zip", compress=zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    first = zipfile.ZipFile(z).infolist()[0]
    start = first.header_offset + 30 + len(first.filename)
    raw[start + 200] ^= 0xFF  # the CRC no longer matches
    z.write_bytes(bytes(raw))
    scan = scan_zip(z)
    assert len(scan.files) == 9 and "damaged in the zip" in scan.bad[0][1]


def zipfile_bytes():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.jpg", b"\xff\xd8\xff" + b"0" * 100 + b"\xff\xd9")
    return buf.getvalue()


def test_eval_takes_a_zip(tmp_path, unpacked):
    z = zip_folder(unpacked, tmp_path / "c.zip")
    real = eval_cli.load_real(str(z), Config(image_size=32), None, 8, seed=0)
    assert real.shape == (8, 3, 32, 32) and real.dtype == torch.uint8
    with pytest.raises(eval_cli.EvalError, match="no folder or zip at"):
        eval_cli.load_real(str(tmp_path / "none.zip"), Config(image_size=32), None, 8, seed=0)
