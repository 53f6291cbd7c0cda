"""Train a Wasserstein GAN: ``python -m fastwgan.train [flags]`` (``--help`` lists them), or
``torchrun --nproc_per_node N -m fastwgan.train [flags]`` on N processes.

Reads top to bottom: the config (``parse_config``), the process group (``train``: one process
without torchrun), then ``_train``: the data (``setup_data``), the run folder (``RunFolder``),
models, optimizers and engine (``setup_models``), the resume point (``restore_or_seed``), and the
loop of phases (n_critic critic steps, one generator step) with logging, samples and checkpoints at
intervals (``TrainingLoop``). Losses stay on the device and are read at log points only.

Several processes run the same code; the differences are named where they happen: each rank takes
its share of the batch (``Batches(shard=...)``), rank 0 alone writes (``RunFolder`` against
``NoRunFolder``, a quiet ``RunLog``: fastwgan.runfiles), and the loop averages, compares and agrees
through fastwgan.distributed.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import math
import random
import shlex
import signal
import sys
import time
import types
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import distributed, runfolder
from fastwgan.config import Config, ConfigError, build_parser, config_from_args
from fastwgan.data import Batches, BatchShare, DataError, open_dataset
from fastwgan.data.undecodable import undecodable_warning
from fastwgan.distributed import SINGLE, World
from fastwgan.engine import ReferenceEngine
from fastwgan.models import Critic, Generator
from fastwgan.outputs import one_line_warnings
from fastwgan.runfiles import NoRunFolder, RunFolder, RunLog, holds_run

DESCRIPTION = """\
Train the WGAN of Arjovsky et al. (2017) (weight-clipped critic, RMSprop, n_critic critic steps
per generator step) with the DCGAN networks of the paper's code.

examples:
  python -m fastwgan.train --preset cpu                  # built-in faces, a few minutes on a CPU
  python -m fastwgan.train --amp --data ~/celeba/img_align_celeba --crop 108 --out runs/celeba
  python -m fastwgan.train --resume runs/celeba --iters 200000   # continue, exactly
  python -m fastwgan.train --loss wgan-gp --amp --data img_align_celeba.zip --crop 108
  torchrun --nproc_per_node 8 -m fastwgan.train --amp --data ~/celeba/img_align_celeba --crop 108
