"""What a run writes into its folder (``--out``), and what it clears there.

* ``RunLog``: every line the trainer prints, kept in ``train.log`` (lines logged before the
  folder exists are written when it is opened).
* ``RunFolder``: the lock, train.log, config.json, metrics.jsonl, samples, loss.png, the
  TensorBoard events and the checkpoint, each written whole (fastwgan.atomic). What is written
  during training is prepared in the loop (a sample grid's forward pass, the checkpoint's bytes)
  and written by a writer thread (fastwgan.background) while training goes on; ``wait`` waits for
  it. With several processes rank 0 holds one; the others hold a ``NoRunFolder``, which takes
  the same calls and writes nothing.
* ``clear_run``: an earlier run's files moved aside for ``--overwrite`` until the new run's first
  checkpoint, so that a start that fails loses nothing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan.atomic import remove_orphans, write_text
from fastwgan.background import BackgroundWork, host_copy
from fastwgan.config import Config, ConfigError
from fastwgan.data import sample_images
from fastwgan.metrics import swd_for_training
from fastwgan.outputs import MetricsLog, plot_losses, save_grid
from fastwgan.runlock import RunLock
from fastwgan.tensorboard import EventLog

N_SAMPLES = 64  # 8x8 grids


RUN_FILES = (ckpt_io.CHECKPOINT_NAME, "metrics.jsonl", "loss.png", "real_samples.png", "config.json",
             "train.log")


class RunLog:
    """Prints each line and keeps it in the run folder's ``train.log``. Lines logged before the
    folder exists (the data is checked first) are written when it is opened.

    ``echo=None``: a rank other than 0 of several, which neither prints nor keeps its lines (rank 0
    says the same)."""

    def __init__(self, echo=print, command: str = ""):
        self.echo, self.pending, self.file, self.command = echo, [], None, command
        self.quiet = echo is None

    def __call__(self, line: str) -> None:
        if self.quiet:
            return
        self.echo(line)
        self.write(line)

    def progress(self, line: str, on_screen: bool, show) -> None:
        """A progress line: kept, and shown with ``show`` (the bar's write) when ``on_screen``."""
        if self.quiet:
            return
        self.write(line)
        if on_screen:
            show(line)

    def write(self, line: str) -> None:
        """To the file only (what the progress bar already showed)."""
        if self.quiet:
            return
        if self.file is None:
            self.pending.append(line)
            return
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as e:  # a failed write() names no file
            e.filename = self.file.name
            raise

    def open(self, path: Path, append: bool) -> None:
        self.file = open(path, "a" if append else "w", encoding="utf-8")
        self.write(time.strftime("--- %Y-%m-%d %H:%M:%S %Z ") + self.command)
        for line in self.pending:
            self.write(line)
        self.pending = []

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # what a full disk kept from the log (the error was shown)
                pass


def holds_run(out: str | Path) -> bool:
    return (Path(out) / ckpt_io.CHECKPOINT_NAME).exists()


REPLACED = ".replaced"  # an overwritten run's files, until the new run's first checkpoint


def clear_run(out: Path) -> Optional[Path]:
    """Clear ``out`` of what an earlier run wrote there (its own files, nothing else).

    A run with a checkpoint is moved aside into ``out/.replaced`` (returned), which the new run
    removes once it has written its first checkpoint: a start that fails loses nothing. The
    leftovers of a run that never wrote a checkpoint are removed at once."""
    files = [out / name for name in RUN_FILES if (out / name).exists()]
    if (out / "samples").is_dir():
        files += sorted((out / "samples").glob("iter_*.png"))
    if not holds_run(out):
        for p in files:
            p.unlink()
        return None
    aside = out / REPLACED
    shutil.rmtree(aside, ignore_errors=True)
    (aside / "samples").mkdir(parents=True)
    for p in files:
        os.replace(p, aside / p.relative_to(out))
    return aside


def dropped_rows(metrics_path: Path, iteration: int) -> int:
    """Rows of ``metrics.jsonl`` logged after ``iteration``: what a resume from there drops."""
    return sum(r.get("iter", 0) > iteration for r in MetricsLog(metrics_path).read())


def start_fid(cfg: Config, dataset, done: int, log: RunLog):
    """--eval-metric fid: the network (a ConfigError naming the extra when its weights are not
    installed), one line saying what the evaluations will cost (on a CPU, the time, from a measured
    batch), and the real set's features (computed now, or from the cache)."""
    from fastwgan.device import resolve_device
    from fastwgan.fid import TrainingFID, cpu_estimate, evaluations_left, real_statistics, stats_path
    from fastwgan.inception import InceptionError, load_feature_net

    try:
        net = load_feature_net(cfg.fid_weights, resolve_device(cfg.device))
    except InceptionError as e:
        raise ConfigError(f"--eval-metric {cfg.eval_metric}: {e}") from None
    n_real = len(dataset.files)
    evals = evaluations_left(done, cfg.iters, cfg.eval_every)
    to_compute = evals * cfg.eval_n + (0 if stats_path(dataset, cfg.image_size, cfg.crop, net).exists()
                                       else n_real)
    log(f"evaluation: FID and KID (x1e3) of {cfg.eval_n} samples against all {n_real} real images every "
        f"{cfg.eval_every} iterations ({evals} evaluations, {to_compute} images through Inception in all"
        f"{cpu_estimate(net, cfg.image_size, to_compute)})")
    real = real_statistics(dataset, cfg.image_size, cfg.crop, net, workers=cfg.workers, log=log,
                           say_time=False)
    return TrainingFID(net, real, cfg.eval_n, z_seed=cfg.seed + 2, seed=cfg.seed)


class RunFolder:
    """Everything a run writes into ``--out``: the lock, train.log, config.json, metrics.jsonl,
    samples, loss.png, the TensorBoard events and the checkpoint. With several processes rank 0
    holds one; the others hold a ``NoRunFolder``, which writes nothing."""

    def __init__(self, cfg: Config):
        self.cfg, self.out = cfg, Path(cfg.out)
        self.events = EventLog(cfg)  # --tensorboard
        self.writer = BackgroundWork()  # samples, loss.png, events and checkpoints during training
        self.replaced: Optional[Path] = None
        self.real_eval: Optional[torch.Tensor] = None
        self.fid_eval = None  # a fastwgan.fid.TrainingFID with --eval-metric fid or all
        self.fixed_z = torch.randn(N_SAMPLES, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 1))

    def locked(self):
        """Held while the run lasts: one run at a time in a folder (fastwgan.runlock)."""
        return RunLock(self.out)

    def clean(self) -> None:
        remove_orphans(self.out)

    def open(self, resume: Optional[dict], log: RunLog) -> None:
        """The folder, once the data is known to load. A fresh run (or a run resumed into another
        folder) starts from a folder without an earlier run's files; a run resumed in place keeps
        its history."""
        out = self.out
        source = Path(resume["source_dir"]) if resume and "source_dir" in resume else out
        self.in_place = in_place = resume is not None and source.resolve() == out.resolve()
        self.source = source
        self.replaced = clear_run(out) if not in_place and out.exists() else None
        (out / "samples").mkdir(parents=True, exist_ok=True)
        if resume and not in_place and (source / "metrics.jsonl").exists():
            shutil.copyfile(source / "metrics.jsonl", out / "metrics.jsonl")  # the history goes along
        log.open(out / "train.log", append=in_place)
        if self.replaced is not None:
            log(f"note: the run that was in {out} is kept in {self.replaced} until this run writes "
                "its first checkpoint")
        if resume and not in_place:
            log(f"resuming {source} (iteration {resume['iteration']}) into {out}")

    def dropped_rows(self, iteration: int) -> bool:
        """Whether the log above holds rows past ``iteration`` that a resume drops."""
        return self.in_place and dropped_rows(self.out / "metrics.jsonl", iteration) > 0

    def start(self, dataset, resume: Optional[dict], log: RunLog) -> None:
        """config.json, the real samples, the evaluation's real images, the metrics so far."""
        cfg, out = self.cfg, self.out
        write_text(out / "config.json", cfg.to_json() + "\n")
        self.events.open(out, resume["iteration"] if resume else None, self.source)
        if not (out / "real_samples.png").exists():
            # (files that do not decode were reported above, or are warned about by the stream)
            real = sample_images(dataset, cfg.image_size, cfg.crop, N_SAMPLES, cfg.seed, workers=1, failed=[])
            save_grid(real, out / "real_samples.png", nrow=8)
            self.events.real_images(real)
        if cfg.eval_every and cfg.eval_metric in ("swd", "all"):
            self.real_eval = sample_images(dataset, cfg.image_size, cfg.crop, cfg.eval_n, cfg.seed + 3,
                                           cfg.workers, failed=[])
            log(f"evaluation: sliced Wasserstein distance (x1e3) of {len(self.real_eval)} samples to "
                f"as many real images every {cfg.eval_every} iterations")
        if cfg.eval_every and cfg.eval_metric in ("fid", "all"):
            self.fid_eval = start_fid(cfg, dataset, resume["iteration"] if resume else 0, log)
        self.metrics = MetricsLog(out / "metrics.jsonl")
        if resume:
            self.metrics.truncate_after(resume["iteration"])
        elif self.metrics.path.exists():
            self.metrics.path.unlink()

    def evaluate(self, G: torch.nn.Module) -> dict:
        row = {}
        if self.real_eval is not None:
            swd = swd_for_training(G, self.real_eval, z_seed=self.cfg.seed + 2)
            row.update(swd=swd["mean"], swd_levels=swd["levels"])
        if self.fid_eval is not None:
            row.update(self.fid_eval(G))
        return row

    def metrics_row(self, row: dict) -> None:
        """The row appended now (a checkpoint written after it finds it in the file); its
        TensorBoard scalars by the writer."""
        self.metrics.append(row)
        if self.events.active:
            self.writer.submit(lambda: self.events.scalars(row))

    def samples(self, G: torch.nn.Module, iteration: int) -> None:
        """The fixed-z grid: the forward pass here, the copy to the host, PNG encoding and write
        (and the TensorBoard image) while training goes on."""
        G.eval()
        with torch.no_grad():
            fake = G(self.fixed_z.to(next(G.parameters()).device))
        G.train()
        (images,), ready = host_copy([fake])
        path = self.out / "samples" / f"iter_{iteration:06d}.png"

        def write() -> None:
            ready()
            save_grid(images, path, nrow=8)
            self.events.images("samples", images, iteration)

        self.writer.submit(write)

    def histograms(self, tensors: dict[str, torch.Tensor], iteration: int) -> None:
        """tag -> device tensor (fastwgan.histograms): copied here, binned and written by the writer."""
        copies, ready = host_copy(list(tensors.values()))
        on_host = dict(zip(tensors, copies))

        def write() -> None:
            ready()
            self.events.histograms(on_host, iteration)

        self.writer.submit(write)

    def checkpoint(self, state: dict) -> None:
        """``state`` serialised here (a snapshot of the weights as they are now); the file written
        and synced by the writer, then loss.png drawn from the metrics rows up to it."""
        data = ckpt_io.serialize(state)
        rows = self.metrics.read()

        def write() -> None:
            ckpt_io.write_serialized(data, self.out / ckpt_io.CHECKPOINT_NAME)
            if self.replaced is not None and self.replaced.exists():
                shutil.rmtree(self.replaced, ignore_errors=True)

        self.writer.submit(write)
        self.writer.submit(lambda: plot_losses(
            rows, self.out / "loss.png", title=f"{self.cfg.loss}, {self.cfg.image_size}x{self.cfg.image_size}"))

    def wait(self) -> None:
        """Until everything handed to the writer is on disk; raises a write that failed."""
        self.writer.wait()

    def settle(self) -> None:
        """Let the writes handed over finish, without raising their errors: the run is ending
        with an error of its own (at its end and at a stop they were waited for with ``wait``)."""
        self.writer.close()

    def close(self) -> None:
        self.writer.close()
        self.events.close()


class NoRunFolder(RunFolder):
    """A rank other than 0: the same calls, nothing written (rank 0 writes for the run)."""

    def locked(self):
        return contextlib.nullcontext()

    def clean(self) -> None:
        pass

    def open(self, resume, log) -> None:
        self.in_place, self.source = False, self.out

    def start(self, dataset, resume, log) -> None:
        pass

    def evaluate(self, G) -> dict:
        return {}

    def metrics_row(self, row) -> None:
        pass

    def samples(self, G, iteration) -> None:
        pass

    def histograms(self, tensors, iteration) -> None:
        pass

    def checkpoint(self, state) -> None:
        pass

    def close(self) -> None:
        pass
