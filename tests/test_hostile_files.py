"""Image folders built to hurt: decompression bombs and symbolic-link loops."""
import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from fastwgan.data import DataError, open_dataset
from fastwgan.data.files import (DEFAULT_MAX_PIXELS, header_size, list_images, load_image,
                                 scan_images)

from oddfiles import face_like, make_good_folder


def bomb_jpeg(path, width=30000, height=30000):
    """A small JPEG whose start-of-frame claims ``width`` x ``height`` (its data is 64x48)."""
    buf = io.BytesIO()
    face_like(np.random.default_rng(0), 64, 48).save(buf, format="JPEG", quality=80)
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    raw[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(raw))
    return path


def bomb_png(path, width=20000, height=20000):
    """A small PNG whose IHDR claims ``width`` x ``height``, with a valid CRC."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = struct.pack(">II", width, height)  # after the signature, length and b"IHDR"
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


def test_header_size_reads_jpeg_and_png_headers(tmp_path):
    jpg = make_good_folder(tmp_path / "d", n=1)[0]
    assert header_size(open(jpg, "rb")) == (178, 218)
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "x.png")
    assert header_size(open(tmp_path / "x.png", "rb")) == (9, 7)
    # a large APP segment (EXIF-like) before the frame header, read from the first bytes only
    raw = jpg.read_bytes()
    app = b"\xff\xe1" + struct.pack(">H", 40002) + bytes(40000)
    first = raw[:2] + app + raw[2:]
    assert header_size(io.BytesIO(first[:60000])) == (178, 218)
    assert header_size(io.BytesIO(b"not an image")) is None


def test_bomb_headers_are_screened_before_decoding(tmp_path):
    root = tmp_path / "d"
    make_good_folder(root, n=3)
    bomb_jpeg(root / "bomb.jpg")
    bomb_png(root / "bomb.png")
    assert header_size(open(root / "bomb.jpg", "rb")) == (30000, 30000)
    assert header_size(open(root / "bomb.png", "rb")) == (20000, 20000)
    scan = scan_images(root)
    assert sorted(p.name for p in scan.files) == ["000.jpg", "001.jpg", "002.jpg"]
    reasons = dict((p.name, why) for p, why in scan.bad)
    assert set(reasons) == {"bomb.jpg", "bomb.png"}
    assert "30000x30000" in reasons["bomb.jpg"] and "too large" in reasons["bomb.jpg"]
    assert "20000x20000" in reasons["bomb.png"]
    assert "skipped 2 unusable file(s)" in scan.warning()


def test_bombs_inside_a_zip_are_screened_with_the_same_limit(tmp_path):
    root = tmp_path / "d"
    make_good_folder(root, n=3)  # 178x218
    bomb_jpeg(root / "bomb.jpg")
    bomb_png(root / "bomb.png")
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(root.iterdir()):
            zf.write(f, f"faces/{f.name}")
    dataset = open_dataset(str(z))
    assert sorted(m.name for m in dataset.files) == ["000.jpg", "001.jpg", "002.jpg"]
    reasons = dict((m.name, why) for m, why in dataset.bad)
    assert "30000x30000" in reasons["bomb.jpg"] and "too large" in reasons["bomb.jpg"]
    assert "20000x20000" in reasons["bomb.png"]
    with pytest.raises(DataError, match="could be read"):
        open_dataset(str(z), max_pixels=178 * 218 - 1)


def test_max_pixels_is_one_limit(tmp_path, monkeypatch):
    root = tmp_path / "d"
    make_good_folder(root, n=2)  # 178x218 = 38,804 pixels
    assert len(open_dataset(str(root), max_pixels=178 * 218).files) == 2
    with pytest.raises(DataError, match="could be read"):
        open_dataset(str(root), max_pixels=178 * 218 - 1)
    # Pillow decodes what the scan let through, whatever its own default limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(root / "000.jpg", 16, None).shape == (16, 16, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert DEFAULT_MAX_PIXELS == 89_478_485  # Pillow's default


def test_trainer_reports_a_bomb_like_other_skipped_files(tmp_path, monkeypatch, capsys):
    from fastwgan import train

    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    make_good_folder(root, n=8)
    bomb_jpeg(root / "bomb.jpg")
    assert train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data", str(root),
                       "--out", str(tmp_path / "r"), "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unusable file(s) of 9" in out and "30000x30000" in out


# --- symbolic links ---

def test_link_to_itself_does_not_multiply_the_dataset(tmp_path):
    root = tmp_path / "d"
    make_good_folder(root, n=3)
    os.symlink(".", root / "a")
    assert [p.name for p in list_images(root)] == ["000.jpg", "001.jpg", "002.jpg"]


def test_two_loops_end(tmp_path):
    root = tmp_path / "d"
    make_good_folder(root / "x", n=2)
    os.symlink(".", root / "a")
    os.symlink("..", root / "x" / "up")
    os.symlink(str(root), root / "x" / "abs")
    files = list_images(root)
    assert [str(p.relative_to(root)) for p in files] == ["x/000.jpg", "x/001.jpg"]


def test_linked_dataset_folders_are_followed(tmp_path):
    real = tmp_path / "real"
    make_good_folder(real / "part1", n=2)
    make_good_folder(tmp_path / "elsewhere", n=2, seed=1)
    os.symlink(real, tmp_path / "linked")  # --data itself a link
    os.symlink(tmp_path / "elsewhere", real / "part2")  # a linked subfolder
    os.symlink(real / "part1" / "000.jpg", real / "same.jpg")  # the same file twice
    os.symlink(tmp_path / "missing", real / "dangling")
    files = list_images(tmp_path / "linked")
    assert [str(p.relative_to(tmp_path / "linked")) for p in files] == [
        "part1/000.jpg", "part1/001.jpg", "part2/000.jpg", "part2/001.jpg"]