"""

# Flags that define the networks: a resumed run keeps the checkpoint's values.
ARCHITECTURE = ("image_size", "nz", "ngf", "ndf", "extra_layers", "loss", "critic_norm")


class Interrupted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM during training: stop at once, without a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# Per loss: the flags it does not use, and why.
UNUSED_FLAGS = {
    "gan": (("n_critic", "n_critic_warmup", "clip", "gp_weight"),
            "--loss gan takes one critic step per generator step, without clipping or penalty"),
    "wgan": (("gp_weight", "adam_beta1", "adam_beta2"),
             "--loss wgan clips the critic and trains with RMSprop"),
    "wgan-gp": (("clip",), "--loss wgan-gp penalises the critic's gradient instead of clipping"),
}


def ignored_flags(args, cfg: Config) -> list[str]:
    """Flags the user gave that this config does not use."""
    names, why = UNUSED_FLAGS[cfg.loss]
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if not given:
        return []
    return [f"note: {why}: {', '.join(given)} ignored"]


class Stop(Exception):
    """Ends a run with a message and an exit code, after whatever could be saved was saved."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available "
                          f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})")
    return torch.device(name)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> Optional[bool]:
    """Whether the CPU computes in bf16 natively, from the flags it reports (Linux): avx512_bf16 or
    amx_bf16 on x86, bf16 on Arm. None where it does not say (another OS)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def amp_dtype(cfg: Config, device: torch.device, log) -> Optional[torch.dtype]:
    if not cfg.amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log("warning: --amp: this GPU has no bf16 support; training in fp32")
        return None
    if device.type == "cpu" and cpu_has_native_bf16() is False:
        # on an AVX2-only CPU the reference ran 6x slower in bf16 autocast than in fp32
        log("warning: --amp: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), where "
            "bf16 is several times slower than fp32; training in fp32")
        return None
    return torch.bfloat16


def set_threads(n: int) -> int:
    """``--threads``: torch's intra-op CPU threads (0 keeps its default). The count in use, for the
    log: OpenMP threads that outnumber the free cores of a busy machine wait on each other."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def parse_config(argv: Optional[Sequence[str]], given: Optional[dict] = None
                 ) -> tuple[Config, Optional[dict], list[str]]:
    """The run's config, the checkpoint to resume from (or None), and notes for the log.

    ``given``: values set as if by flags (the Python API). A resumed checkpoint gets
    ``source_dir``: the run folder it came from."""
    parser = build_parser(description=DESCRIPTION)
    args = parser.parse_args(argv, namespace=argparse.Namespace(**(given or {})))
    restart = resume_after_restart(args)
    if args.resume is None:
        cfg = config_from_args(args)
        if holds_run(cfg.out) and not cfg.overwrite:
            raise ConfigError(f"{cfg.out} already holds a run; continue it with --resume {cfg.out}, "
                              "or pass another --out (or --overwrite to start it again)")
        return cfg, None, ignored_flags(args, cfg)
    ckpt = ckpt_io.load(args.resume, resume=True)  # validated before anything is written
    source = ckpt_io.checkpoint_path(args.resume).parent
    saved = Config.from_dict(ckpt["config"]).resolved()  # (older checkpoints lack later fields)
    for name in ARCHITECTURE:
        given = getattr(args, name)
        if given is not None and given != getattr(saved, name):
            raise ConfigError(f"--{name.replace('_', '-')} {given} differs from the checkpoint's "
                              f"{getattr(saved, name)}; a resumed run keeps its networks and loss")
    if args.out is None:
        args.out = str(source)
    elif Path(args.out).resolve() != source.resolve() and holds_run(args.out) and not args.overwrite:
        raise ConfigError(f"--out {args.out} already holds another run; resuming {source} there "
                          "would replace it. Pass another --out (or --overwrite)")
    args.preset = None  # the saved config already has the preset applied
    cfg = config_from_args(args, base=saved)
    ckpt["source_dir"] = str(source)
    return cfg, ckpt, restart + ignored_flags(args, cfg)


def resume_after_restart(args) -> list[str]:
    """Under ``torchrun --max-restarts K``, a restarted job continues from its run folder's last
    checkpoint (``args.resume`` set to it) rather than starting again or resuming the checkpoint
    the first start resumed; a note for the log. No checkpoint yet: the run starts afresh."""
    restarts = distributed.restart_count()
    if restarts == 0:
        return []
    folder = args.out
    if folder is None and args.resume is not None:
        folder = str(ckpt_io.checkpoint_path(args.resume).parent)
    folder = folder or Config().out
    if not holds_run(folder):
        return []
    args.resume, args.out = folder, folder
    return [f"note: torchrun restart {restarts}: continuing from the last checkpoint in {folder}"]


def resolve_backend(cfg: Config, device: torch.device) -> str:
    if cfg.backend == "auto":
        return "fast" if device.type == "cuda" else "reference"
    return cfg.backend


def kernels_pass(cfg: Config, device: torch.device, dtype) -> bool:
    """The start-of-run check of the fused kernels against their twins (fastwgan.check, about a
    second on CUDA). A failure stops an explicit ``--backend fast`` (exit 1: the machine, not the
    input, is at fault); with ``--backend auto`` the run continues on the reference engine after
    one warning, which train.log keeps."""
    from fastwgan.check import start_of_run_problem

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


def make_engine(cfg: Config, G, D, batches: Batches, device: torch.device, dtype,
                world: World = SINGLE):
    """The reference engine, or the fast one fed by the device-side sampler where the dataset
    is resident (by the batch stream otherwise). Every rank takes the same engine: where the
    kernels' check fails on some rank, all of them fall back to the reference."""
    kw = dict(world=world, sync_bn=cfg.sync_bn)
    if resolve_backend(cfg, device) == "reference":
        return ReferenceEngine(cfg, G, D, batches, device, dtype, **kw)
    from fastwgan.fast import FastEngine

    if distributed.any_rank(not kernels_pass(cfg, device, dtype), world):
        return ReferenceEngine(cfg, G, D, batches, device, dtype, **kw)
    # the fast engine's layout: channels_last on CUDA, NCHW on a CPU
    sampler = (batches.sampler(channels_last=device.type == "cuda") if batches.mode == "resident"
               else batches)
    return FastEngine(cfg, G, D, sampler, device, dtype, graphs=cfg.graphs, **kw)


