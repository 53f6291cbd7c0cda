"""One training run (or one process's part of one), from a resolved config to the last checkpoint.

Reads top to bottom: ``train`` joins the process group (one process without torchrun) and keeps
the log in train.log (``logged_run``); ``run`` then takes the data (``setup_data``), opens the run
folder, builds the networks and their engine (``setup_models``, through ``fastwgan.build``),
restores the resume point (``restore_or_seed``), and hands over to the loop
(``fastwgan.loop.TrainingLoop``).

Several processes run the same code; the differences are named where they happen: each rank
takes its share of the batch (``BatchShare``), rank 0 alone writes (``RunFolder`` against
``NoRunFolder``, a quiet ``RunLog``: fastwgan.runfolder), and the loop averages, compares and
agrees through fastwgan.distributed.
"""
from __future__ import annotations

import random
import signal
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fastwgan import build
from fastwgan import checkpoint as ckpt_io
from fastwgan import atomic, distributed
from fastwgan.config import Config, ConfigError
from fastwgan.data import (Batches, BatchShare, DataError, open_dataset, resolve_backend,
                           resolve_mode)
from fastwgan.data.files import printable
from fastwgan.data.share import BatchSplitError
from fastwgan.data.undecodable import undecodable_warning
from fastwgan.device import amp_dtype, device_label, resolve_device, set_threads, threads_for_load
from fastwgan.distributed import World
from fastwgan.loop import StartPoint, TrainingLoop
from fastwgan.parity import start_of_run_problem
from fastwgan.runfolder import NoRunFolder, RunFolder, RunLog
from fastwgan.stop import Interrupted, Stop


def train(cfg: Config, resume: Optional[dict] = None, log=print, notes: Sequence[str] = (),
          command: str = "") -> dict:
    """Run the training loop to ``cfg.iters``; returns a summary. Raises Stop to end early.

    Under torchrun this process is one rank of several (fastwgan.distributed): it joins the
    process group here and leaves it when the run ends, however it ends. Everything logged also
    goes to ``train.log`` in the run folder (rank 0's), after a line with the time and
    ``command``."""
    device = resolve_device(cfg.device)
    world = distributed.init_from_env(device.type, timeout=timedelta(seconds=cfg.dist_timeout))
    try:
        return logged_run(cfg, resume, log, notes, command, world)
    except Exception as e:
        if world.distributed and distributed.lost_peer(e):
            raise Stop(f"lost another process of the run ({distributed.lost_peer_reason(e)}); "
                       f"stopping. The last checkpoint written (if any) is kept in "
                       f"{Path(cfg.out) / ckpt_io.CHECKPOINT_NAME}", 1) from None
        raise
    finally:
        distributed.shutdown(world)


def logged_run(cfg: Config, resume: Optional[dict], log, notes: Sequence[str], command: str,
               world: World) -> dict:
    """``run`` with its log and warnings kept in train.log and its stops recorded there."""
    run_log = RunLog(log if world.is_writer else None, command)
    folder = RunFolder(cfg) if world.is_writer else NoRunFolder(cfg)
    show_warning = warnings.showwarning

    def show_and_keep(message, category, filename, lineno, file=None, line=None):
        show_warning(message, category, filename, lineno, file, line)
        run_log.write(f"warning: {message}")

    warnings.showwarning = show_and_keep
    try:
        with folder.locked():  # before any data is decoded; released when the run ends
            folder.clean()
            return run(cfg, resume, run_log, notes, world, folder)
    except (Exception, KeyboardInterrupt) as e:
        replacement = record_stop(e, cfg, run_log, world)
        if replacement is not e:
            raise replacement from None
        raise
    finally:
        warnings.showwarning = show_warning
        folder.close()
        run_log.close()


def _is_write_failure(e: BaseException) -> bool:
    return isinstance(e, OSError) and atomic.is_write_failure(e)


def record_stop(e: BaseException, cfg: Config, run_log: RunLog, world: World) -> BaseException:
    """What ends a run early, written to train.log; the exception to raise in its place (a full
    disk becomes a Stop of one line, everything else is raised as it is)."""
    if _is_write_failure(e):
        message = (f"{atomic.write_failure(e, cfg.out)}; stopping. The last checkpoint written "
                   "(if any) is kept")
        try:
            run_log.write(f"stopped: {message}")
        except OSError:
            pass
        return Stop(message, 1)
    if isinstance(e, Stop):
        run_log.write(f"stopped: {e}")
    elif isinstance(e, Interrupted):
        run_log.write(f"stopped at once by a second {signal.Signals(e.signum).name}, without a checkpoint")
    elif isinstance(e, KeyboardInterrupt):  # Ctrl-C before the loop's own handler was set
        run_log.write("interrupted before training started")
    elif isinstance(e, OSError):  # another failure of the machine: as it is
        pass
    elif world.distributed and distributed.lost_peer(e):
        run_log.write(f"stopped: lost another process of the run ({distributed.lost_peer_reason(e)})")
    return e


