"""TensorBoard event files of a run (``--tensorboard``), in ``<out>/tb``, written with torch's
``SummaryWriter``: the habit of the paper's era (its TensorFlow code logged losses, every variable
and gradient as histograms, and real and generated images) and of StyleGAN2-ADA.

What is written, and when (never inside a training step: the scalars at log points, from the row
that metrics.jsonl gets; the images and histograms beside the sample grids; all of it by the run
folder's writer thread, fastwgan.background, one call at a time):

* every scalar of a metrics.jsonl row, under the tags of ``SCALAR_TAGS`` (a key that has none
  goes under ``train/<key>``), ``swd_levels`` as ``eval/swd_level<i>`` (finest first);
* the fixed-z sample grid at each ``--sample-every`` (``samples``), the real images once
  (``real_samples``, step 0);
* with ``--tb-histograms N``: every parameter and its gradient (``weights/G/...``,
  ``grads/D/...``) every N iterations. The gradients are those of the last critic and
  generator steps, read from their buffers between iterations (after a graph replay, not in it);
  under CUDA graphs only those that live outside the graphs' memory pool (fastwgan.histograms).

A resumed run continues the same curves: the events after the checkpoint's iteration are purged
(``SummaryWriter(purge_step=...)``), as metrics.jsonl drops its rows after it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from fastwgan.config import Config, ConfigError

TB_DIR = "tb"
SCALAR_TAGS = {
    "wdist": "train/wdist", "loss_d": "train/loss_d", "loss_g": "train/loss_g",
    "d_real": "train/d_real", "d_fake": "train/d_fake", "gp": "train/gp",
    "critic_steps": "train/critic_steps", "img_per_s": "perf/img_per_s", "maint_s": "perf/maint_s",
    "time": "perf/time_s",
    "swd": "eval/swd",
    "fid": "eval/fid", "kid": "eval/kid",
}
SWD_LEVEL_TAG = "eval/swd_level{}"
INSTALL = "pip install 'fastwgan[tensorboard]'"


def summary_writer_class():
    """torch's SummaryWriter; a ConfigError naming the extra when the tensorboard package is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


def scalar_items(row: dict[str, Any]):
    """(tag, value) for every scalar of a metrics row (``iter`` is the step, not a scalar)."""
    for key, value in row.items():
        if key == "iter" or value is None:
            continue
        if key == "swd_levels":
            for i, v in enumerate(value):
                yield SWD_LEVEL_TAG.format(i), float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield SCALAR_TAGS.get(key, f"train/{key}"), float(value)


class EventLog:
    """The run's TensorBoard writer; every method does nothing without ``--tensorboard``."""

    def __init__(self, cfg: Config):
        self.histogram_every = cfg.tb_histograms
        self.writer = None
        self.resumed = False
        # checked before the data is read, so that a missing package costs no time
        self._writer_class = summary_writer_class() if cfg.tensorboard else None

    def open(self, out: Path, resume_iteration: Optional[int], source: Optional[Path] = None) -> None:
        """Start writing into ``out/tb``: a fresh run's folder is emptied (moved into
        ``out/.replaced`` with the run it belonged to, where there is one); a resumed run keeps its
        events up to ``resume_iteration`` (``source``'s, copied, when it resumes into another folder)."""
        if self._writer_class is None:
            return
        tb = out / TB_DIR
        in_place = source is None or source.resolve() == out.resolve()
        if tb.exists() and (resume_iteration is None or not in_place):
            aside = out / ".replaced"
            if aside.is_dir():
                shutil.rmtree(aside / TB_DIR, ignore_errors=True)
                tb.rename(aside / TB_DIR)
            else:
                shutil.rmtree(tb)
        if resume_iteration is not None and not in_place and (source / TB_DIR).is_dir():
            shutil.copytree(source / TB_DIR, tb)
        self.resumed = resume_iteration is not None
        # purge_step: events at or after it, from a run that went on past the checkpoint, are hidden
        purge = resume_iteration + 1 if self.resumed else None
        self.writer = self._writer_class(log_dir=str(tb), purge_step=purge)

    @property
    def active(self) -> bool:
        """Whether anything is written (``--tensorboard``, once opened)."""
        return self.writer is not None

    def scalars(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in scalar_items(row):
            self.writer.add_scalar(tag, value, row["iter"])
        self.writer.flush()

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """An 8-wide grid of (N, 3, H, W) images in [-1, 1] (or uint8), as the PNG grids."""
        if self.writer is None:
            return
        from fastwgan.outputs import make_grid

        self.writer.add_image(tag, make_grid(images, nrow), step, dataformats="HWC")
        self.writer.flush()

    def real_images(self, images: torch.Tensor) -> None:
        if not self.resumed:  # written once, by the run's start
            self.images("real_samples", images, 0)

    def histograms(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Every ``--tb-histograms`` iterations: tag -> host copy of a weight or gradient
        (fastwgan.histograms says which)."""
        if self.writer is None or not self.histogram_every or step % self.histogram_every:
            return
        for tag, t in tensors.items():
            self.writer.add_histogram(tag, t.float(), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