# --- the run: one process, or one rank of several ----------------------------------------------------

def train(cfg: Config, resume: Optional[dict] = None, log=print, notes: Sequence[str] = (),
          command: str = "") -> dict:
    """Run the training loop to ``cfg.iters``; returns a summary. Raises Stop to end early.

    Under torchrun this process is one rank of several (fastwgan.distributed): it joins the
    process group here and leaves it when the run ends, however it ends. Everything logged also
    goes to ``train.log`` in the run folder (rank 0's), after a line with the time and
    ``command``."""
    device = pick_device(cfg.device)
    world = distributed.init_from_env(device.type, timeout=timedelta(seconds=cfg.dist_timeout))
    try:
        return _train_logged(cfg, resume, log, notes, command, world)
    except Exception as e:
        if world.distributed and distributed.lost_peer(e):
            raise Stop(f"lost another process of the run ({distributed.lost_peer_reason(e)}); "
                       f"stopping. The last checkpoint written (if any) is kept in "
                       f"{Path(cfg.out) / ckpt_io.CHECKPOINT_NAME}", 1) from None
        raise
    finally:
        distributed.shutdown(world)


def _train_logged(cfg: Config, resume: Optional[dict], log, notes: Sequence[str], command: str,
                  world: World) -> dict:
    """``_train`` with its log kept in train.log and its stops recorded there."""
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
            return _train(cfg, resume, run_log, notes, world, folder)
    except OSError as e:
        if not runfolder.is_write_failure(e):
            raise
        message = (f"{runfolder.write_failure(e, cfg.out)}; stopping. The last checkpoint written "
                   "(if any) is kept")
        try:
            run_log.write(f"stopped: {message}")
        except OSError:
            pass
        raise Stop(message, 1) from None
    except Stop as e:
        run_log.write(f"stopped: {e}")
        raise
    except Interrupted as e:
        run_log.write(f"stopped at once by a second {signal.Signals(e.signum).name}, without a checkpoint")
        raise
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler was set
        run_log.write("interrupted before training started")
        raise
    except Exception as e:
        if world.distributed and distributed.lost_peer(e):
            run_log.write(f"stopped: lost another process of the run ({distributed.lost_peer_reason(e)})")
        raise
    finally:
        warnings.showwarning = show_warning
        folder.close()
        run_log.close()


