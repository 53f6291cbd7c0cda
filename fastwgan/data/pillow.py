"""The Pillow loaders: streaming batches from DataLoader workers, or the whole dataset decoded once.

Both draw the same index sequence (``order.EpochBatches``: a fresh permutation per epoch from the
seed), so they give identical batches for the same seed, and a run can continue from any batch
number. Batches are uint8 (N, 3, H, W); ``batches.to_training`` moves them to the device and scales
to [-1, 1].
"""
from __future__ import annotations

import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastwgan.data.cache import cache_key, read_cache, write_cache
from fastwgan.data.files import DataError, default_workers, load_image
from fastwgan.data.order import EpochBatches
from fastwgan.data.share import BatchShare
from fastwgan.data.undecodable import fill_from_next, hand_over, warn_replaced


def _reason(e: Exception, path: Path) -> str:
    why = str(e).split("\n")[0]
    for name in (repr(str(path)), str(path)):  # Pillow names the file as repr() writes it
        why = why.replace(name, "")
    why = why.strip()
    return why[:120] or type(e).__name__


def decode_or_reason(path: Path, image_size: int, crop: int | None) -> tuple[np.ndarray | None, str]:
    """(H, W, 3) uint8 with the training preprocessing, or (None, why it failed to decode)."""
    try:
        return load_image(path, image_size, crop), ""
    except Exception as e:  # a file that passed the scan (signature, end marker) but is damaged
        return None, _reason(e, path)


class ImageFiles(Dataset):
    """Files decoded with Pillow; a file that fails to decode is replaced by the next one in the
    list (cyclically), as the resident decode does.

    Each item is ``(image (3, H, W) uint8, failures)``, ``failures`` listing the (path, reason) of
    files passed over for it: a DataLoader's worker processes cannot report otherwise. The
    stream (``stream_batches``) warns about each file once."""

    def __init__(self, files: Sequence[Path], image_size: int, crop: int | None):
        self.files, self.image_size, self.crop = list(files), image_size, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
        failures = []
        for k in range(len(self.files)):
            path = self.files[(i + k) % len(self.files)]
            a, why = decode_or_reason(path, self.image_size, self.crop)
            if a is None:
                failures.append((str(path), why))
                continue
            return torch.from_numpy(a).permute(2, 0, 1), failures  # (3, H, W) uint8
        raise DataError(f"none of the {len(self.files)} images could be decoded")


def _collate(items) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    return torch.stack([x for x, _ in items]), [f for _, fs in items for f in fs]


def _warn_once(batches) -> Iterator[torch.Tensor]:
    """The images of (images, failures) batches; each failing file warned about once."""
    seen: set[str] = set()
    for images, failures in batches:
        for path, why in failures:
            if path not in seen:
                seen.add(path)
                warn_replaced(path, why)
        yield images


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches every process of the group: the main process saves a checkpoint, and the
    # workers must keep serving batches meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_batches(files: Sequence[Path], image_size: int, crop: int | None,
                   batch_size: int | BatchShare, seed: int, start: int = 0, workers: int = -1,
                   pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Batches decoded by DataLoader worker processes, starting at batch number ``start``
    (a ``BatchShare``: this rank's slice of each global batch, see ``EpochBatches``)."""
    workers = default_workers() if workers < 0 else workers
    loader = DataLoader(
        ImageFiles(files, image_size, crop),
        batch_sampler=EpochBatches(len(files), batch_size, seed, start),
        collate_fn=_collate,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # its own generator, so that creating the loader does not consume the global RNG
        generator=torch.Generator().manual_seed(seed),
    )
    return _warn_once(loader)


# --- resident: decode once, keep in memory -----------------------------------------------------

def _decode_chunk(args) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """Files ``lo``.. of a chunk: (images, [(index in the chunk, path, reason)]) with the images
    that fail left black, for ``fill_from_next`` to replace."""
    paths, image_size, crop = args
    out = np.zeros((len(paths), 3, image_size, image_size), np.uint8)
    bad = []
    for i, path in enumerate(paths):
        a, why = decode_or_reason(path, image_size, crop)
        if a is None:
            bad.append((i, str(path), why))
        else:
            out[i] = a.transpose(2, 0, 1)
    return out, bad


def decode_files(files: Sequence[Path], image_size: int, crop: int | None, workers: int = -1,
                 progress: bool = False) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """Every file decoded with the training preprocessing: uint8 (N, 3, H, W), and the files that
    failed as (index, path, reason), left black (``decode_all`` fills them)."""
    workers = default_workers() if workers < 0 else workers
    chunk = 256
    jobs = [(list(files[i:i + chunk]), image_size, crop) for i in range(0, len(files), chunk)]
    out = np.empty((len(files), 3, image_size, image_size), np.uint8)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(files), desc="decoding images", unit="img", leave=False)
    if workers <= 1 or len(jobs) == 1:
        results = map(_decode_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_decode_chunk, jobs)
    bad: list[tuple[int, str, str]] = []
    for i, (arr, chunk_bad) in enumerate(results):
        out[i * chunk:i * chunk + len(arr)] = arr
        bad += [(i * chunk + k, path, why) for k, path, why in chunk_bad]
        if bar is not None:
            bar.update(len(arr))
    if bar is not None:
        bar.close()
    if workers > 1 and len(jobs) > 1:
        pool.shutdown()
    return out, bad


def decode_all(files: Sequence[Path], image_size: int, crop: int | None, workers: int = -1,
               progress: bool = False, failed: list | None = None) -> np.ndarray:
    """Every file decoded with the training preprocessing: uint8 (N, 3, H, W).

    A file that does not decode is replaced by the next one that does (as in the stream); with
    ``failed`` (a list) they are appended to it as (path, reason), otherwise warned about in one
    line. DataError when none decodes."""
    out, bad = decode_files(files, image_size, crop, workers, progress)
    fill_from_next(out, [i for i, _, _ in bad])
    hand_over([(path, why) for _, path, why in bad], len(files), failed)
    return out


def load_resident(files: Sequence[Path], image_size: int, crop: int | None, cache_dir: Path,
                  workers: int = -1, progress: bool = False, failed: list | None = None,
                  ) -> tuple[np.ndarray, bool]:
    """The decoded dataset, from the .npy cache when it is current; returns (array, from_cache).

    The files that did not decode are handed over as ``decode_all`` does (``failed``), from the
    cache too: a cached run reports them as the first one did."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"decoded-{cache_key(files, image_size, crop)}.npy"
    hit = read_cache(path, (len(files), 3, image_size, image_size))
    if hit is not None:
        arr, bad = hit
    else:
        bad = []
        arr = decode_all(files, image_size, crop, workers, progress, failed=bad)
        write_cache(path, arr, bad)
    hand_over(bad, len(files), failed)
    return arr, hit is not None
