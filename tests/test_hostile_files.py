"""Image folders built to hurt: decompression bombs, byte bombs, symbolic-link loops, file names
that are not UTF-8."""
import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from fastwgan.data import DataError, open_dataset
from fastwgan.data import files as files_module
from fastwgan.data.files import (DEFAULT_MAX_PIXELS, MIN_BYTES_LIMIT, byte_limit, header_size,
                                 list_images, load_image, printable, scan_images)

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


# --- byte bombs: a small image followed by far more bytes than an image of its size can take ---

def small_jpeg() -> bytes:
    """A valid 64x64 JPEG (about 2 KB)."""
    buf = io.BytesIO()
    face_like(np.random.default_rng(0), 64, 64).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def byte_bomb(path, extra=MIN_BYTES_LIMIT + (1 << 20)):
    """A valid 64x64 JPEG followed by ``extra`` zero bytes: over the byte limit of any 64x64
    image (the floor, 16 MiB). Sparse on disk: it costs no space, only a reader's memory."""
    with open(path, "wb") as f:
        f.write(small_jpeg())
        f.truncate(f.tell() + extra)
    return path


class MemberReads:
    """Records the members a zip has read whole (``ZipFile.read``)."""

    def __init__(self, monkeypatch):
        self.names = []
        read = zipfile.ZipFile.read

        def recorded(zf, name, pwd=None):
            self.names.append(getattr(name, "filename", name))
            return read(zf, name, pwd)

        monkeypatch.setattr(zipfile.ZipFile, "read", recorded)


def test_bytes_after_a_small_image_are_screened(tmp_path):
    """A 64x64 JPEG with 17 MiB of zeros after it decodes (decoders stop at its end marker), but
    a loader would read it whole: it is left out by its size, before anything reads it. A small
    image with 1 MiB of metadata (APP segments, as an ICC profile or EXIF) stays: under the
    floor."""
    root = tmp_path / "d"
    make_good_folder(root, n=2)
    byte_bomb(root / "bomb.jpg")
    raw = small_jpeg()
    app = b"".join(b"\xff\xe2" + struct.pack(">H", 65000) + bytes(64998) for _ in range(16))
    (root / "metadata.jpg").write_bytes(raw[:2] + app + raw[2:])
    assert byte_limit((64, 64), DEFAULT_MAX_PIXELS) == MIN_BYTES_LIMIT
    assert byte_limit((2000, 2000), DEFAULT_MAX_PIXELS) == 16 * 2000 * 2000
    scan = scan_images(root)
    assert sorted(p.name for p in scan.files) == ["000.jpg", "001.jpg", "metadata.jpg"]
    [(bad, why)] = scan.bad
    assert bad.name == "bomb.jpg" and why.startswith("too many bytes") and "64x64 image" in why
    assert f"{MIN_BYTES_LIMIT:,}" in why


def test_zip_bombs_are_screened_before_they_are_read(tmp_path, monkeypatch):
    """In a zip, the member's size comes from the central directory and is screened before the
    member is read: a deflated byte bomb (17 MiB of zeros in 17 KB) for its inflation, a stored
    one that does not inflate (random bytes, the floor scaled down to 1 MiB) for its size. Neither
    is ever read whole."""
    root = tmp_path / "d"
    make_good_folder(root, n=2)
    z = tmp_path / "d.zip"
    rng = np.random.default_rng(0)
    noise = small_jpeg() + bytes(rng.integers(0, 256, 2 << 20, dtype=np.uint8))
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(root.iterdir()):
            zf.write(f, f.name)
        zf.writestr("zeros.jpg", small_jpeg() + bytes(MIN_BYTES_LIMIT + (1 << 20)))
        zf.writestr("noise.jpg", noise)
    assert z.stat().st_size < 3 << 20
    monkeypatch.setattr(files_module, "MIN_BYTES_LIMIT", 1 << 20)
    reads = MemberReads(monkeypatch)
    dataset = open_dataset(str(z))
    assert sorted(m.name for m in dataset.files) == ["000.jpg", "001.jpg"]
    reasons = {m.name: why for m, why in dataset.bad}
    zeros, noise = reasons["zeros.jpg"], reasons["noise.jpg"]
    assert zeros.startswith("inflates") and "not an encoded image" in zeros
    assert noise.startswith("too many bytes") and "64x64 image" in noise
    assert sorted(reads.names) == ["000.jpg", "001.jpg"]