def _train(cfg: Config, resume: Optional[dict], log: RunLog, notes: Sequence[str], world: World,
           folder: RunFolder) -> dict:
    """Set up, then run the loop: the data, the run folder (once the data loads), the networks and
    their engine, the resume point, the outputs that start a run, ``TrainingLoop``."""
    for note in notes:
        log(note)
    device = world.device
    dtype = amp_dtype(cfg, device, log)
    threads = set_threads(cfg.threads)
    try:
        distributed.split_batch(cfg.batch_size, world.world_size)
    except distributed.BatchSplitError as e:
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    dataset, batches = setup_data(cfg, device, world, resume, log)
    folder.open(resume, log)
    G, D, engine = setup_models(cfg, device, dtype, batches, world, resume)
    start = restore_or_seed(cfg, engine, resume, world, folder, log)
    log(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
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
    folder.start(dataset, resume, log)
    return TrainingLoop(cfg, engine, folder, world, log, start).run()


def setup_data(cfg: Config, device: torch.device, world: World, resume: Optional[dict], log):
    """The dataset and this rank's batches (its share of each global batch), from the resume
    point on. With several processes, each machine's first one goes first: it generates the
    built-in faces or decodes the resident set into the cache, and the others read the cache."""
    return distributed.machine_leader_first(lambda: _open_data(cfg, device, world, resume, log),
                                            world)


def _open_data(cfg: Config, device: torch.device, world: World, resume: Optional[dict], log):
    dataset = open_dataset(cfg.data, log, cfg.max_pixels)
    if dataset.synthetic:
        log(f"data: {len(dataset.files)} SYNTHETIC face images (built in, generated in {dataset.root}). "
            "To train on CelebA: --data /path/to/img_align_celeba --crop 108")
    else:
        log(f"data: {len(dataset.files)} images under {dataset.root}")
    if dataset.warning():
        log(f"warning: {dataset.warning()}")
    batches = Batches(dataset, cfg.image_size, cfg.crop,
                      BatchShare(cfg.batch_size, world.rank, world.world_size), cfg.seed, device,
                      mode=cfg.data_mode, workers=cfg.workers,
                      start=resume["data_position"] if resume else 0, progress=cfg.progress,
                      backend=cfg.data_backend)
    log(f"loader: {batches.describe()}")
    if batches.undecodable:
        log(f"warning: {undecodable_warning(batches.undecodable, len(dataset.files))}")
    return dataset, batches


def setup_models(cfg: Config, device: torch.device, dtype, batches: Batches, world: World,
                 resume: Optional[dict]):
    """Both networks (from the checkpoint when resuming) and the engine with their optimizers."""
    G = Generator(cfg.image_size, cfg.nz, cfg.ngf, extra_layers=cfg.extra_layers).to(device)
    D = Critic(cfg.image_size, cfg.ndf, extra_layers=cfg.extra_layers,
               norm=cfg.critic_normalization).to(device)
    if resume:  # before the engine: the fast one re-lays parameters into flat buffers
        G.load_state_dict(resume["generator"])
        D.load_state_dict(resume["critic"])
    engine = make_engine(cfg, G, D, batches, device, dtype, world)
    if resume:
        engine.opt_g.load_state_dict(resume["opt_g"])
        engine.opt_d.load_state_dict(resume["opt_d"])
    return G, D, engine


@dataclass
class StartPoint:
    """Where the loop starts: the iteration, the training time so far, and what the next metrics
    row averages over so far (this rank's loss sums, the steps they count)."""

    iteration: int = 0
    elapsed: float = 0.0
    critic_steps: int = 0
    gen_steps: int = 0


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


# --- the loop ---------------------------------------------------------------------------------------

class TrainingLoop:
    """The phases (``engine.iteration``) with log points, samples and checkpoints at intervals.

    With several ranks it is the same loop; the differences are named: the loss sums are averaged
    over the ranks at log points (``mean_over_ranks``) where the weights are also compared
    (``check_in_sync``); a stop signal is agreed on at every iteration (``any_rank``), so every
    rank writes its part of the same checkpoint; a checkpoint gathers every rank's RNG state and
    sums (``gather_to_writer``). The run folder is rank 0's (``RunFolder``)."""

    def __init__(self, cfg: Config, engine, folder: RunFolder, world: World, log: RunLog,
                 start: StartPoint):
        self.cfg, self.engine, self.folder, self.world, self.log = cfg, engine, folder, world, log
        self.G, self.D = engine.G, engine.D
        self.start = start
        self.sums = engine.sums  # loss_d, d_real, d_fake (summed over critic steps), loss_g, ...
        self.n_crit, self.n_gen = start.critic_steps, start.gen_steps
        self.last_good: Optional[int] = start.iteration if start.iteration else None
        self.stop_signal: list[int] = []

    # SIGINT/SIGTERM: finish the iteration, write a checkpoint, stop. A second signal stops at once.
    def _on_signal(self, signum, _frame):
        if self.stop_signal:
            raise Interrupted(signum)
        self.stop_signal.append(signum)

    def run(self) -> dict:
        from tqdm import tqdm

        cfg, engine, start_iter = self.cfg, self.engine, self.start.iteration
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.t_log = time.perf_counter()
        self.t_start = self.t_log - self.start.elapsed
        self.images_since_log = 0
        # the bar only where a terminal shows it; logs (non-tty) get a line every --log-every instead
        self.show_bar = cfg.progress and sys.stderr.isatty() and self.world.is_writer
        self.bar = tqdm(total=cfg.iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                        disable=not self.show_bar, smoothing=0.05)
        described = engine.describe()
        try:
            for it in range(start_iter, cfg.iters):
                n_critic = cfg.n_critic_at(it)
                engine.iteration(n_critic)
                if it == start_iter and engine.describe() != described:  # e.g. a capture that failed
                    self.log(f"engine: {engine.describe()}")
                self.n_crit += n_critic
                self.n_gen += 1
                self.images_since_log += n_critic * cfg.batch_size  # the global batch: every rank
                done = it + 1
                self.bar.update(1)

                evaluate = cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.iters)
                if done % cfg.log_every == 0 or done == cfg.iters or evaluate:
                    self.log_point(done, evaluate)

                stop = distributed.any_rank(bool(self.stop_signal), self.world)
                t_io = time.perf_counter()
                if done % cfg.sample_every == 0 or done == cfg.iters:
                    self.folder.samples(self.G, done)
                self.folder.histograms({"G": self.G, "D": self.D}, done)
                if done % cfg.ckpt_every == 0 or done == cfg.iters or stop:
                    self.checkpoint(done, time.perf_counter() - self.t_start)
                self.t_log += time.perf_counter() - t_io  # img/s counts training time only
                if stop:
                    signum = self.stop_signal[0] if self.stop_signal else signal.SIGTERM
                    name = signal.Signals(signum).name
                    how = "" if self.stop_signal else " (by another process of the run)"
                    raise Stop(f"{name}{how}: stopped at iteration {done}; checkpoint written. "
                               f"Continue with python -m fastwgan.train --resume {cfg.out}", 128 + signum)
        finally:
            self.bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)

        total = time.perf_counter() - self.t_start
        out = Path(cfg.out)
        this_session = f", {cfg.iters - start_iter} of them in this session" if start_iter else ""
        self.log(f"done: {cfg.iters} iterations{this_session}, {total / 60:.1f} min of training. "
                 f"Samples: {out / 'samples'}, losses: {out / 'loss.png'}, log: {out / 'train.log'}, "
                 f"checkpoint: {out / ckpt_io.CHECKPOINT_NAME}")
        return {"iteration": cfg.iters, "elapsed": total, "out": str(out)}

    def log_point(self, done: int, evaluate: bool) -> None:
        """A metrics row: the losses since the last one, averaged over the ranks (a host sync)."""
        cfg, engine = self.cfg, self.engine
        s = distributed.mean_over_ranks(self.sums, self.world).tolist()  # host sync
        if not all(math.isfinite(v) for v in s):
            self.raise_nonfinite(done)
        try:
            distributed.check_in_sync(engine.parameter_sets(), self.world)
        except distributed.OutOfSync as e:
            raise Stop(f"{e} (at iteration {done})", 1) from None
        now = time.perf_counter()
        ips = self.images_since_log / max(now - self.t_log, 1e-9)
        n_crit, n_gen = self.n_crit, self.n_gen
        row = {
            "iter": done, "time": round(now - self.t_start, 3),
            "wdist": (s[1] - s[2]) / n_crit if engine.objective.wasserstein else None,
            "loss_d": s[0] / n_crit, "loss_g": s[3] / n_gen,
            "d_real": s[1] / n_crit, "d_fake": s[2] / n_crit,
            **engine.objective.extra_means(s, n_crit),  # wgan-gp: gp, grad_norm
            "critic_steps": n_crit, "img_per_s": round(ips, 1),
        }
        if evaluate:
            row.update(self.folder.evaluate(self.G))
            now = time.perf_counter()  # the evaluation is not training time
        self.folder.metrics_row(row)
        w = f"W {row['wdist']:.4g}  " if row["wdist"] is not None else ""
        if "gp" in row:
            w += f"GP {row['gp']:.3g}  |grad| {row['grad_norm']:.3g}  "
        if "swd" in row:
            w += f"SWD {row['swd']:.1f}  "
        self.bar.set_postfix_str(f"{w}{ips:,.0f} img/s")
        line = (f"iter {done}/{cfg.iters}  {w}loss_D {row['loss_d']:.4g}  "
                f"loss_G {row['loss_g']:.4g}  {ips:,.0f} img/s")
        on_screen = not self.show_bar or evaluate or done % (cfg.log_every * 10) == 0 or done == cfg.iters
        self.log.progress(line, on_screen, self.bar.write)
        self.sums.zero_()
        self.n_crit = self.n_gen = self.images_since_log = 0
        self.t_log = now

    def checkpoint(self, iteration: int, elapsed: float) -> None:
        """Every rank's part (its RNG state and loss sums) gathered to rank 0, which writes."""
        G, D, engine = self.G, self.D, self.engine
        # host sync: a checkpoint is only written from finite weights
        if not all(torch.isfinite(p).all() for p in [*G.parameters(), *D.parameters()]):
            self.raise_nonfinite(iteration)
        world = self.world
        parts = distributed.gather_to_writer(
            (ckpt_io.rng_state(world.device if world.distributed else None), self.sums.cpu()), world)
        if parts is not None:
            rngs, sums = [p[0] for p in parts], [p[1] for p in parts]
            mean_sums = sums[0] if len(sums) == 1 else torch.stack(sums).mean(0)
            self.folder.checkpoint({
                "format": ckpt_io.FORMAT_VERSION,
                "config": self.cfg.to_dict(),
                "generator": G.state_dict(), "critic": D.state_dict(),
                "opt_g": engine.opt_g.state_dict(), "opt_d": engine.opt_d.state_dict(),
                "iteration": iteration, "data_position": engine.data_position,
                "elapsed": elapsed,
                # what the next metrics row averages over so far: a resumed run logs the same rows
                "log_accum": {"sums": mean_sums, "critic_steps": self.n_crit, "gen_steps": self.n_gen},
                **ckpt_io.rank_entries(rngs, sums),  # the world size, every rank's RNG state
            })
        self.last_good = iteration

    def raise_nonfinite(self, iteration: int) -> None:
        out = Path(self.cfg.out)
        kept = (f"the last good checkpoint, from iteration {self.last_good}, is kept in "
                f"{out / ckpt_io.CHECKPOINT_NAME}" if self.last_good is not None
                else "no checkpoint had been written yet")
        raise Stop(f"the loss became NaN or Inf by iteration {iteration}; stopping. {kept}. "
                   "Try a lower --lr (or no --amp), and check the data.", 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (``python -m fastwgan.train``, ``fastwgan-train``): the exit status. A
    process of a torchrun job ends here (``distributed.exit_process``: no interpreter teardown)."""
    with one_line_warnings("warning: "):
        code = _main(argv)
    if distributed.launched_as()[1] > 1:
        distributed.exit_process(code)
    return code


def _main(argv: Optional[Sequence[str]]) -> int:
    # With several processes, rank 0 reports what every rank meets alike (bad input, a signal);
    # every rank reports its own failures, naming its rank.
    rank, world_size = distributed.launched_as()
    prefix = f"rank {rank}: " if world_size > 1 else ""

    def report(message: str, shared: bool) -> None:
        if rank == 0 or not shared:
            print(prefix + message, file=sys.stderr)

    try:
        cfg, resume, notes = parse_config(argv)
        if resume and resume["iteration"] >= cfg.iters:
            if rank == 0:
                print(f"the checkpoint is at iteration {resume['iteration']}, at or past --iters "
                      f"{cfg.iters}; pass a larger --iters to train further")
            return 0
        args = list(sys.argv[1:] if argv is None else argv)
        train(cfg, resume, notes=notes, command=shlex.join(["python", "-m", "fastwgan.train", *args]))
    except (ConfigError, DataError, ckpt_io.CheckpointError, runfolder.RunFolderError) as e:
        report(f"error: {e}", shared=True)
        return 2
    except Stop as e:
        report(("error: " if e.code == 1 else "") + str(e), shared=e.code != 1)
        return e.code
    except KeyboardInterrupt as e:
        report("interrupted; the last checkpoint written (if any) is kept", shared=True)
        return 128 + getattr(e, "signum", signal.SIGINT)
    return 0


class _CallableModule(types.ModuleType):
    """``from fastwgan import train`` gives this module (Python binds a package's submodule to its
    name once it is imported), so the module itself calls the Python API: ``train(config)``."""

    def __call__(self, config: Optional[Config] = None, **kwargs) -> dict:
        from fastwgan.api import train as api_train

        return api_train(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
