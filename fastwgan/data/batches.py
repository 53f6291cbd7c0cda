"""The training batch stream: which decoder and mode, the batches in order, on the device.

``Batches`` yields training batches on the device and counts them so that a run resumes at the
same batch. Two backends decode: ``pillow`` (DataLoader worker processes, ``pillow.py``, the
reference) and ``dali`` (NVIDIA DALI, on the GPU where there is one, ``dali.py``); both give the
same batches in the same order for a seed (``order.py``), up to the resampling differences
measured in tests/test_dali.py. ``resolve_backend`` and ``resolve_mode`` pick the decoder and
the mode (resident or stream) for the ``--data-backend`` and ``--data-mode`` flags;
``to_training`` and ``nhwc_to_training`` turn a loader's uint8 batch into the float batch
training takes.
"""
from __future__ import annotations

import copy
from typing import Iterator, Optional

import torch

from fastwgan.data.archive import archive_note, from_archive
from fastwgan.data.dataset import Dataset
from fastwgan.data.files import DataError, printable
from fastwgan.data.order import resident_batches
from fastwgan.data.pillow import load_resident, stream_batches
from fastwgan.data.sampler import ResidentSampler
from fastwgan.data.share import BatchShare, as_share
from fastwgan.data.synthetic import default_cache_root as cache_root

# Decoded datasets up to this size are kept in memory (CelebA at 64x64 is about 2.5 GB).
RESIDENT_MAX_BYTES = 3 << 30
# DALI on a GPU keeps the decoded dataset in GPU memory when it takes at most this fraction of
# the free memory (CelebA at 64x64: 2.5 GB of an H100's 80; at 128x128: 10 GB).
RESIDENT_GPU_FRACTION = 0.25


def resolve_backend(backend: str) -> str:
    """"dali" or "pillow" for ``--data-backend`` (auto: DALI when it imports)."""
    from fastwgan.data.dali import dali_available

    if backend == "auto":
        return "dali" if dali_available() else "pillow"
    if backend == "dali" and not dali_available():
        raise DataError(f"--data-backend dali: NVIDIA DALI is not installed ({DALI_INSTALL}, "
                        "or pip install nvidia-dali-cuda120 for a CUDA 12 driver)")
    if backend not in ("dali", "pillow"):
        raise ValueError(f"unknown data backend {backend!r}")
    return backend


DALI_INSTALL = "pip install 'fastwgan[dali]'"


def dali_missing_note(requested: str, resolved: str, device: torch.device) -> str:
    """What the log says when a CUDA run decodes with Pillow because DALI is not installed (an
    extra since it weighs about 0.6 GB): empty otherwise."""
    if requested == "auto" and resolved == "pillow" and device.type == "cuda":
        return f"NVIDIA DALI is not installed, so JPEGs are decoded by Pillow on the CPU; for GPU decoding: {DALI_INSTALL}"
    return ""


def resident_budget(backend: str = "pillow", device: Optional[torch.device] = None) -> float:
    """The most bytes a decoded set may take to be kept resident: ``RESIDENT_MAX_BYTES`` of host
    memory, or for DALI on a GPU (which decodes straight into GPU memory)
    ``RESIDENT_GPU_FRACTION`` of this process's free GPU memory, which differs from process to
    process (a rank's choice is agreed with the others': fastwgan.run.agree_data_mode)."""
    if backend == "dali" and device is not None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return RESIDENT_GPU_FRACTION * free
    return RESIDENT_MAX_BYTES


def resolve_mode(mode: str, n_images: int, image_size: int, backend: str = "pillow",
                 device: Optional[torch.device] = None) -> str:
    """"resident" or "stream" for ``--data-mode`` (auto: resident when the decoded set is small:
    at most ``resident_budget`` bytes)."""
    if mode != "auto":
        return mode
    nbytes = n_images * 3 * image_size * image_size
    return "resident" if nbytes <= resident_budget(backend, device) else "stream"


