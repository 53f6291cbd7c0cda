"""The DALI loaders against the Pillow loader (the reference), with DALI's CPU decoder; the GPU
tests (nvJPEG "mixed" decoding, the sampler in a CUDA graph) are skipped without a GPU.

Tolerance DALI vs Pillow, in levels of the [0, 255] range, per image: the mean absolute difference
under TOL_MEAN and the largest under TOL_MAX. Both resize with a triangle (antialiased linear)
filter, but treat the image border and the rounding differently. Measured with DALI 2.4.0 (CPU):
mean at most 0.24, max 4 (at the sharp colour edges of a palette PNG); JPEG decoding and the crop
box are bit-identical where nothing is resampled.
"""
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastwgan[dali]')")

from fastwgan.data import Batches, DataError, open_dataset, resolve_backend, resolve_mode
from fastwgan.data import dali
from fastwgan.data.batches import RESIDENT_MAX_BYTES, nhwc_to_training
from fastwgan.data.dali import DaliStream, build_pipeline, dali_cache_key, decode_dali, load_resident_dali
from fastwgan.data.files import load_image
from fastwgan.data.order import resident_batches
from fastwgan.data.pillow import decode_all
from fastwgan.data.sampler import ResidentSampler
from fastwgan.data.share import BatchShare

from oddfiles import make_good_folder, make_odd_folder, zip_folder

TOL_MEAN = 1.0
TOL_MAX = 6
# nvJPEG (GPU) and libjpeg-turbo round their IDCT and colour conversion differently: a little more
# room. Not measured yet (no GPU where this was written).
TOL_MEAN_GPU = 1.5
TOL_MAX_GPU = 10

CPU = torch.device("cpu")
OPAQUE_ODD = ["rgb.jpg", "upper.JPG", "upper2.JPEG", "gray.jpg", "cmyk.jpg", "progressive.jpg",
              "rgba.png", "palette.png", "gray16.png", "tiny.jpg", "nested/deeper/inner.png"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """CelebA-sized JPEGs and every opaque kind of file of the odd folder (rgba.png is opaque)."""
    root = tmp_path_factory.mktemp("mixed")
    make_odd_folder(root / "odd")
    good = make_good_folder(root / "good", n=6)
    return good + [root / "odd" / name for name in OPAQUE_ODD]


def garbage_jpeg(path):
    """A file that passes scan_images (JPEG start and end markers) but does not decode."""
    rng = np.random.default_rng(7)
    path.write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)) + b"\xff\xd9")
    return path


def compare(files, decoded, image_size, crop, tol_mean, tol_max):
    """Per-file |DALI - Pillow| against the tolerances; the failure lists the worst files."""
    rows = []
    for f, got in zip(files, decoded):
        ref = load_image(f, image_size, crop).astype(np.int32)
        d = np.abs(got.cpu().numpy().astype(np.int32) - ref)
        rows.append((float(d.mean()), int(d.max()), f.name))
    bad = [r for r in rows if r[0] >= tol_mean or r[1] > tol_max]
    worst = sorted(rows, key=lambda r: (r[1], r[0]))[-3:]
    assert not bad, f"over tolerance (mean, max, file): {bad}; worst: {worst}"
    return rows


# --- the preprocessing ---------------------------------------------------------------------------

@pytest.mark.parametrize("image_size, crop", [
    (64, None),  # the shorter side, resized down
    (64, 108),   # CelebA's crop
    (32, 40),    # tiny.jpg (9x7) and inner.png (64x80) are scaled up to the crop first
    (64, 64),    # crop == image size: no resampling except for tiny.jpg
])
def test_dali_matches_pillow(mixed_files, image_size, crop):
    decoded = decode_dali(mixed_files, image_size, crop, CPU)
    assert decoded.shape == (len(mixed_files), image_size, image_size, 3) and decoded.dtype == torch.uint8
    rows = compare(mixed_files, decoded, image_size, crop, TOL_MEAN, TOL_MAX)
    if crop == image_size:  # nothing resampled: decode and crop bit-identical
        assert all(mx == 0 for _, mx, name in rows if name != "tiny.jpg"), rows