def run(cfg: Config, resume: Optional[dict], log: RunLog, notes: Sequence[str], world: World,
        folder: RunFolder) -> dict:
    """Set up, then run the loop: the data, the run folder (once the data loads), the networks and
    their engine, the resume point, the outputs that start a run, ``TrainingLoop``."""
    for note in notes:
        log(note)
    dtype, threads, share = prepare_process(cfg, world, log)
    dataset, batches = setup_data(cfg, share, world, resume, log)
    folder.open(resume, log)
    engine = setup_models(cfg, world.device, dtype, batches, world, resume)
    start = restore_or_seed(cfg, engine, resume, world, folder, log)
    log_start(cfg, world, engine, dtype, threads, batches, start, log)
    folder.start(dataset, resume, log)
    return TrainingLoop(cfg, engine, folder, world, log, start).run()


def prepare_process(cfg: Config, world: World, log):
    """This process's precision, CPU threads and share of each batch; the seeds of its random
    streams (a resumed run restores them later)."""
    dtype = amp_dtype(cfg, world.device, log)
    if world.distributed or world.device.type != "cpu":  # a job's processes share the cores by design
        threads = set_threads(cfg.threads)
    else:
        threads, note = threads_for_load(cfg.threads)
        if note:
            log(note)
    try:
        share = BatchShare(cfg.batch_size, world.rank, world.world_size)
    except BatchSplitError as e:
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return dtype, threads, share


def log_start(cfg: Config, world: World, engine, dtype, threads: int, batches: Batches,
              start: StartPoint, log) -> None:
    """The lines that say what this run trains, where and how."""
    device = world.device
    log(f"device: {device}{' (' + device_label(device) + ')' if device.type == 'cuda' else ''}, "
        f"{threads} CPU threads, engine: {engine.describe()}, "
        f"precision: {'bf16 autocast' if dtype else 'fp32'}, {cfg.describe_loss()}, batch {cfg.batch_size}, "
        f"{cfg.image_size}x{cfg.image_size}")
    if cfg.sync_bn and not world.distributed:
        log("note: --sync-bn normalises over the processes of a torchrun job; one process has "
            "nothing to synchronise")
    if world.distributed:
        log(f"processes: {world.world_size} ({world.backend}), batch {cfg.batch_size} = "
            f"{world.world_size} x {batches.batch_size}, BatchNorm "
            f"{'over the global batch (--sync-bn)' if cfg.sync_bn else 'per process'}")
    if device.type == "cpu" and cfg.image_size >= 64 and cfg.iters - start.iteration >= 10_000:
        log("note: training the full recipe on a CPU takes days; --preset cpu shows faces in minutes")


def setup_data(cfg: Config, share: BatchShare, world: World, resume: Optional[dict], log):
    """The dataset and this rank's batches (its share of each global batch), from the resume
    point on. With several processes, each machine's first one goes first: it generates the
    built-in faces or decodes the resident set into the cache, and the others read the cache;
    between the two, the ranks agree on one data mode (``agree_data_mode``)."""
    dataset = distributed.machine_leader_first(lambda: _open_files(cfg, log), world)
    mode = agree_data_mode(cfg, len(dataset.files), world)
    batches = distributed.machine_leader_first(
        lambda: _open_batches(cfg, dataset, mode, share, world, resume, log), world)
    return dataset, batches


def agree_data_mode(cfg: Config, n_images: int, world: World) -> str:
    """``--data-mode`` as every rank takes it. With "auto" a process decides from its own memory
    (``resident_budget``: for DALI on a GPU, its free GPU memory), which differs from rank to rank;
    but the ranks must load alike (a resident set feeds the fast engine i.i.d. draws, a stream the
    epoch order, and the checkpoint keeps one data position for all). So every rank streams where
    some rank would: none is made to hold a set that does not fit. One process decides alone,
    in ``Batches`` (which re-decides for Pillow where DALI fails to start)."""
    if cfg.data_mode != "auto" or not world.distributed:
        return cfg.data_mode
    try:
        backend = resolve_backend(cfg.data_backend)
    except (DataError, ValueError):  # Batches says what is wrong with --data-backend
        backend = "pillow"
    mine = resolve_mode("auto", n_images, cfg.image_size, backend, world.device)
    return "stream" if distributed.any_rank(mine == "stream", world) else "resident"


