"""Train a Wasserstein GAN: ``python -m fastwgan.train [flags]`` (``--help`` lists them).

Reads top to bottom: config, device, data, models, optimizers, resume, then the loop of phases
(n_critic critic steps, one generator step) with logging, samples and checkpoints at intervals.
Losses stay on the device and are read at log points only.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import math
import os
import random
import shlex
import shutil
import signal
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import runfolder
from fastwgan.config import Config, ConfigError, build_parser, config_from_args
from fastwgan.data import Batches, DataError, open_dataset, sample_images
from fastwgan.data.pillow import undecodable_warning
from fastwgan.models import Critic, Generator
from fastwgan.engine import ReferenceEngine
from fastwgan.metrics import swd_for_training
from fastwgan.outputs import MetricsLog, one_line_warnings, plot_losses, save_grid
from fastwgan.tensorboard import EventLog

DESCRIPTION = """\
Train the WGAN of Arjovsky et al. (2017) (weight-clipped critic, RMSprop, n_critic critic steps
per generator step) with the DCGAN networks of the paper's code.

examples:
  python -m fastwgan.train --preset cpu                  # built-in faces, a few minutes on a CPU
  python -m fastwgan.train --amp --data ~/celeba/img_align_celeba --crop 108 --out runs/celeba
  python -m fastwgan.train --resume runs/celeba --iters 200000   # continue, exactly
