"""Data throughput: images per second from each loader at CelebA's size, and the resident sampler.

The built-in synthetic faces are CelebA-sized (178x218) JPEGs (generated once into the cache;
a few hundred of them on a CPU, all 4,000 on a GPU); each row decodes them with the
training preprocessing (center crop 108, resize to 64) in steady state: the loader is started and
its first batch taken before the clock starts, then ``STEPS`` batches are timed, several epochs
of the folder on a CPU. Rows: the Pillow loader with one worker process per core (at most 8), DALI
with its CPU decoder and as many threads, DALI "mixed" (nvJPEG on the GPU; skipped without
one), and the resident sampler (a batch gathered and converted on the device; batches/s).

    pytest bench/test_bench_data.py --benchmark-only
"""
import pytest
import torch

from fastwgan.data import open_dataset
from fastwgan.data.batches import nhwc_to_training, to_training
from fastwgan.data.dali import DaliStream, dali_available
from fastwgan.data.files import default_workers
from fastwgan.data.pillow import stream_batches
from fastwgan.data.sampler import ResidentSampler

from conftest import device_name, synced

IMAGE_SIZE, CROP = 64, 108


def sizes(device):
    if device.type == "cuda":
        return dict(images=4000, batch=64, steps=60, rounds=5)
    return dict(images=256, batch=32, steps=32, rounds=5)


@pytest.fixture(scope="module")
def celeba_like():
    n = sizes(torch.device("cuda" if torch.cuda.is_available() else "cpu"))["images"]
    return open_dataset(None).files[:n]


def run_stream(benchmark, make, convert, device, s, info):
    """Time ``s["steps"]`` batches of a started loader (started afresh for each round)."""

    def setup():
        it = make()
        convert(next(it))  # workers or pipeline started, first batch out
        return (it,), {}

    def take(it):
        for _ in range(s["steps"]):
            x = convert(next(it))
        return x

    benchmark.pedantic(synced(take, device), setup=setup, rounds=s["rounds"], iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "device": device_name(device), "batch": s["batch"], "image_size": IMAGE_SIZE, "crop": CROP,
        "files": s["images"], "img_per_s": s["steps"] * s["batch"] / mean, **info,
    })


def test_pillow_stream(benchmark, bench_device, celeba_like):
    s = sizes(bench_device)
    workers = default_workers()
    run_stream(benchmark,
               lambda: stream_batches(celeba_like, IMAGE_SIZE, CROP, s["batch"], 0, workers=workers,
                                      pin_memory=bench_device.type == "cuda"),
               lambda b: to_training(b, bench_device), bench_device, s,
               {"loader": "pillow stream", "workers": workers})


def need_dali():
    if not dali_available():
        pytest.skip("NVIDIA DALI is not installed (pip install 'fastwgan[dali]')")


def test_dali_stream_cpu(benchmark, celeba_like):
    need_dali()
    cpu = torch.device("cpu")
    s = sizes(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    threads = default_workers()
    run_stream(benchmark,
               lambda: DaliStream(celeba_like, IMAGE_SIZE, CROP, s["batch"], 0, cpu, workers=threads),
               nhwc_to_training, cpu, s, {"loader": "dali stream, cpu decoder", "threads": threads})


def test_dali_stream_mixed(benchmark, bench_device, celeba_like):
    need_dali()
    if bench_device.type != "cuda":
        pytest.skip("DALI mixed decoding (nvJPEG) needs a CUDA device")
    from fastwgan.check import dali_fits

    usable, why = dali_fits()
    if not usable:
        pytest.skip(why)  # a DALI build for a newer CUDA than the driver's
    s = sizes(bench_device)
    threads = default_workers()
    run_stream(benchmark,
               lambda: DaliStream(celeba_like, IMAGE_SIZE, CROP, s["batch"], 0, bench_device,
                                  workers=threads),
               nhwc_to_training, bench_device, s,
               {"loader": "dali stream, mixed decoder (nvJPEG)", "threads": threads})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_resident_sampler(benchmark, bench_device, dtype):
    """One i.i.d. batch of 64 at 64x64 gathered from a CelebA-sized resident set (a CPU gets 4096 images)."""
    n = 202_599 if bench_device.type == "cuda" else 4096
    data = torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, device=bench_device,
                         generator=torch.Generator(bench_device).manual_seed(0))
    sampler = ResidentSampler(data, 64, seed=None, device=bench_device, dtype=dtype)
    draw = synced(sampler.draw, bench_device)
    draw()  # warm-up
    benchmark.pedantic(draw, rounds=20 if bench_device.type == "cpu" else 200, iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "device": device_name(bench_device), "loader": "resident sampler", "dtype": str(dtype),
        "batch": 64, "image_size": IMAGE_SIZE, "dataset_images": n,
        "batches_per_s": 1 / mean, "img_per_s": 64 / mean,
    })