def _open_files(cfg: Config, log):
    dataset = open_dataset(cfg.data, log, cfg.max_pixels)
    root = printable(dataset.root)  # a folder's name need not be UTF-8
    if dataset.synthetic:
        log(f"data: {len(dataset.files)} SYNTHETIC face images (built in, generated in {root}). "
            "To train on CelebA: --data /path/to/img_align_celeba --crop 108")
    else:
        log(f"data: {len(dataset.files)} images under {root}")
    if dataset.warning():
        log(f"warning: {dataset.warning()}")
    return dataset


def _open_batches(cfg: Config, dataset, mode: str, share: BatchShare, world: World,
                  resume: Optional[dict], log) -> Batches:
    batches = Batches(dataset, cfg.image_size, cfg.crop, share, cfg.seed, world.device,
                      mode=mode, workers=cfg.workers,
                      start=resume["data_position"] if resume else 0, progress=cfg.progress,
                      backend=cfg.data_backend)
    log(f"loader: {batches.describe()}")
    if batches.undecodable:
        log(f"warning: {undecodable_warning(batches.undecodable, len(dataset.files))}")
    return batches


def setup_models(cfg: Config, device: torch.device, dtype, batches: Batches, world: World,
                 resume: Optional[dict]):
    """Both networks (from the checkpoint when resuming) and the engine with their optimizers."""
    G, D = build.build_networks(cfg, device)
    if resume:  # before the engine: the fast one re-lays parameters into flat buffers
        G.load_state_dict(resume["generator"])
        D.load_state_dict(resume["critic"])
    engine = build.build_engine(cfg, G, D, batches, device, dtype, world,
                                backend=choose_backend(cfg, device, dtype, world))
    if resume:
        engine.load_optimizer_states(resume["opt_g"], resume["opt_d"])
    return engine


def choose_backend(cfg: Config, device: torch.device, dtype, world: World) -> str:
    """``--backend`` resolved, and the fused kernels checked where the fast engine would run them
    compiled. Every rank takes the same engine: where the check fails on some rank, all of them
    fall back to the reference."""
    backend = build.resolve_backend(cfg, device)
    if backend == "fast" and distributed.any_rank(not kernels_pass(cfg, device, dtype), world):
        return "reference"
    return backend


def kernels_pass(cfg: Config, device: torch.device, dtype) -> bool:
    """The start-of-run check of the fused kernels against their twins (about a second on CUDA).
    A failure stops an explicit ``--backend fast`` (exit 1: the machine, not the input, is at
    fault); with ``--backend auto`` the run continues on the reference engine after one warning,
    which train.log keeps."""
    problem = start_of_run_problem(cfg, device, dtype)
    if problem is None:
        return True
    if cfg.backend == "fast":
        raise Stop(f"--backend fast: {problem}. Run python -m fastwgan.check for the details, "
                   "or train with --backend reference", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every run says it, also a second one in this process
        warnings.warn(f"{problem}; training with the reference engine instead "
                      "(python -m fastwgan.check for the details)", RuntimeWarning, stacklevel=2)
    return False


def restore_or_seed(cfg: Config, engine, resume: Optional[dict], world: World, folder: RunFolder,
                    log) -> StartPoint:
    """The random streams and the partial log averages of the checkpoint, for this rank.

    A fresh run of several ranks seeds each rank's stream from (seed, rank). A resumed one takes
    this rank's saved state when the world size is the checkpoint's (exact); with another world
    size it continues, not bit for bit, and says so once."""
    if resume is None:
        if world.distributed:
            distributed.seed_device_rng(cfg.seed, world)
        return StartPoint()
    it = resume["iteration"]
    rng, sums, exact = ckpt_io.resume_point(resume, world.rank, world.world_size)
    if rng is not None:
        ckpt_io.set_rng_state(rng, world.device if world.distributed else None)
    else:
        torch.manual_seed(distributed.resume_seed(cfg.seed, world.rank, it))
    start = StartPoint(it, resume.get("elapsed", 0.0))
    if "log_accum" in resume:
        engine.sums.copy_(sums)
        start.critic_steps = resume["log_accum"]["critic_steps"]
        start.gen_steps = resume["log_accum"]["gen_steps"]
    log(f"resumed from iteration {it}" + (
        " (what the log above says of later iterations was not kept)" if folder.dropped_rows(it) else ""))
    if not exact:
        saved = resume.get("world_size", 1)
        log(f"note: the checkpoint was written by {saved} process{'es' if saved > 1 else ''}, this "
            f"run has {world.world_size}: it continues from the same weights, optimizer state and "
            "data position, but not bit for bit (the random streams of the processes differ)")
    return start