"""

# Flags that define the networks: a resumed run keeps the checkpoint's values.
ARCHITECTURE = ("image_size", "nz", "ngf", "ndf", "extra_layers", "loss", "critic_norm")
N_SAMPLES = 64  # 8x8 grids


RUN_FILES = (ckpt_io.CHECKPOINT_NAME, "metrics.jsonl", "loss.png", "real_samples.png", "config.json",
             "train.log")


class RunLog:
    """Prints each line and keeps it in the run folder's ``train.log``. Lines logged before the
    folder exists (the data is checked first) are written when it is opened."""

    def __init__(self, echo=print, command: str = ""):
        self.echo, self.pending, self.file, self.command = echo, [], None, command

    def __call__(self, line: str) -> None:
        self.echo(line)
        self.write(line)

    def write(self, line: str) -> None:
        """To the file only (what the progress bar already showed)."""
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


def dropped_rows(metrics_path: Path, iteration: int) -> int:
    """Rows of ``metrics.jsonl`` logged after ``iteration``: what a resume from there drops."""
    return sum(r.get("iter", 0) > iteration for r in MetricsLog(metrics_path).read())


def parse_config(argv: Optional[Sequence[str]], given: Optional[dict] = None
                 ) -> tuple[Config, Optional[dict], list[str]]:
    """The run's config, the checkpoint to resume from (or None), and notes for the log.

    ``given``: values set as if by flags (the Python API). A resumed checkpoint gets
    ``source_dir``: the run folder it came from."""
    parser = build_parser(description=DESCRIPTION)
    args = parser.parse_args(argv, namespace=argparse.Namespace(**(given or {})))
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
    return cfg, ckpt, ignored_flags(args, cfg)


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


def make_engine(cfg: Config, G, D, batches: Batches, device: torch.device, dtype):
    """The reference engine, or the fast one fed by the device-side sampler where the dataset
    is resident (by the batch stream otherwise)."""
    if resolve_backend(cfg, device) == "reference":
        return ReferenceEngine(cfg, G, D, batches, device, dtype)
    from fastwgan.fast import FastEngine

    if not kernels_pass(cfg, device, dtype):
        return ReferenceEngine(cfg, G, D, batches, device, dtype)
    # the fast engine's layout: channels_last on CUDA, NCHW on a CPU
    sampler = (batches.sampler(channels_last=device.type == "cuda") if batches.mode == "resident"
               else batches)
    return FastEngine(cfg, G, D, sampler, device, dtype, graphs=cfg.graphs)


def train(cfg: Config, resume: Optional[dict] = None, log=print, notes: Sequence[str] = (),
          command: str = "") -> dict:
    """Run the training loop to ``cfg.iters``; returns a summary. Raises Stop to end early.

    Everything logged also goes to ``train.log`` in the run folder, after a line with the time
    and ``command``."""
    run_log = RunLog(log, command)
    show_warning = warnings.showwarning

    def show_and_keep(message, category, filename, lineno, file=None, line=None):
        show_warning(message, category, filename, lineno, file, line)
        run_log.write(f"warning: {message}")

    warnings.showwarning = show_and_keep
    try:
        with runfolder.RunLock(cfg.out):  # before any data is decoded; released when the run ends
            runfolder.remove_orphans(cfg.out)
            return _train(cfg, resume, run_log, notes)
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
    finally:
        warnings.showwarning = show_warning
        run_log.close()


def _train(cfg: Config, resume: Optional[dict], log: RunLog, notes: Sequence[str]) -> dict:
    from tqdm import tqdm

    out = Path(cfg.out)
    for note in notes:
        log(note)
    device = pick_device(cfg.device)
    dtype = amp_dtype(cfg, device, log)
    threads = set_threads(cfg.threads)
    events = EventLog(cfg)  # --tensorboard
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # --- data ---
    dataset = open_dataset(cfg.data, log, cfg.max_pixels)
    if dataset.synthetic:
        log(f"data: {len(dataset.files)} SYNTHETIC face images (built in, generated in {dataset.root}). "
            "To train on CelebA: --data /path/to/img_align_celeba --crop 108")
    else:
        log(f"data: {len(dataset.files)} images under {dataset.root}")
    if dataset.warning():
        log(f"warning: {dataset.warning()}")
    start_iter = resume["iteration"] if resume else 0
    batches = Batches(dataset, cfg.image_size, cfg.crop, cfg.batch_size, cfg.seed, device,
                      mode=cfg.data_mode, workers=cfg.workers,
                      start=resume["data_position"] if resume else 0, progress=cfg.progress,
                      backend=cfg.data_backend)
    log(f"loader: {batches.describe()}")
    if batches.undecodable:
        log(f"warning: {undecodable_warning(batches.undecodable, len(dataset.files))}")

    # --- the run folder, once the data is known to load ---
    # A fresh run (or a run resumed into another folder) starts from a folder without an earlier
    # run's files; a run resumed in place keeps its history.
    source = Path(resume["source_dir"]) if resume and "source_dir" in resume else out
    in_place = resume is not None and source.resolve() == out.resolve()
    replaced = clear_run(out) if not in_place and out.exists() else None
    (out / "samples").mkdir(parents=True, exist_ok=True)
    if resume and not in_place and (source / "metrics.jsonl").exists():
        shutil.copyfile(source / "metrics.jsonl", out / "metrics.jsonl")  # the history goes along
    log.open(out / "train.log", append=in_place)
    if replaced is not None:
        log(f"note: the run that was in {out} is kept in {replaced} until this run writes its "
            "first checkpoint")
    if resume and not in_place:
        log(f"resuming {source} (iteration {start_iter}) into {out}")

    # --- models, optimizers, engine ---
    G = Generator(cfg.image_size, cfg.nz, cfg.ngf, extra_layers=cfg.extra_layers).to(device)
    D = Critic(cfg.image_size, cfg.ndf, extra_layers=cfg.extra_layers,
               norm=cfg.critic_normalization).to(device)
    if resume:  # before the engine: the fast one re-lays parameters into flat buffers
        G.load_state_dict(resume["generator"])
        D.load_state_dict(resume["critic"])
    engine = make_engine(cfg, G, D, batches, device, dtype)
    elapsed0 = 0.0
    if resume:
        engine.opt_g.load_state_dict(resume["opt_g"])
        engine.opt_d.load_state_dict(resume["opt_d"])
        elapsed0 = resume.get("elapsed", 0.0)
        ckpt_io.set_rng_state(resume["rng"])
        dropped = in_place and dropped_rows(out / "metrics.jsonl", start_iter) > 0
        log(f"resumed from iteration {start_iter}" + (
            " (what the log above says of later iterations was not kept)" if dropped else ""))
    log(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{threads} CPU threads, engine: {engine.describe()}, "
        f"precision: {'bf16 autocast' if dtype else 'fp32'}, {cfg.describe_loss()}, batch {cfg.batch_size}, "
        f"{cfg.image_size}x{cfg.image_size}")

    if device.type == "cpu" and cfg.image_size >= 64 and cfg.iters - start_iter >= 10_000:
        log("note: training the full recipe on a CPU takes days; --preset cpu shows faces in minutes")

    # --- outputs ---
    runfolder.write_text(out / "config.json", cfg.to_json() + "\n")
    events.open(out, start_iter if resume else None, source)
    fixed_z = torch.randn(N_SAMPLES, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    if not (out / "real_samples.png").exists():
        # (files that do not decode were reported above, or are warned about by the stream)
        real = sample_images(dataset, cfg.image_size, cfg.crop, N_SAMPLES, cfg.seed, workers=1, failed=[])
        save_grid(real, out / "real_samples.png", nrow=8)
        events.real_images(real)
    if cfg.eval_every:
        real_eval = sample_images(dataset, cfg.image_size, cfg.crop, cfg.eval_n, cfg.seed + 3, cfg.workers,
                                  failed=[])
        log(f"evaluation: sliced Wasserstein distance (x1e3) of {len(real_eval)} samples to as many "
            f"real images every {cfg.eval_every} iterations")
    metrics = MetricsLog(out / "metrics.jsonl")
    if resume:
        metrics.truncate_after(start_iter)
    elif metrics.path.exists():
        metrics.path.unlink()

    def save_samples(iteration: int) -> None:
        G.eval()
        with torch.no_grad():
            fake = G(fixed_z)
            save_grid(fake, out / "samples" / f"iter_{iteration:06d}.png", nrow=8)
            events.images("samples", fake, iteration)
        G.train()
        plot_losses(metrics.read(), out / "loss.png", title=f"{cfg.loss}, {cfg.image_size}x{cfg.image_size}")

    last_good = {"iteration": start_iter if resume else None}

    def save_checkpoint(iteration: int, elapsed: float) -> None:
        # host sync: a checkpoint is only written from finite weights
        if not all(torch.isfinite(p).all() for p in [*G.parameters(), *D.parameters()]):
            raise_nonfinite(iteration)
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT_VERSION,
            "config": cfg.to_dict(),
            "generator": G.state_dict(), "critic": D.state_dict(),
            "opt_g": engine.opt_g.state_dict(), "opt_d": engine.opt_d.state_dict(),
            "iteration": iteration, "data_position": engine.data_position,
            "elapsed": elapsed, "rng": ckpt_io.rng_state(),
            # what the next metrics row averages over so far: a resumed run logs the same rows
            "log_accum": {"sums": sums.cpu(), "critic_steps": n_crit, "gen_steps": n_gen},
        }, out / ckpt_io.CHECKPOINT_NAME)
        last_good["iteration"] = iteration
        if replaced is not None and replaced.exists():
            shutil.rmtree(replaced, ignore_errors=True)

    def raise_nonfinite(iteration: int) -> None:
        kept = (f"the last good checkpoint, from iteration {last_good['iteration']}, is kept in "
                f"{out / ckpt_io.CHECKPOINT_NAME}" if last_good["iteration"] is not None
                else "no checkpoint had been written yet")
        raise Stop(f"the loss became NaN or Inf by iteration {iteration}; stopping. {kept}. "
                   "Try a lower --lr (or no --amp), and check the data.", 1)

    # SIGINT/SIGTERM: finish the iteration, write a checkpoint, stop. A second signal stops at once.
    stop_signal: list[int] = []

    def on_signal(signum, _frame):
        if stop_signal:
            raise Interrupted(signum)
        stop_signal.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # --- the loop ---
    sums = engine.sums  # loss_d, d_real, d_fake (summed over critic steps), loss_g, on the device
    n_crit = n_gen = 0
    if resume and "log_accum" in resume:
        acc = resume["log_accum"]
        sums.copy_(acc["sums"])
        n_crit, n_gen = acc["critic_steps"], acc["gen_steps"]
    t_log = time.perf_counter()
    t_start = t_log - elapsed0
    images_since_log = 0
    # the bar only where a terminal shows it; logs (non-tty) get a line every --log-every instead
    show_bar = cfg.progress and sys.stderr.isatty()
    bar = tqdm(total=cfg.iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
               disable=not show_bar, smoothing=0.05)
    described = engine.describe()
    try:
        for it in range(start_iter, cfg.iters):
            n_critic = cfg.n_critic_at(it)
            engine.iteration(n_critic)
            if it == start_iter and engine.describe() != described:  # e.g. a capture that failed
                log(f"engine: {engine.describe()}")
            n_crit += n_critic
            n_gen += 1
            images_since_log += n_critic * cfg.batch_size
            done = it + 1
            bar.update(1)

            evaluate = cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.iters)
            if done % cfg.log_every == 0 or done == cfg.iters or evaluate:
                s = sums.tolist()  # host sync
                if not all(math.isfinite(v) for v in s):
                    raise_nonfinite(done)
                now = time.perf_counter()
                ips = images_since_log / max(now - t_log, 1e-9)
                row = {
                    "iter": done, "time": round(now - t_start, 3),
                    "wdist": (s[1] - s[2]) / n_crit if engine.objective.wasserstein else None,
                    "loss_d": s[0] / n_crit, "loss_g": s[3] / n_gen,
                    "d_real": s[1] / n_crit, "d_fake": s[2] / n_crit,
                    **engine.objective.extra_means(s, n_crit),  # wgan-gp: gp, grad_norm
                    "critic_steps": n_crit, "img_per_s": round(ips, 1),
                }
                if evaluate:
                    swd = swd_for_training(G, real_eval, z_seed=cfg.seed + 2)
                    row["swd"], row["swd_levels"] = swd["mean"], swd["levels"]
                    now = time.perf_counter()  # the evaluation is not training time
                metrics.append(row)
                events.scalars(row)
                w = f"W {row['wdist']:.4g}  " if row["wdist"] is not None else ""
                if "gp" in row:
                    w += f"GP {row['gp']:.3g}  |grad| {row['grad_norm']:.3g}  "
                if evaluate:
                    w += f"SWD {row['swd']:.1f}  "
                bar.set_postfix_str(f"{w}{ips:,.0f} img/s")
                line = (f"iter {done}/{cfg.iters}  {w}loss_D {row['loss_d']:.4g}  "
                        f"loss_G {row['loss_g']:.4g}  {ips:,.0f} img/s")
                log.write(line)
                if not show_bar or evaluate or done % (cfg.log_every * 10) == 0 or done == cfg.iters:
                    bar.write(line)
                sums.zero_()
                n_crit = n_gen = images_since_log = 0
                t_log = now

            t_io = time.perf_counter()
            if done % cfg.sample_every == 0 or done == cfg.iters:
                save_samples(done)
            events.histograms({"G": G, "D": D}, done)
            if done % cfg.ckpt_every == 0 or done == cfg.iters or stop_signal:
                save_checkpoint(done, time.perf_counter() - t_start)
            t_log += time.perf_counter() - t_io  # img/s counts training time only
            if stop_signal:
                name = signal.Signals(stop_signal[0]).name
                raise Stop(f"{name}: stopped at iteration {done}; checkpoint written. Continue with "
                           f"python -m fastwgan.train --resume {out}", 128 + stop_signal[0])
    finally:
        bar.close()
        events.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    total = time.perf_counter() - t_start
    this_session = f", {cfg.iters - start_iter} of them in this session" if resume else ""
    log(f"done: {cfg.iters} iterations{this_session}, {total / 60:.1f} min of training. "
        f"Samples: {out / 'samples'}, losses: {out / 'loss.png'}, log: {out / 'train.log'}, "
        f"checkpoint: {out / ckpt_io.CHECKPOINT_NAME}")
    return {"iteration": cfg.iters, "elapsed": total, "out": str(out)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    with one_line_warnings("warning: "):
        return _main(argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        cfg, resume, notes = parse_config(argv)
        if resume and resume["iteration"] >= cfg.iters:
            print(f"the checkpoint is at iteration {resume['iteration']}, at or past --iters "
                  f"{cfg.iters}; pass a larger --iters to train further")
            return 0
        args = list(sys.argv[1:] if argv is None else argv)
        train(cfg, resume, notes=notes, command=shlex.join(["python", "-m", "fastwgan.train", *args]))
    except (ConfigError, DataError, ckpt_io.CheckpointError, runfolder.RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stop as e:
        print(("error: " if e.code == 1 else "") + str(e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt as e:
        print("interrupted; the last checkpoint written (if any) is kept", file=sys.stderr)
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
