"""The NVIDIA DALI loaders: JPEGs decoded on the GPU (nvJPEG) into a GPU-resident dataset, or streamed.

The preprocessing is the Pillow loader's (``fastwgan.data.files.center_crop_resize`` is the spec):
decode to RGB, scale up images smaller than the crop, center crop ``c`` (``--crop`` or the shorter
side) at ``left = (w - c) // 2, top = (h - c) // 2``, antialiased linear resize to the image size.
``center_crop_resize`` below is its DALI twin, checked against it in tests/test_dali.py.

Two ways to feed training:

* resident: every file decoded once into one uint8 tensor (N, H, W, 3) on the device (a CPU tensor
  without a GPU), cached as ``dali-<key>.npy`` so that the next run skips decoding. Batches are
  gathered from it in the order of ``EpochBatches`` (like the Pillow loader: ``order.py``), or drawn
  i.i.d. on the device by ``ResidentSampler`` (``sampler.py``), which can run inside a CUDA graph.
* stream: ``DaliStream`` decodes batch after batch with ``fn.readers.file`` behind a
  ``DALIGenericIterator``, prefetched, in the ``EpochBatches`` order too (see its docstring for why
  that order rather than the reader's ``random_shuffle``).

Files on disk are read by ``fn.readers.file``. Members of a zip (``archive.ZipMember``) have no path
DALI can open: this process reads their encoded bytes from the zip and gives them to the same
decode graph through ``fn.external_source`` (``EncodedBatches``), in the same order, so that a zip
decodes exactly as the same files unpacked. So are files on disk where a name among them is not
UTF-8 (legal on Linux): DALI's reader refuses such a name ("Unsupported argument type with name
files").

Where DALI differs from Pillow (measured with DALI's CPU decoder in tests/test_dali.py; nvJPEG on
the GPU rounds its IDCT and colour conversion its own way, and its tolerance there is wider):

* resampling: DALI's antialiased linear filter and Pillow's bilinear are the same triangle filter,
  but they treat the image border and the rounding to uint8 differently: about 0.2 of 255 mean
  absolute difference, at most a few levels at sharp edges.
  Without resampling (crop == image size, image not scaled up) the crop is bit-identical.
* transparency: DALI drops the alpha channel of RGBA PNGs (the colour under transparent pixels
  shows); Pillow composites on white. Opaque images agree.
* scaling up an image smaller than the crop: the new size is ``floor(x + 0.5)`` where Pillow uses
  Python's ``round`` (half to even), so an exact tie can differ by one pixel of intermediate size.
* EXIF orientation is ignored by both (``adjust_orientation=False``), as Pillow's ``Image.open`` does.

DALI stops the whole pipeline on a file it cannot decode. ``scan_images`` leaves out the files
that are plainly broken before any loader sees them; for the rare file that passes the scan but
still does not decode (a valid start and end marker around garbage), the failing chunk or batch is
decoded by the Pillow loader instead, which replaces a file it cannot decode by the next one, with
a warning, exactly as the Pillow loader does.

``nvidia.dali`` is imported lazily: this module imports without it, and ``dali_available`` says
whether it is there.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fastwgan.data.archive import from_archive
from fastwgan.data.cache import cache_key, read_cache, write_cache
from fastwgan.data.files import default_workers, printable
from fastwgan.data.order import EpochBatches
from fastwgan.data.pillow import ImageFiles, decode_files
from fastwgan.data.share import BatchShare, as_share
from fastwgan.data.undecodable import fill_from_next, hand_over, warn_replaced

DECODE_CHUNK = 16384    # files per resident-decode pipeline: an undecodable file costs one chunk via Pillow
DECODE_BATCH = 128      # images per DALI batch when decoding the resident dataset
MIN_CHUNK_STEPS = 256   # batches per stream pipeline at least (one epoch when an epoch is longer)
PREFETCH = 3            # batches DALI prepares ahead of the one being trained on
MAX_FAILED_BATCHES = 3  # stream batches in a row that DALI fails on before giving up (not a bad file)


@functools.lru_cache(maxsize=None)
def dali_available() -> bool:
    """True when ``nvidia.dali`` and its PyTorch plugin import (cached: the import takes ~0.5 s)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken install (missing CUDA libraries, ...)
        return False
    return True