@pytest.mark.parametrize("w, h", [(178, 218), (179, 219), (218, 178)])  # CelebA, odd margins, landscape
def test_crop_box_is_pillows(tmp_path, w, h):
    # lossless noise: a box one pixel off cannot pass
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = decode_dali([tmp_path / "x.png"], 108, 108, CPU)[0].numpy()
    top, left = (h - 108) // 2, (w - 108) // 2
    assert np.array_equal(out, a[top:top + 108, left:left + 108])
    assert np.array_equal(out, load_image(tmp_path / "x.png", 108, 108))


def test_transparent_png_differs_from_pillow(tmp_path):
    # Documented difference: DALI drops alpha, Pillow composites on white.
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200  # red under fully transparent pixels
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = decode_dali([tmp_path / "t.png"], 16, None, CPU)[0].numpy()
    assert (load_image(tmp_path / "t.png", 16, None) == 255).all()
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


# --- bad data ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:could not decode")  # the Pillow fallback says so too
def test_odd_folder_resident_and_undecodable_file(tmp_path):
    root = tmp_path / "odd"
    expect = make_odd_folder(root)
    garbage_jpeg(root / "zz_garbage.jpg")
    ds = open_dataset(str(root))
    assert len(ds.bad) == len(expect["bad"]) and ds.files[-1].name == "zz_garbage.jpg"  # passes the scan
    with pytest.warns(UserWarning, match="DALI stopped"):
        data = decode_dali(ds.files, 32, 40, CPU)
    assert data.shape == (len(ds.files), 32, 32, 3)
    # the chunk went through the Pillow loader, which replaced the garbage by the next file
    ref = torch.from_numpy(decode_all(ds.files, 32, 40, workers=0)).permute(0, 2, 3, 1)
    assert torch.equal(data, ref)
    assert torch.equal(data[-1], data[0])  # the garbage file, replaced by the next one (wrapping)


@pytest.mark.filterwarnings("ignore:could not decode")  # the Pillow fallback says so too
def test_odd_folder_streams_through_dali(tmp_path):
    root = tmp_path / "odd"
    make_odd_folder(root)
    garbage_jpeg(root / "zz_garbage.jpg")
    ds = open_dataset(str(root))
    it = Batches(ds, 32, 40, 4, 0, CPU, mode="stream", workers=1, backend="dali")
    assert it.backend == "dali" and it.mode == "stream"
    with pytest.warns(UserWarning, match="DALI stopped on batch"):
        seen = torch.cat([next(it) for _ in range(9)])  # 3 epochs of 3 batches: the garbage is met
    assert seen.shape == (36, 3, 32, 32) and torch.isfinite(seen).all()
    assert seen.min() >= -1 and seen.max() <= 1 and it.position == 9


def test_no_usable_image_is_a_data_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="could be read"):
        open_dataset(str(tmp_path / "d"))


# --- batches: order, resume, shards ----------------------------------------------------------------

def test_dali_stream_follows_the_pillow_order_and_resumes(tmp_path):
    make_good_folder(tmp_path / "d", n=10)
    ds = open_dataset(str(tmp_path / "d"))
    kw = dict(image_size=32, crop=None, batch_size=4, seed=3, device=CPU, mode="stream")
    d = Batches(ds, backend="dali", workers=1, **kw)
    p = Batches(ds, backend="pillow", workers=0, **kw)
    first = []
    for _ in range(5):  # crosses two epoch boundaries (2 batches per epoch)
        a, b = next(d), next(p)
        assert a.is_contiguous(memory_format=torch.channels_last)
        diff = (a - b).abs() * 127.5  # in levels of 255
        assert diff.mean() < TOL_MEAN and diff.max() <= TOL_MAX
        first.append(a.clone())
    for start in (1, 3):  # resumes at exactly that batch
        r = Batches(ds, backend="dali", workers=1, start=start, **kw)
        assert r.position == start
        for k in range(start, 5):
            assert torch.equal(next(r), first[k])


def test_shards_take_disjoint_slices_of_global_batches(tmp_path):
    files = make_good_folder(tmp_path / "d", n=12)
    data = decode_dali(files, 16, None, CPU)
    whole = resident_batches(data, 6, seed=1)  # global batches of 2 shards x 3
    shards = [DaliStream(files, 16, None, BatchShare(6, r, 2), 1, CPU, workers=1) for r in range(2)]
    for _ in range(5):
        g = next(whole)
        assert torch.equal(torch.cat([next(s) for s in shards]), g)
    with pytest.raises(ValueError):
        DaliStream(files, 16, None, BatchShare(6, 2, 2), 1, CPU)


