"""Data for training and evaluation: which files, how they are decoded, how batches are drawn.

Which module holds what:

* ``dataset.py``: ``open_dataset`` finds and validates the files (or prepares the built-in
  synthetic set, ``synthetic.py``); ``sample_images``/``load_real_images``, a fixed sample of real
  images for evaluation.
* ``files.py``, ``archive.py``: listing, scanning and decoding image files (the Pillow decode every
  loader is checked against), in a folder or a zip; ``DataError``.
* ``batches.py``: ``Batches``, the training batch stream on the device (the resume point counted),
  the choice of decoder and mode (``resolve_backend``, ``resolve_mode``), and the conversion of a
  loader's uint8 batch to training floats.
* ``share.py``: ``BatchShare``, each process's share of the global batch (computed and checked
  once).
* ``order.py``: ``EpochBatches``, the order of the batches every loader follows, and the batches
  of a resident dataset in that order.
* ``pillow.py``, ``dali.py``: the two loaders (streaming, or the whole set decoded once).
* ``sampler.py``: ``ResidentSampler``, i.i.d. batches drawn on the device for the captured loop.
* ``cache.py``: the decoded-dataset cache; ``undecodable.py``: files that pass the scan but do not
  decode.

The package re-exports the names most callers need (``__all__``).
"""
from fastwgan.data.batches import Batches, resolve_backend, resolve_mode
from fastwgan.data.dataset import Dataset, load_real_images, open_dataset, sample_images
from fastwgan.data.files import DataError
from fastwgan.data.share import BatchShare
from fastwgan.data.synthetic import default_cache_root as cache_root

__all__ = ["DataError", "Dataset", "Batches", "BatchShare", "open_dataset", "load_real_images",
           "sample_images", "cache_root", "resolve_backend", "resolve_mode"]