def dali_version() -> str:
    import nvidia.dali

    return nvidia.dali.__version__


def dali_device_id(device: torch.device) -> Optional[int]:
    """DALI's ``device_id``: the CUDA device index, or None for a CPU-only pipeline."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def decoder_name(device: torch.device) -> str:
    """Where and with what DALI decodes for ``device``, for the log."""
    if device.type == "cuda":
        return f"on {device} (nvJPEG, decoder \"mixed\")"
    return "on the CPU (libjpeg-turbo, decoder \"cpu\")"


def num_threads(workers: int) -> int:
    """DALI CPU threads for ``--workers`` (-1: one per core, at most 8)."""
    return default_workers() if workers < 0 else max(1, workers)


# --- the pipeline ------------------------------------------------------------------------------

def center_crop_resize(images, shapes, image_size: int, crop: Optional[int]):
    """DALI twin of ``files.center_crop_resize``, inside a pipeline definition.

    images: decoded HWC uint8 batch (CPU or GPU); shapes: their (H, W, C), a CPU int64 node from
    ``fn.peek_image_shape`` (CPU data even when the images are on the GPU, as ``fn.slice`` and
    ``fn.resize`` want their per-sample arguments).
    """
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    h, w = shapes[0], shapes[1]
    short = dmath.min(h, w)
    if crop is None:
        c = short  # the shorter side: never scaled up
    else:
        c = short * 0 + crop  # a per-sample node, to stack with the anchor below
        # Smaller than the crop: scale up so that the shorter side equals the crop (per sample,
        # with a DALI conditional, so that the usual image is not resampled at scale 1).
        if short < crop:
            h = dmath.max(dmath.floor(h * crop / short + 0.5), crop)
            w = dmath.max(dmath.floor(w * crop / short + 0.5), crop)
            images = fn.resize(images, resize_x=w, resize_y=h, antialias=True)
        else:
            images = images  # both branches must define the same names
            h, w = h * 1.0, w * 1.0
    h, w, c = (fn.cast(v, dtype=types.INT32) for v in (h, w, c))
    anchor = fn.stack((h - c) // 2, (w - c) // 2)  # (top, left), Pillow's floor
    images = fn.slice(images, anchor, fn.stack(c, c), axis_names="HW")
    if crop != image_size:
        images = fn.resize(images, size=[image_size, image_size], antialias=True,
                           interp_type=types.INTERP_LINEAR)
    return images


class EncodedBatches:
    """The encoded bytes of ``files`` (zip members, paths: anything with ``read_bytes``) batch by
    batch, for ``fn.external_source(batch=True)``: batch ``i`` is a list of 1-D uint8 arrays, files
    ``i * batch_size`` onwards in order, the last batch smaller; StopIteration past the end.

    A function of the batch number alone, as DALI asks of a batch callback (it calls ahead of the
    batch being decoded, and past the end). Called in this process: each process opens the zip
    once (``archive._zip``). A member that cannot be read (the zip changed or was damaged since the
    scan) is given as no bytes, which DALI fails to decode: the Pillow fallback then meets it as
    it meets a damaged file, and names it.
    """

    def __init__(self, files: Sequence, batch_size: int):
        self.files, self.batch_size = list(files), batch_size

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, i: int) -> list[np.ndarray]:
        lo = i * self.batch_size
        if lo >= len(self.files):
            raise StopIteration
        return [_encoded(f) for f in self.files[lo:lo + self.batch_size]]


def _encoded(f) -> np.ndarray:
    try:
        return np.frombuffer(f.read_bytes(), dtype=np.uint8)
    except Exception:  # zipfile.BadZipFile (a CRC error), OSError, EOFError...: see EncodedBatches
        return np.empty(0, dtype=np.uint8)


def names_are_utf8(files: Sequence) -> bool:
    """Whether DALI's file reader can take ``files`` by name: DALI takes names as UTF-8 text, and
    refuses the surrogate escapes Python holds a name's other bytes in."""
    try:
        for f in files:
            str(f).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def build_pipeline(files: Sequence[Path], image_size: int, crop: Optional[int], batch_size: int,
                   device: torch.device, workers: int = -1, prefetch: int = PREFETCH,
                   shard_id: int = 0, num_shards: int = 1, seed: int = 0):
    """A built DALI pipeline that reads ``files`` in order, once per epoch: uint8 (H, W, 3) samples.

    Files on disk: the reader is named "Reader" for ``DALIGenericIterator(reader_name="Reader")``;
    the last batch is padded with its last sample (the iterator drops or trims it). Members of a
    zip: an external source (``EncodedBatches``, its ``len`` the number of samples) gives their
    bytes, the last batch smaller, StopIteration at the end (``_iterator`` reads until then); shard
    ``shard_id`` takes the same contiguous block of the list as the reader's shard would. Decoding
    is "mixed" (nvJPEG, the A100/H100 hardware decoder where present) on a GPU, "cpu" without one.
    """
    from nvidia.dali import fn, pipeline_def, types

    device_id = dali_device_id(device)
    mixed = device_id is not None
    source = None
    if from_archive(files) or not names_are_utf8(files):
        n = len(files)
        source = EncodedBatches(files[n * shard_id // num_shards:n * (shard_id + 1) // num_shards],
                                batch_size)
    paths = [str(p) for p in files]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads(workers), device_id=device_id,
                  prefetch_queue_depth=prefetch, seed=seed, enable_conditionals=crop is not None)
    def pipe():
        if source is None:
            jpegs, _ = fn.readers.file(files=paths, name="Reader", random_shuffle=False,
                                       shard_id=shard_id, num_shards=num_shards, pad_last_batch=True)
        else:
            jpegs = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1)
        shapes = fn.peek_image_shape(jpegs, adjust_orientation=False)
        # output_type RGB: grayscale and CMYK come out as 3-channel RGB, alpha is dropped.
        # jpeg_fancy_upsampling: nvJPEG upsamples chroma as libjpeg-turbo (and Pillow) do.
        extra = dict(jpeg_fancy_upsampling=True) if mixed else {}
        images = fn.decoders.image(jpegs, device="mixed" if mixed else "cpu", output_type=types.RGB,
                                   adjust_orientation=False, **extra)
        return center_crop_resize(images, shapes, image_size, crop)

    p = pipe()
    p.build()
    p.encoded_source = source  # None: the pipeline has the file reader
    return p