@pytest.mark.parametrize("source", ["folder", "zip"])
@pytest.mark.parametrize("backend", ["pillow", "dali"])
def test_trainer_reports_a_byte_bomb_like_other_skipped_files(tmp_path, monkeypatch, capsys,
                                                              backend, source):
    """Both loaders, from a folder (the bomb sparse on disk) and from a zip (deflated): the
    bomb is skipped and named in the scan's warning; training goes on without it."""
    from fastwgan import train

    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    make_good_folder(root, n=8)
    byte_bomb(root / "bomb.jpg")
    data = root
    if source == "zip":
        data = tmp_path / "d.zip"
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(root.iterdir()):
                zf.write(f, f.name)
    assert train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data", str(data),
                       "--data-backend", backend, "--data-mode", "resident",
                       "--out", str(tmp_path / "r"), "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "data: 8 images" in out and "skipped 1 unusable file(s) of 9" in out
    assert "bomb.jpg (" + ("too many bytes" if source == "folder" else "inflates") in out


# --- file names that are not UTF-8 ---

def test_printable_escapes_the_bytes_of_a_name_that_is_not_utf8():
    name = os.fsdecode(b"/data/\xff\xfe.jpg")  # as os.listdir gives it: surrogate escapes
    assert printable(name) == "/data/\\xff\\xfe.jpg"
    assert printable("/data/caf\u00e9.jpg") == "/data/caf\u00e9.jpg"  # UTF-8 names unchanged
    assert printable("\ud800") == "\\ud800"  # a surrogate that is no escaped byte


@pytest.mark.parametrize("mode", ["resident", "stream"])
@pytest.mark.parametrize("backend", ["pillow", "dali"])
def test_names_that_are_not_utf8_train(tmp_path, monkeypatch, capsys, backend, mode):
    """A folder holding names that are not UTF-8 (legal on Linux): a good image, an unusable one
    and one that passes the scan but does not decode. The run trains on the good one (the cache
    key hashes its name's bytes; DALI, which refuses such names, gets its bytes), and names the
    others with the odd bytes escaped, on the console (captured here by a strict UTF-8 stream,
    which refuses surrogates) and in train.log."""
    from fastwgan import train

    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    make_good_folder(root, n=24)  # DALI's stream gives up after 3 batches in a row with the garbage
    os.rename(root / "003.jpg", os.path.join(os.fsencode(root), b"\xff\xfe.jpg"))
    with open(os.path.join(os.fsencode(root), b"\xfe\xff-bad.jpg"), "wb") as f:
        f.write(b"not an image")
    noise = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8)
    with open(os.path.join(os.fsencode(root), b"zz\xfd-garbage.jpg"), "wb") as f:
        # passes the scan (start and end markers), does not decode
        f.write(b"\xff\xd8\xff" + bytes(noise) + b"\xff\xd9")
    out_dir = tmp_path / "r"
    assert train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data", str(root),
                       "--data-backend", backend, "--data-mode", mode, "--out", str(out_dir),
                       "--iters", "2", "--log-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "data: 25 images" in out  # the 24 good ones (one with the odd name) and the garbage
    assert "\\xfe\\xff-bad.jpg (not a JPEG or PNG)" in out
    log = (out_dir / "train.log").read_text(encoding="utf-8")
    assert "\\xfe\\xff-bad.jpg (not a JPEG or PNG)" in log
    if mode == "resident":  # a stream meets the garbage only when a batch draws it
        assert "zz\\xfd-garbage.jpg" in log