class Batches:
    """Training batches, float32 in [-1, 1] (N, 3, H, W) on ``device``, from batch ``start`` on.

    ``position`` counts the batches drawn since the start of training (the resume point): both
    backends, in both modes, follow the ``EpochBatches`` order, so a run resumes exactly at batch
    ``start``. ``backend`` ("auto", "dali", "pillow") picks the decoder; with "auto", DALI when it
    imports, and the Pillow loader if DALI then fails to start (the reason is in ``describe()``).
    DALI batches are channels_last in memory (the NHWC decode, not copied); Pillow's are
    contiguous.

    In resident mode ``sampler()`` gives a ``ResidentSampler`` over the same decoded images: i.i.d.
    draws on the device, CUDA-graph safe, for the captured training loop.

    Several processes (``batch_size`` a ``BatchShare(global_batch, rank, world_size)``; an int is
    the batch of one process): each rank gets its slice of every global batch (``share.local``
    images: ``batch_size`` here), so the ranks together consume the images one process consumes,
    and ``position`` stays the global batch number. In resident mode every rank keeps the whole
    decoded dataset (the trainer has one process per machine decode it into the cache first:
    ``distributed.machine_leader_first``): its epoch-ordered batches are its slices, and its
    ``sampler()`` draws i.i.d. from all of it with the rank's own device RNG.
    """

    def __init__(self, dataset: Dataset, image_size: int, crop: Optional[int],
                 batch_size: int | BatchShare, seed: int, device: torch.device, mode: str = "auto",
                 workers: int = -1, start: int = 0, progress: bool = False, backend: str = "auto"):
        self.share = as_share(batch_size)
        self.global_batch = self.share.global_batch
        if len(dataset.files) < self.global_batch:
            raise DataError(printable(f"{len(dataset.files)} usable image(s) under {dataset.root}, "
                                      f"fewer than one batch of {self.global_batch}"))
        self.device, self.position = device, start
        # this rank's images per batch
        self.batch_size, self.from_cache, self.note, self.decoder = self.share.local, False, "", ""
        self.data: Optional[torch.Tensor] = None  # resident mode: uint8 (N, H, W, 3) on device
        # resident mode: files that passed the scan but did not decode, each replaced by the next
        # one, as (path, reason); a stream warns as it meets them
        self.undecodable: list[tuple[str, str]] = []
        args = (dataset.files, image_size, crop, self.share, seed, device, mode, workers, start,
                progress)
        self.backend = resolve_backend(backend)
        self.note = dali_missing_note(backend, self.backend, device)
        if self.backend == "dali":
            try:
                self._start_dali(*args)
            except Exception as e:  # e.g. a DALI build for a newer CUDA driver than this machine's
                if backend != "auto":
                    raise
                from fastwgan.data.dali import error_reason

                self.note = f"DALI failed to start ({error_reason(e)}), using Pillow"
                self.backend = "pillow"
                self.undecodable = []
        if self.backend == "pillow":
            self._start_pillow(*args)
        if from_archive(dataset.files):
            self.note = "; ".join(filter(None, (self.note, archive_note(self.backend))))

    def _start_pillow(self, files, image_size, crop, share, seed, device, mode, workers, start,
                      progress) -> None:
        self.mode = resolve_mode(mode, len(files), image_size)
        if self.mode == "resident":
            arr, self.from_cache = load_resident(files, image_size, crop, cache_root() / "decoded",
                                                 workers, progress, failed=self.undecodable)
            data = torch.from_numpy(arr)  # (N, 3, H, W)
            if device.type == "cuda":
                data = data.to(device)
            self.data = data.permute(0, 2, 3, 1)  # an NHWC view, for sampler()
            self._it: Iterator[torch.Tensor] = resident_batches(data, share, seed, start)
        else:
            self._it = stream_batches(files, image_size, crop, share, seed, start,
                                      workers, pin_memory=device.type == "cuda")
        self._convert = lambda batch: to_training(batch, self.device)

    def _start_dali(self, files, image_size, crop, share, seed, device, mode, workers, start,
                    progress) -> None:
        import fastwgan.data.dali as dali

        self.mode = resolve_mode(mode, len(files), image_size, "dali", device)
        if self.mode == "resident":
            self.data, self.from_cache = dali.load_resident_dali(
                files, image_size, crop, cache_root() / "decoded", device, workers, progress,
                failed=self.undecodable)
            self._it = resident_batches(self.data, share, seed, start)
        else:
            self._it = dali.DaliStream(files, image_size, crop, share, seed, device, start, workers)
        self._convert = nhwc_to_training
        self.decoder = dali.decoder_name(device)

    def reseeded(self, seed: int, start: int = 0) -> "Batches":
        """The epoch-ordered batches of ``seed`` from batch ``start``, over the same decoded images
        (resident mode): what ``Batches`` with that seed gives, without a second copy of the data
        (a sweep's members, each in its own order)."""
        if self.data is None:
            raise RuntimeError("reseeded() needs the resident mode")
        other = copy.copy(self)
        # Pillow keeps (N, 3, H, W) and ``data`` is its NHWC view; DALI keeps NHWC
        data = self.data.permute(0, 3, 1, 2) if self.backend == "pillow" else self.data
        other.position = start
        other._it = resident_batches(data, self.share, seed, start)
        return other

    def describe(self) -> str:
        """One line for the log: backend, mode, decoder, cache."""
        where = f"DALI {self.decoder}" if self.backend == "dali" else "Pillow"
        text = f"{self.mode}, decoded by {where}"
        if self.from_cache:
            text += " (decoded images from the cache)"
        if self.share.world_size > 1:
            text += (f"; {self.batch_size} images per process of each global batch of "
                     f"{self.global_batch}")
        if self.note:
            text += f"; {self.note}"
        return text

    def sampler(self, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                seed: Optional[int] = None):
        """A ``ResidentSampler`` over the decoded images (resident mode only): i.i.d. draws with
        the device's default generator unless ``seed`` is given (see its docstring)."""
        if self.data is None:
            raise RuntimeError("sampler() needs the resident mode (--data-mode resident)")
        # Pillow's (N, 3, H, W) data is given as its NHWC view: gathered as is, not copied.
        return ResidentSampler(self.data, self.batch_size, seed, self.device, dtype, channels_last)

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._it)
        self.position += 1
        return self._convert(batch)


# --- a loader's uint8 batch as training takes it -----------------------------------------------

def to_training(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [-1, 1] on ``device``."""
    x = batch.to(device, non_blocking=True).float()
    return x.div_(127.5).sub_(1.0)


def nhwc_to_training(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1], channels_last (the NHWC memory, no copy of
    layout). The same float32 operations as ``to_training``, so the values are identical."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32)  # keeps the NHWC strides: channels_last
    x = x.div_(127.5).sub_(1.0)
    return x if dtype == torch.float32 else x.to(dtype)