def _iterator(pipe, partial: bool):
    """The pipeline's batches, once through its files: the last incomplete batch trimmed
    (``partial``) or dropped."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    source = getattr(pipe, "encoded_source", None)
    if source is None:
        policy = LastBatchPolicy.PARTIAL if partial else LastBatchPolicy.DROP
        return DALIGenericIterator([pipe], ["images"], reader_name="Reader", last_batch_policy=policy,
                                   auto_reset=False)
    # An external source: the iterator runs until the source's StopIteration (size=-1); the last
    # batch already comes trimmed, and is dropped here when asked.
    it = DALIGenericIterator([pipe], ["images"], size=-1, auto_reset=False)
    if partial or len(source) % source.batch_size == 0:
        return it
    return itertools.islice(it, len(source) // source.batch_size)


def error_reason(e: BaseException) -> str:
    """The informative line of an error: DALI's repeat the pipeline definition's traceback first."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip() and "no longer valid" not in l]
    return (lines[-1] if lines else type(e).__name__)[:200]


def _pillow_nhwc(files: Sequence[Path], indices: Sequence[int], image_size: int, crop: Optional[int],
                 device: torch.device) -> torch.Tensor:
    """Files ``indices`` of ``files`` decoded by the Pillow loader (a file it cannot decode is
    replaced by the next one, with a warning): uint8 (n, H, W, 3) on ``device``."""
    ds = ImageFiles(files, image_size, crop)
    items = [ds[i] for i in indices]
    for path, why in {f for _, fs in items for f in fs}:
        warn_replaced(path, why)
    batch = torch.stack([x for x, _ in items]).permute(0, 2, 3, 1)
    return batch.contiguous().to(device)


# --- resident: decode once, keep on the device -------------------------------------------------

def dali_cache_key(files: Sequence[Path], image_size: int, crop: Optional[int], device: torch.device) -> str:
    """``cache.cache_key`` in a namespace of its own: the DALI version and the decoder (nvJPEG and
    libjpeg-turbo differ by a level here and there) are part of it, and the layout is NHWC."""
    base = cache_key(files, image_size, crop)
    tag = f"dali\0{dali_version()}\0{'mixed' if device.type == 'cuda' else 'cpu'}\0{base}"
    return hashlib.sha256(tag.encode()).hexdigest()[:20]


