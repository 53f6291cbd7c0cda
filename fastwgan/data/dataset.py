"""The images of a run: the files under ``--data`` (a folder or a zip), or the built-in synthetic faces.

``open_dataset`` finds and validates the files (``files.scan_images``, ``archive.scan_zip``) and
says which it left out; ``sample_images`` and ``load_real_images`` decode a fixed sample of them
for evaluation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from fastwgan.data.archive import is_zip, scan_zip
from fastwgan.data.files import DEFAULT_MAX_PIXELS, Scan, scan_images
from fastwgan.data.synthetic import default_cache_root as cache_root


@dataclass
class Dataset:
    """The usable image files of a run, and where they came from."""

    root: Path
    files: list[Path]
    synthetic: bool
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def warning(self) -> Optional[str]:
        return Scan(self.root, self.files, self.bad).warning()


def open_dataset(data_dir: Optional[str], log=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """The files under ``data_dir``, or the built-in synthetic faces when it is None (generated on
    first use, about half a minute: ``log`` is told before). Files whose header claims more than
    ``max_pixels`` are left out (``bad``) before any backend decodes them."""
    if data_dir is None:
        from fastwgan.data.synthetic import ensure_synthetic_dataset, synthetic_dataset_ready

        if log is not None and not synthetic_dataset_ready(cache_root()):
            log(f"data: generating the built-in synthetic faces into {cache_root()} (once, under a minute)")
        root = ensure_synthetic_dataset(cache_root())
        scan = scan_images(root)
        return Dataset(root, scan.files, True, scan.bad)
    scan = scan_zip(data_dir, max_pixels) if is_zip(data_dir) else scan_images(data_dir, max_pixels)
    return Dataset(scan.root, scan.files, False, scan.bad)


def sample_images(dataset: Dataset, image_size: int, crop: Optional[int], n: int, seed: int = 0,
                  workers: int = -1, failed: Optional[list] = None) -> torch.Tensor:
    """A fixed draw of ``n`` decoded images (fewer when the dataset is smaller): uint8 (n, 3, H, W).

    Files that do not decode are warned about, or appended to ``failed`` (see ``decode_all``)."""
    from fastwgan.data.pillow import decode_all

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset.files), generator=g)[:n].sort().values.tolist()
    return torch.from_numpy(decode_all([dataset.files[i] for i in idx], image_size, crop, workers,
                                       failed=failed))


def load_real_images(data_dir: Optional[str], image_size: int, crop: Optional[int], n: int,
                     seed: int = 0) -> torch.Tensor:
    """``n`` real images from ``data_dir`` (default: the synthetic set), uint8 (n, 3, H, W).
    Files the scan skips are warned about in one line, as the trainer logs them."""
    dataset = open_dataset(data_dir)
    if dataset.warning():
        warnings.warn(dataset.warning())
    return sample_images(dataset, image_size, crop, n, seed)