def test_auto_picks_dali_and_says_so(tmp_path):
    make_good_folder(tmp_path / "d", n=8)
    ds = open_dataset(str(tmp_path / "d"))
    auto = Batches(ds, 16, None, 4, 0, CPU, backend="auto")
    assert auto.backend == "dali" and auto.mode == "resident"
    assert "DALI on the CPU" in auto.describe() and not auto.from_cache
    again = Batches(ds, 16, None, 4, 0, CPU)  # the default is auto too; the cache is warm now
    assert again.backend == "dali" and again.from_cache and "cache" in again.describe()
    pil = Batches(ds, 16, None, 4, 0, CPU, backend="pillow", workers=0)
    assert pil.backend == "pillow" and "Pillow" in pil.describe()
    # same images in the same order, up to resampling
    for _ in range(3):
        diff = (next(auto) - next(pil)).abs() * 127.5
        assert diff.mean() < TOL_MEAN and diff.max() <= TOL_MAX


def test_without_dali(tmp_path, monkeypatch):
    monkeypatch.setattr(dali, "dali_available", lambda: False)
    assert resolve_backend("auto") == "pillow"
    with pytest.raises(DataError, match="DALI is not installed"):
        resolve_backend("dali")


@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_auto_falls_back_to_pillow_when_dali_cannot_start(tmp_path, monkeypatch, mode):
    make_good_folder(tmp_path / "d", n=8)
    ds = open_dataset(str(tmp_path / "d"))

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(dali, "build_pipeline", broken)
    b = Batches(ds, 16, None, 4, 0, CPU, mode=mode, backend="auto", workers=0)
    assert b.backend == "pillow" and "DALI failed to start" in b.describe()
    assert next(b).shape == (4, 3, 16, 16)
    with pytest.raises(RuntimeError, match="insufficient"):
        Batches(ds, 16, None, 4, 0, CPU, mode=mode, backend="dali")


def test_stream_gives_up_when_every_batch_fails(tmp_path, monkeypatch):
    files = make_good_folder(tmp_path / "d", n=8)
    s = DaliStream(files, 16, None, 4, 0, CPU, workers=1)

    def failing(pipe, partial):
        raise RuntimeError("nvImageCodec failure")

    monkeypatch.setattr(dali, "_iterator", failing)
    with pytest.warns(UserWarning, match="decoding it with Pillow"):
        assert next(s).shape == (4, 16, 16, 3) and next(s).shape == (4, 16, 16, 3)
    with pytest.raises(RuntimeError, match="3 batches in a row"):
        next(s)


def test_resolve_mode_for_dali_on_cpu():
    per_image = 3 * 64 * 64
    n_fit = RESIDENT_MAX_BYTES // per_image
    assert resolve_mode("auto", n_fit, 64, "dali", CPU) == "resident"
    assert resolve_mode("auto", n_fit + 1, 64, "dali", CPU) == "stream"
    assert resolve_mode("stream", 10, 64, "dali", CPU) == "stream"


# --- the resident cache ----------------------------------------------------------------------------

def test_cache_round_trip_and_invalidation(tmp_path):
    files = make_good_folder(tmp_path / "d", n=5)
    cache = tmp_path / "c"
    a, hit = load_resident_dali(files, 16, None, cache, CPU)
    assert not hit and a.shape == (5, 16, 16, 3)
    # the decoded images and the list of files that did not decode (none here)
    assert sorted(p.name.split(".", 1)[1] for p in cache.iterdir()) == ["failed.json", "npy"]
    assert all(p.name.startswith("dali-") for p in cache.iterdir())
    b, hit = load_resident_dali(files, 16, None, cache, CPU)
    assert hit and torch.equal(a, b)
    next(cache.glob("*.failed.json")).unlink()  # without its list the cache cannot be trusted
    b, hit = load_resident_dali(files, 16, None, cache, CPU)
    assert not hit and torch.equal(a, b)
    key = dali_cache_key(files, 16, None, CPU)
    assert dali_cache_key(files, 32, None, CPU) != key and dali_cache_key(files, 16, 100, CPU) != key
    assert dali_cache_key(files, 16, None, torch.device("cuda")) != key  # another decoder
    Image.new("RGB", (178, 218), (255, 0, 0)).save(files[0])  # a file changes
    assert dali_cache_key(files, 16, None, CPU) != key
    c, hit = load_resident_dali(files, 16, None, cache, CPU)
    assert not hit and not torch.equal(a[0], c[0]) and torch.equal(a[1:], c[1:])
    assert (c[0].float() - torch.tensor([255.0, 0, 0])).abs().max() <= 2  # the new red image
    # a damaged cache file is rebuilt
    for p in cache.glob("dali-*.npy"):
        p.write_bytes(b"not numpy")
    d, hit = load_resident_dali(files, 16, None, cache, CPU)
    assert not hit and torch.equal(c, d)