def decode_dali(files: Sequence[Path], image_size: int, crop: Optional[int], device: torch.device,
                workers: int = -1, progress: bool = False, failed: Optional[list] = None) -> torch.Tensor:
    """Every file decoded by DALI with the training preprocessing: uint8 (N, H, W, 3) on ``device``.

    A chunk where DALI stops is decoded by Pillow; a file that fails there too is replaced by the
    next one that decodes and, with ``failed`` (a list), appended to it (as ``pillow.decode_all``)."""
    files = list(files)
    n = len(files)
    out = torch.empty((n, image_size, image_size, 3), dtype=torch.uint8, device=device)
    bad: list[tuple[int, str, str]] = []  # (index, path, reason) of files Pillow could not decode
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="decoding images (DALI)", unit="img", leave=False)
    for lo in range(0, n, DECODE_CHUNK):
        chunk = files[lo:lo + DECODE_CHUNK]
        # A failing build is not about a file (no GPU, a CUDA driver too old for this DALI): raise.
        pipe = build_pipeline(chunk, image_size, crop, min(DECODE_BATCH, len(chunk)), device, workers)
        try:
            k = lo
            for batch in _iterator(pipe, partial=True):
                x = batch[0]["images"]  # (b, H, W, 3) uint8
                out[k:k + len(x)].copy_(x)
                k += len(x)
            if k != lo + len(chunk):
                raise RuntimeError(f"DALI returned {k - lo} of {len(chunk)} images")
        except RuntimeError as e:
            warnings.warn(printable(f"DALI stopped on a file among {chunk[0].name} .. "
                                    f"{chunk[-1].name} ({error_reason(e)}); decoding these "
                                    f"{len(chunk)} files with Pillow"))
            arr, chunk_bad = decode_files(chunk, image_size, crop, workers)
            out[lo:lo + len(chunk)].copy_(torch.from_numpy(arr).permute(0, 2, 3, 1))
            bad += [(lo + i, path, why) for i, path, why in chunk_bad]
        del pipe
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    _release_dali_memory()
    fill_from_next(out, [i for i, _, _ in bad])
    hand_over([(path, why) for _, path, why in bad], n, failed)
    return out


def _release_dali_memory() -> None:
    # DALI keeps its device memory pool after a pipeline is gone; the trainer wants it back.
    try:
        from nvidia.dali.backend import ReleaseUnusedMemory
    except ImportError:
        return
    ReleaseUnusedMemory()


def _to_device(arr: np.ndarray, device: torch.device, chunk: int = 1 << 14) -> torch.Tensor:
    """A (memory-mapped) array copied to ``device`` in slices, never whole in host memory twice."""
    out = torch.empty(arr.shape, dtype=torch.uint8, device=device)
    for lo in range(0, len(arr), chunk):
        out[lo:lo + chunk].copy_(torch.from_numpy(np.array(arr[lo:lo + chunk])))
    return out


