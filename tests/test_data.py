"""The Pillow loaders on folders of real-world oddities."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastwgan.data import Batches, DataError, Dataset, open_dataset
from fastwgan.data.cache import cache_key
from fastwgan.data.files import list_images, load_image, scan_images
from fastwgan.data.order import EpochBatches
from fastwgan.data.pillow import load_resident
from fastwgan.data.share import BatchShare

from oddfiles import make_good_folder, make_odd_folder


pytestmark = pytest.mark.usefixtures("private_cache")


def names(paths, root):
    return sorted(str(p.relative_to(root)) for p in paths)


def test_scan_keeps_good_and_skips_bad(tmp_path):
    root = tmp_path / "odd"
    expect = make_odd_folder(root)
    scan = scan_images(root)
    assert names(scan.files, root) == expect["good"]
    assert names([p for p, _ in scan.bad], root) == expect["bad"]
    msg = scan.warning()
    assert msg.startswith(f"skipped {len(expect['bad'])} unusable file(s)")
    assert "notes.txt" not in str(list_images(root))


@pytest.mark.parametrize("crop", [None, 60])
def test_every_good_file_decodes_to_rgb(tmp_path, crop):
    root = tmp_path / "odd"
    make_odd_folder(root)
    for p in scan_images(root).files:
        a = load_image(p, 32, crop)
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8, p.name


def test_grayscale_and_rgba_converted(tmp_path):
    Image.fromarray(np.full((40, 40), 200, np.uint8), "L").save(tmp_path / "g.png")
    a = load_image(tmp_path / "g.png", 16, None)
    assert (a == 200).all()
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png", 16, None) == 255).all()


def test_center_crop_matches_celeba_box(tmp_path):
    # CelebA 178x218 with crop 108: the box (35, 55, 143, 163) of the original TF code
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png", 108, 108)
    assert np.array_equal(out, a[55:163, 35:143])


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg"):
        open_dataset(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="could be read"):
        open_dataset(str(tmp_path / "broken"))


def test_epoch_batches_shuffle_per_epoch_and_resume():
    stream = iter(EpochBatches(10, 3, seed=5))
    first = [next(stream) for _ in range(7)]
    epoch0, epoch1 = sum(first[:3], []), sum(first[3:6], [])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9 and epoch0 != epoch1
    for start in range(7):
        resumed = iter(EpochBatches(10, 3, seed=5, start=start))
        assert [next(resumed) for _ in range(7 - start)] == first[start:]


def test_epoch_batches_shards_make_up_the_global_batch():
    whole = iter(EpochBatches(10, 4, seed=5, start=1))
    shards = [iter(EpochBatches(10, BatchShare(4, r, 2), seed=5, start=1)) for r in range(2)]
    for _ in range(5):  # crosses epoch boundaries (2 batches of 4 per epoch of 10)
        assert next(shards[0]) + next(shards[1]) == next(whole)
    with pytest.raises(ValueError, match="does not split"):
        EpochBatches(10, BatchShare(4, 0, 3), seed=5)


@pytest.mark.parametrize("mode", ["stream", "resident"])
def test_ranks_of_a_sharded_loader_draw_the_single_process_batches(tmp_path, mode):
    make_good_folder(tmp_path / "d", n=10)
    ds = open_dataset(str(tmp_path / "d"))
    kw = dict(image_size=16, crop=None, seed=3, device=torch.device("cpu"),
              backend="pillow", mode=mode, workers=0, start=1)
    one = Batches(ds, batch_size=4, **kw)
    ranks = [Batches(ds, batch_size=BatchShare(4, r, 2), **kw) for r in range(2)]
    assert ranks[0].batch_size == 2 and "2 images per process" in ranks[1].describe()
    for _ in range(4):
        assert torch.equal(torch.cat([next(r) for r in ranks]), next(one))
    assert one.position == ranks[0].position == ranks[1].position == 5  # global batches


def test_stream_and_resident_give_the_same_batches(tmp_path):
    make_good_folder(tmp_path / "d", n=10)
    ds = open_dataset(str(tmp_path / "d"))
    kw = dict(image_size=16, crop=None, batch_size=4, seed=3, device=torch.device("cpu"), backend="pillow")
    stream = Batches(ds, mode="stream", workers=0, **kw)
    resident = Batches(ds, mode="resident", **kw)
    for _ in range(5):  # crosses an epoch boundary
        a, b = next(stream), next(resident)
        assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32
        assert a.min() >= -1 and a.max() <= 1
        assert torch.equal(a, b)
    assert stream.position == resident.position == 5
    # with worker processes, the same batches again
    workers = Batches(ds, mode="stream", workers=2, start=2, **kw)
    again = Batches(ds, mode="resident", start=2, **kw)
    assert torch.equal(next(workers), next(again))


def test_fewer_images_than_a_batch(tmp_path):
    make_good_folder(tmp_path / "d", n=3)
    with pytest.raises(DataError, match="fewer than one batch"):
        Batches(open_dataset(str(tmp_path / "d")), 16, None, 4, 0, torch.device("cpu"), backend="pillow")


def test_resident_cache_round_trip_and_invalidation(tmp_path):
    files = make_good_folder(tmp_path / "d", n=5)
    cache = tmp_path / "c"
    a, hit = load_resident(files, 16, None, cache)
    assert not hit and a.shape == (5, 3, 16, 16)
    b, hit = load_resident(files, 16, None, cache)
    assert hit and np.array_equal(a, b)
    key = cache_key(files, 16, None)
    assert cache_key(files, 32, None) != key and cache_key(files, 16, 100) != key
    Image.new("RGB", (178, 218), (255, 0, 0)).save(files[0])  # a file changes
    assert cache_key(files, 16, None) != key
    c, hit = load_resident(files, 16, None, cache)
    assert not hit and not np.array_equal(a[0], c[0]) and np.array_equal(a[1:], c[1:])


def test_odd_folder_trains_through_loader(tmp_path):
    root = tmp_path / "odd"
    make_odd_folder(root)
    ds = open_dataset(str(root))
    assert isinstance(ds, Dataset) and not ds.synthetic
    it = Batches(ds, 32, 40, 4, 0, torch.device("cpu"), mode="stream", workers=0, backend="pillow")
    seen = torch.cat([next(it) for _ in range(6)])
    assert torch.isfinite(seen).all() and seen.shape == (24, 3, 32, 32)


def test_fill_from_next_is_cyclic_and_skips_bad_runs():
    from fastwgan.data.undecodable import fill_from_next

    x = np.arange(6) * 10
    fill_from_next(x, [1, 2, 5])  # 1 and 2 take 3's image; the last takes the first's
    assert x.tolist() == [0, 30, 30, 30, 40, 0]
    with pytest.raises(DataError, match="none of the 3 images"):
        fill_from_next(np.zeros(3), [0, 1, 2])


def test_undecodable_file_takes_the_next_image_in_every_mode(tmp_path):
    """A file that passes the scan but does not decode: the resident decode and the stream both
    put the next image of the folder in its place (the last file: the first image)."""
    from fastwgan.data.pillow import decode_all

    files = make_good_folder(tmp_path / "d", n=6)
    raw = bytearray(files[5].read_bytes())
    raw[20:-2] = bytes(len(raw) - 22)  # header and end marker kept, the data zeroed
    files[5].write_bytes(bytes(raw))
    failed = []
    arr = decode_all(files, 16, None, workers=0, failed=failed)
    assert [os.path.basename(p) for p, _ in failed] == ["005.jpg"]
    assert np.array_equal(arr[5], arr[0])
    ds = open_dataset(str(tmp_path / "d"))
    assert len(ds.files) == 6  # the scan lets it through
    with pytest.warns(UserWarning, match="could not decode .*005.jpg") as caught:
        it = Batches(ds, 16, None, 6, 0, torch.device("cpu"), mode="stream", workers=0, backend="pillow")
        streamed = torch.cat([next(it) for _ in range(3)])  # 3 epochs: the file comes up 3 times
    assert sum("005.jpg" in str(w.message) for w in caught) == 1  # said once
    resident = torch.from_numpy(arr).float() / 127.5 - 1
    for image in streamed:  # every streamed image is one of the resident ones
        assert min((image - r).abs().max() for r in resident) == 0