# --- the resident sampler ----------------------------------------------------------------------------

def labelled(n=20, size=8):
    """Image i is filled with the value 10 * i: a batch says which images it drew."""
    return (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, size, size, 3).contiguous()


def test_sampler_shape_dtype_range_layout():
    data = labelled()
    s = ResidentSampler(data, 16, seed=0, device=CPU)
    x = s.draw()
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, nhwc_to_training(data[s.index]))  # the drawn images, converted
    assert s.draw() is x and s.position == 2  # one fixed buffer
    bf = ResidentSampler(data, 16, seed=0, device=CPU, dtype=torch.bfloat16, channels_last=False)
    y = bf.draw()
    assert y.dtype == torch.bfloat16 and y.is_contiguous()
    assert torch.equal(y, nhwc_to_training(data[bf.index]).to(torch.bfloat16))
    with pytest.raises(ValueError, match="uint8"):
        ResidentSampler(data.permute(0, 3, 1, 2), 4, 0, CPU)


def test_sampler_covers_the_dataset_with_replacement():
    data = labelled(n=20)
    s = ResidentSampler(data, 8, seed=1, device=CPU)
    seen = set()
    for _ in range(50):  # 400 draws of 20 images: all of them (P(miss one) ~ 20 * e^-20)
        s.draw()
        seen.update(s.index.tolist())
    assert seen == set(range(20))
    # i.i.d. with replacement: some batch of 8 out of 20 repeats an image (P(no repeat) ~ 0.17 each)
    repeats = 0
    for _ in range(20):
        s.draw()
        repeats += len(set(s.index.tolist())) < 8
    assert repeats > 0


def test_sampler_determinism_and_state():
    data = labelled()
    a, b = ResidentSampler(data, 8, seed=5), ResidentSampler(data, 8, seed=5)
    for _ in range(3):
        assert torch.equal(a.draw(), b.draw())
    state = a.state_dict()
    expect = [a.draw().clone() for _ in range(3)]
    c = ResidentSampler(data, 8, seed=99)
    c.load_state_dict(state)
    assert c.position == 3 and all(torch.equal(c.draw(), e) for e in expect)
    # seed=None: the default generator, as the trainer seeds and checkpoints it
    torch.manual_seed(0)
    d = ResidentSampler(data, 8, seed=None).draw().clone()
    torch.manual_seed(0)
    assert torch.equal(ResidentSampler(data, 8, seed=None).draw(), d)


@pytest.mark.parametrize("backend", ["dali", "pillow"])
def test_batches_sampler_in_resident_mode(tmp_path, backend):
    make_good_folder(tmp_path / "d", n=8)
    ds = open_dataset(str(tmp_path / "d"))
    b = Batches(ds, 16, None, 4, 0, CPU, mode="resident", backend=backend, workers=0)
    s = b.sampler(seed=0)
    x = s.draw()
    assert x.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, nhwc_to_training(b.data.contiguous()[s.index]))
    stream = Batches(ds, 16, None, 4, 0, CPU, mode="stream", backend=backend, workers=0)
    with pytest.raises(RuntimeError, match="resident"):
        stream.sampler()


# --- from a zip: the members' bytes through an external source ------------------------------------

@pytest.fixture
def zipped(tmp_path):
    """(zip, folder): a folder of CelebA-sized JPEGs and odd files (nested, PNGs, grayscale, CMYK,
    smaller than the crop), and the same files in a deflated zip."""
    root = tmp_path / "u" / "faces"
    make_good_folder(root / "a", n=9)
    make_odd_folder(root / "odd")
    return zip_folder(root, tmp_path / "faces.zip"), root


def same_order(z, folder):
    """The two datasets, checked to list the same images in the same order."""
    dz, df = open_dataset(str(z)), open_dataset(str(folder))
    assert [m.member for m in dz.files] == [p.relative_to(folder.parent).as_posix() for p in df.files]
    return dz, df