def load_resident_dali(files: Sequence[Path], image_size: int, crop: Optional[int], cache_dir: Path,
                       device: torch.device, workers: int = -1, progress: bool = False,
                       failed: Optional[list] = None) -> tuple[torch.Tensor, bool]:
    """The decoded dataset, uint8 (N, H, W, 3) on ``device``, from the .npy cache when it is current.

    Returns (data, from_cache). The cache file is ``dali-<key>.npy`` beside the Pillow loader's
    ``decoded-<key>.npy``: a changed, added or removed file, or another preprocessing, DALI version
    or decoder, gives another key.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"dali-{dali_cache_key(files, image_size, crop, device)}.npy"
    hit = read_cache(path, (len(files), image_size, image_size, 3), mmap=True)
    if hit is not None:
        data, bad = _to_device(hit[0], device), hit[1]
    else:
        bad = []
        data = decode_dali(files, image_size, crop, device, workers, progress, failed=bad)
        write_cache(path, data.cpu().numpy(), bad)  # host sync: once, after decoding
    hand_over(bad, len(files), failed)
    return data, hit is not None


# --- stream --------------------------------------------------------------------------------------

class DaliStream:
    """Batches decoded by DALI as they are needed: uint8 (B, H, W, 3) on ``device``, from batch
    ``start`` on, prefetched (``PREFETCH`` batches ahead).

    Order: global batch ``g`` is batch ``g`` of ``EpochBatches(n, share.global_batch, seed)``
    (a fresh permutation per epoch, last incomplete batch dropped) and rank ``share.rank`` takes its
    slice of ``share.local`` images (``batch_size``: a ``BatchShare``, or an int for one process).
    With one process this is exactly the Pillow loader's order, so the two backends see the same
    images batch for batch and a run resumes exactly at batch ``start`` (nothing decoded to skip).
    The reader (for a zip's members, the external source) gets that order as its file list, in
    chunks of at least one epoch (``MIN_CHUNK_STEPS`` batches for small sets), one pipeline per
    chunk: a short stall at each chunk boundary (the pipeline build, milliseconds on a CPU).

    Why not ``fn.readers.file(random_shuffle=True, seed=...)``: it shuffles within a buffer of
    ``initial_fill`` (1024) samples, not a permutation of the epoch, and its order cannot be
    recomputed from a batch number, so a resumed run could only restart near an epoch boundary.
    Likewise the reader's own ``shard_id/num_shards`` split the list into contiguous blocks; here
    each rank gets its slice of every global batch (disjoint, reshuffled every epoch), and the
    reader is given shard 0 of 1 of the rank's own list.

    A batch DALI cannot decode (a file that passed ``scan_images`` but is not decodable) is decoded
    by the Pillow loader instead, with a warning, and a new pipeline continues after it.
    """

    def __init__(self, files: Sequence[Path], image_size: int, crop: Optional[int],
                 batch_size: int | BatchShare, seed: int, device: torch.device, start: int = 0,
                 workers: int = -1, prefetch: int = PREFETCH):
        share = as_share(batch_size)
        self.files, self.image_size, self.crop = list(files), image_size, crop
        self.batch_size, self.device, self.workers, self.prefetch = share.local, device, workers, prefetch
        self.share, self.seed = share, seed
        self.order = EpochBatches(len(self.files), share.global_batch, seed, start)
        self._order = iter(self.order)
        self.chunk_steps = max(self.order.per_epoch, MIN_CHUNK_STEPS)
        self.step = start                 # the global batch number of the next batch
        self._pending: list[list[int]] = []  # this shard's indices, batch by batch, not yet returned
        self._it = None
        self._failed = 0                  # batches in a row DALI failed on
        # Built now, so that a DALI that cannot run here (no GPU, a CUDA driver too old for this
        # build) fails at construction, where Batches(backend="auto") falls back to Pillow.
        self._pipe = self._build()

    def _local(self, global_idx: list[int]) -> list[int]:
        first = self.share.offset
        return global_idx[first:first + self.batch_size]

    def _build(self):
        """A pipeline over the pending batches (the next chunk of them when none is pending)."""
        if not self._pending:
            self._pending = [self._local(next(self._order)) for _ in range(self.chunk_steps)]
        paths = [self.files[i] for idx in self._pending for i in idx]
        return build_pipeline(paths, self.image_size, self.crop, self.batch_size, self.device,
                              self.workers, self.prefetch, seed=self.seed)

    def __iter__(self) -> "DaliStream":
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            if self._pipe is None:
                self._pipe = self._build()
        try:
            if self._it is None:
                self._it = _iterator(self._pipe, partial=False)  # decodes its first batch already
            batch = next(self._it)[0]["images"]  # (B, H, W, 3) uint8
        except StopIteration:  # the chunk is used up
            self._it = self._pipe = None
            return next(self)
        except RuntimeError as e:
            # DALI stops on the batch with a file it cannot decode: this batch via Pillow, then a
            # fresh pipeline from the next one.
            self._it = self._pipe = None
            self._failed += 1
            if self._failed >= MAX_FAILED_BATCHES:
                raise RuntimeError(f"DALI failed on {self._failed} batches in a row, the last "
                                   f"at batch {self.step}: {error_reason(e)}") from e
            warnings.warn(f"DALI stopped on batch {self.step} ({error_reason(e)}); decoding it with Pillow")
            batch = _pillow_nhwc(self.files, self._pending[0], self.image_size, self.crop, self.device)
        else:
            self._failed = 0
        self._pending.pop(0)
        self.step += 1
        return batch
