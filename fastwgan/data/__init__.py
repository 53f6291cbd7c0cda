"""Data for training and evaluation: which files, how they are decoded, how batches are drawn.

``open_dataset`` finds and validates the files (or prepares the built-in synthetic set),
``Batches`` yields training batches on the device and counts them so that a run resumes at the
same batch, ``load_real_images`` gives a fixed sample of real images for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from fastwgan.data.files import DataError, Scan, scan_images
from fastwgan.data.synthetic import default_cache_root as cache_root
from fastwgan.data.pillow import load_resident, resident_batches, stream_batches, to_training

__all__ = ["DataError", "Dataset", "Batches", "open_dataset", "load_real_images", "sample_images", "cache_root"]

# Decoded datasets up to this size are kept in memory (CelebA at 64x64 is about 2.5 GB).
RESIDENT_MAX_BYTES = 3 << 30


@dataclass
class Dataset:
    """The usable image files of a run, and where they came from."""

    root: Path
    files: list[Path]
    synthetic: bool
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def warning(self) -> Optional[str]:
        return Scan(self.root, self.files, self.bad).warning()


def open_dataset(data_dir: Optional[str]) -> Dataset:
    """The files under ``data_dir``, or the built-in synthetic faces when it is None."""
    if data_dir is None:
        from fastwgan.data.synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset(cache_root())
        scan = scan_images(root)
        return Dataset(root, scan.files, True, scan.bad)
    scan = scan_images(data_dir)
    return Dataset(scan.root, scan.files, False, scan.bad)


def resolve_mode(mode: str, n_images: int, image_size: int) -> str:
    if mode != "auto":
        return mode
    return "resident" if n_images * 3 * image_size * image_size <= RESIDENT_MAX_BYTES else "stream"


class Batches:
    """Training batches, float32 in [-1, 1] (N, 3, H, W) on ``device``, from batch ``start`` on.

    ``position`` counts the batches drawn since the start of training (the resume point).
    """

    def __init__(self, dataset: Dataset, image_size: int, crop: Optional[int], batch_size: int,
                 seed: int, device: torch.device, mode: str = "auto", workers: int = -1,
                 start: int = 0, progress: bool = False):
        if len(dataset.files) < batch_size:
            raise DataError(f"{len(dataset.files)} usable image(s) under {dataset.root}, "
                            f"fewer than one batch of {batch_size}")
        self.device, self.position = device, start
        self.mode = resolve_mode(mode, len(dataset.files), image_size)
        self.from_cache = False
        if self.mode == "resident":
            arr, self.from_cache = load_resident(dataset.files, image_size, crop,
                                                 cache_root() / "decoded", workers, progress)
            data = torch.from_numpy(arr)
            if device.type == "cuda":
                data = data.to(device)
            self._it: Iterator[torch.Tensor] = resident_batches(data, batch_size, seed, start)
        else:
            self._it = stream_batches(dataset.files, image_size, crop, batch_size, seed, start,
                                      workers, pin_memory=device.type == "cuda")

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._it)
        self.position += 1
        return to_training(batch, self.device)


def sample_images(dataset: Dataset, image_size: int, crop: Optional[int], n: int, seed: int = 0,
                  workers: int = -1) -> torch.Tensor:
    """A fixed draw of ``n`` decoded images (fewer when the dataset is smaller): uint8 (n, 3, H, W)."""
    from fastwgan.data.pillow import decode_all

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset.files), generator=g)[:n].sort().values.tolist()
    return torch.from_numpy(decode_all([dataset.files[i] for i in idx], image_size, crop, workers))


def load_real_images(data_dir: Optional[str], image_size: int, crop: Optional[int], n: int,
                     seed: int = 0) -> torch.Tensor:
    """``n`` real images from ``data_dir`` (default: the synthetic set), uint8 (n, 3, H, W)."""
    return sample_images(open_dataset(data_dir), image_size, crop, n, seed)