@pytest.mark.parametrize("image_size, crop", [(32, 40), (16, None)])
def test_zip_decodes_as_the_folder(zipped, image_size, crop):
    dz, df = same_order(*zipped)
    a, b = decode_dali(dz.files, image_size, crop, CPU), decode_dali(df.files, image_size, crop, CPU)
    assert a.shape == (len(df.files), image_size, image_size, 3) and torch.equal(a, b)
    # sharded pipelines: the external source takes the block of the list the reader takes
    for shard in range(2):
        got = [build_pipeline(files, image_size, crop, 4, CPU, 1, shard_id=shard, num_shards=2)
               for files in (dz.files, df.files)]
        (za,), (fa,) = ([torch.cat([x[0]["images"] for x in dali._iterator(p, partial=True)])] for p in got)
        assert torch.equal(za, fa) and len(za) == len(df.files) // 2 + shard * (len(df.files) % 2)


@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_zip_batches_are_the_folder_batches(zipped, mode):
    dz, df = same_order(*zipped)
    kw = dict(image_size=32, crop=40, batch_size=4, seed=3, device=CPU, mode=mode, workers=1)
    bz, bf = Batches(dz, backend="dali", **kw), Batches(df, backend="dali", **kw)
    assert bz.backend == "dali" and bz.mode == mode and "DALI decodes the zip's members" in bz.describe()
    seen = []
    for _ in range(12):  # 20 images, 5 batches per epoch: crosses two epoch boundaries
        x = next(bz)
        assert torch.equal(x, next(bf))
        seen.append(x.clone())
    resumed = Batches(dz, backend="dali", start=5, **kw)
    for k in range(5, 12):
        assert torch.equal(next(resumed), seen[k])
    if mode == "resident":
        again = Batches(dz, backend="auto", **kw)  # auto is DALI; the cache is keyed on the zip
        assert again.backend == "dali" and again.from_cache and torch.equal(again.data, bz.data)


@pytest.mark.filterwarnings("ignore:could not decode")  # the Pillow fallback says so too
def test_undecodable_member_goes_through_pillow_as_a_file_does(tmp_path):
    root = tmp_path / "u" / "faces"
    make_good_folder(root, n=10)
    garbage_jpeg(root / "005_garbage.jpg")  # passes the scan, does not decode
    z = zip_folder(root, tmp_path / "faces.zip")
    dz, df = same_order(z, root)
    failed_z, failed_f = [], []
    with pytest.warns(UserWarning, match="DALI stopped"):
        a = decode_dali(dz.files, 32, 40, CPU, failed=failed_z)
    with pytest.warns(UserWarning, match="DALI stopped"):
        b = decode_dali(df.files, 32, 40, CPU, failed=failed_f)
    assert torch.equal(a, b) and torch.equal(a[6], a[7])  # replaced by the next image
    assert [p for p, _ in failed_z] == [f"{z}/faces/005_garbage.jpg"] and len(failed_f) == 1
    kw = dict(image_size=32, crop=40, batch_size=4, seed=0, device=CPU, mode="stream", workers=1)
    sz, sf = Batches(dz, backend="dali", **kw), Batches(df, backend="dali", **kw)
    with pytest.warns(UserWarning, match="DALI stopped on batch"):
        for _ in range(6):  # 2 epochs of 2 batches of 4 out of 11: the garbage is met
            assert torch.equal(next(sz), next(sf))


@pytest.mark.filterwarnings("ignore:DALI stopped")
def test_member_damaged_after_the_scan_is_replaced_and_named(tmp_path):
    root = tmp_path / "u" / "faces"
    make_good_folder(root, n=8)
    z = zip_folder(root, tmp_path / "faces.zip", compress=zipfile.ZIP_STORED)
    ds = open_dataset(str(z))
    info = zipfile.ZipFile(z).getinfo(ds.files[2].member)
    raw = bytearray(z.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 500] ^= 0xFF  # its CRC no longer matches
    z.write_bytes(bytes(raw))
    failed = []
    data = decode_dali(ds.files, 16, None, CPU, failed=failed)
    assert len(failed) == 1 and failed[0][0] == str(ds.files[2]) and "CRC" in failed[0][1]
    # the chunk went through the Pillow loader, which replaced the member by the next image
    ref = torch.from_numpy(decode_all(open_dataset(str(root)).files, 16, None, workers=0)).permute(0, 2, 3, 1)
    assert torch.equal(data[2], ref[3]) and torch.equal(data[:2], ref[:2]) and torch.equal(data[3:], ref[3:])


@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_training_from_the_zip_with_dali_is_training_from_the_folder(zipped, tmp_path, mode, capsys):
    from fastwgan import checkpoint as ckpt_io
    from fastwgan import train

    z, folder = zipped
    common = ["--preset", "smoke", "--no-progress", "--workers", "1", "--batch-size", "4",
              "--iters", "3", "--data-mode", mode, "--data-backend", "dali"]
    assert train.main([*common, "--data", str(z), "--out", str(tmp_path / "z")]) == 0
    out = capsys.readouterr().out
    assert "decoded by DALI on the CPU" in out and "DALI decodes the zip's members" in out
    assert train.main([*common, "--data", str(folder), "--out", str(tmp_path / "f")]) == 0
    a, b = (ckpt_io.load(tmp_path / r)["generator"] for r in ("z", "f"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_auto_falls_back_to_pillow_for_a_zip_too(zipped, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(dali, "build_pipeline", broken)
    b = Batches(open_dataset(str(zipped[0])), 16, None, 4, 0, CPU, backend="auto", workers=0)
    assert b.backend == "pillow" and "DALI failed to start" in b.describe()
    assert "Pillow decodes the zip's members" in b.describe() and next(b).shape == (4, 3, 16, 16)


# --- GPU ---------------------------------------------------------------------------------------------

def needs_dali_on_this_gpu():
    """Skip, with the reason, where the installed DALI build cannot run on this driver (a CUDA 13
    build under a CUDA 12 driver imports, and then fails in every GPU pipeline)."""
    from fastwgan.check import dali_fits

    usable, why = dali_fits()
    if not usable:
        pytest.skip(why)


@pytest.mark.gpu
@pytest.mark.parametrize("image_size, crop", [(64, 108), (32, 40)])
def test_mixed_decoder_matches_pillow(mixed_files, image_size, crop):
    needs_dali_on_this_gpu()
    cuda = torch.device("cuda")
    decoded = decode_dali(mixed_files, image_size, crop, cuda)
    assert decoded.device.type == "cuda"
    compare(mixed_files, decoded, image_size, crop, TOL_MEAN_GPU, TOL_MAX_GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_batches_on_cuda(tmp_path, mode):
    needs_dali_on_this_gpu()
    cuda = torch.device("cuda")
    make_good_folder(tmp_path / "d", n=10)
    ds = open_dataset(str(tmp_path / "d"))
    b = Batches(ds, 32, None, 4, 3, cuda, mode=mode, backend="dali")
    p = Batches(ds, 32, None, 4, 3, CPU, mode="stream", backend="pillow", workers=0)
    assert "nvJPEG" in b.describe()
    for _ in range(5):
        x, ref = next(b), next(p)
        assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
        diff = (x.cpu() - ref).abs() * 127.5
        assert diff.mean() < TOL_MEAN_GPU and diff.max() <= TOL_MAX_GPU


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_zip_batches_on_cuda_are_the_folder_batches(zipped, mode):
    # the members' bytes go from the external source (CPU) to nvJPEG as a file reader's do
    needs_dali_on_this_gpu()
    cuda = torch.device("cuda")
    dz, df = same_order(*zipped)
    kw = dict(image_size=32, crop=40, batch_size=4, seed=3, device=cuda, mode=mode, workers=1)
    bz, bf = Batches(dz, backend="dali", **kw), Batches(df, backend="dali", **kw)
    assert "nvJPEG" in bz.describe() and "DALI decodes the zip's members" in bz.describe()
    for _ in range(7):
        x = next(bz)
        assert x.device.type == "cuda" and torch.equal(x, next(bf))


@pytest.mark.gpu
def test_sampler_draw_in_a_cuda_graph():
    cuda = torch.device("cuda")
    data = labelled(n=20).to(cuda)
    s = ResidentSampler(data, 8, seed=None, device=cuda, dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        for _ in range(3):
            s.draw()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = s.draw()
    seen = set()
    for _ in range(30):
        g.replay()
        torch.cuda.synchronize()
        idx = s.index.clone()
        assert torch.equal(out, nhwc_to_training(data[idx]).to(torch.bfloat16))
        seen.update(idx.tolist())
    assert len(seen) == 20  # each replay draws new indices
