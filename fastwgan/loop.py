"""The training loop: generator iterations (``engine.iteration``), and the work done every N of
them, as one list of ``Interval``s (log point, samples, histograms, checkpoint), in the spirit
of StyleGAN2-ADA's phases. Losses stay on the device and are read at log points only.

Time: ``img_per_s`` is the images of a log interval over its wall-clock time, everything
included; ``maint_s`` beside it is the part of that time the loop spent on periodic work
(samples, histograms, checkpoints, evaluation, and waiting for their writes), as StyleGAN2-ADA
reports its maintenance time. The slow writes themselves (PNG encoding, loss.png, the
checkpoint's fsync) run beside training on the run folder's writer thread, which the loop waits
for at a stop and at the end.

With several ranks it is the same loop; the differences are named where they happen: the loss
sums are averaged over the ranks at log points (``mean_over_ranks``), where the weights are also
compared (``check_in_sync``); a stop signal is agreed on by a vote about every 0.1 s
(``StopVote``), so every rank stops after the same iteration and writes its part of the same
checkpoint; a checkpoint gathers every rank's RNG state and sums (``gather_to_writer``). The run
folder is rank 0's (``RunFolder``).
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from fastwgan import checkpoint as ckpt_io
from fastwgan import distributed
from fastwgan.config import Config
from fastwgan.distributed import StopVote, World
from fastwgan.histograms import histogram_tensors
from fastwgan.runfolder import RunFolder, RunLog
from fastwgan.stop import Interrupted, Stop


def duration(seconds: float) -> str:
    """``12.3 s`` under a minute, ``4.5 min`` above."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


@dataclass
class StartPoint:
    """Where the loop starts: the iteration, the training time so far, and what the next metrics
    row averages over so far (this rank's loss sums, the steps they count)."""

    iteration: int = 0
    elapsed: float = 0.0
    critic_steps: int = 0
    gen_steps: int = 0


@dataclass(frozen=True)
class Interval:
    """``action(done)`` every ``every`` generator iterations (0: never), and wherever ``also``
    says so (the last iteration, a stop)."""

    every: int
    action: Callable[[int], None]
    also: Callable[[int, bool], bool] = lambda done, stop: False

    def due(self, done: int, stop: bool) -> bool:
        return (self.every > 0 and done % self.every == 0) or self.also(done, stop)


class TrainingLoop:
    """The phases (``engine.iteration``) with the ``intervals`` after each iteration."""

    def __init__(self, cfg: Config, engine, folder: RunFolder, world: World, log: RunLog,
                 start: StartPoint):
        self.cfg, self.engine, self.folder, self.world, self.log = cfg, engine, folder, world, log
        self.G, self.D = engine.G, engine.D
        self.start = start
        self.sums = engine.sums  # loss_d, d_real, d_fake (summed over critic steps), loss_g, ...
        self.n_crit, self.n_gen = start.critic_steps, start.gen_steps
        self.last_good: Optional[int] = start.iteration if start.iteration else None
        self.images_since_log = 0
        self.maint_since_log = self.maint_total = 0.0  # periodic work, seconds
        self.stop_signal: list[int] = []
        self.stop_vote = StopVote(world)
        self.histogram_note = False  # said once: gradients left out of the histograms
        self.intervals = self.make_intervals()

    def make_intervals(self) -> list[Interval]:
        """What happens every N iterations, in this order. A log point is also where an
        evaluation falls (its SWD goes into that metrics row); every interval fires at the
        last iteration, and a checkpoint at a stop. The time of every interval but the log point
        is periodic work (``maint_s``)."""
        cfg = self.cfg
        last = lambda done, stop: done == cfg.iters  # noqa: E731
        return [
            Interval(cfg.log_every, self.log_point,
                     also=lambda done, stop: last(done, stop) or self.evaluation_due(done)),
            Interval(cfg.sample_every, lambda done: self.folder.samples(self.G, done), also=last),
            Interval(cfg.tb_histograms if cfg.tensorboard else 0, self.histograms),
            Interval(cfg.ckpt_every, self.checkpoint,
                     also=lambda done, stop: last(done, stop) or stop),
        ]

    def histograms(self, done: int) -> None:
        """--tb-histograms: every weight, and the gradients that may be read between replays
        (fastwgan.histograms); the ones left out are named once."""
        tensors, left_out = histogram_tensors(self.engine)
        if left_out and not self.histogram_note:
            self.histogram_note = True
            self.log(f"note: --tb-histograms: no gradient histograms of {' and '.join(left_out)}: under "
                     "CUDA graphs their optimizer (torch's Adam) makes the gradients inside the graphs' "
                     "shared memory pool, where another graph may write between replays; the weights "
                     "are written (--no-graphs writes the gradients too)")
        self.folder.histograms(tensors, done)

    def evaluation_due(self, done: int) -> bool:
        cfg = self.cfg
        return cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.iters)

    # SIGINT/SIGTERM: finish the iteration, write a checkpoint, stop. A second signal stops at once.
    def _on_signal(self, signum, _frame):
        if self.stop_signal:
            raise Interrupted(signum)
        self.stop_signal.append(signum)

    def run(self) -> dict:
        start_iter = self.start.iteration
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.begin(self.cfg.progress)
        try:
            self.iterate(start_iter)
            return self.finish(start_iter)
        finally:
            self.bar.close()
            try:
                # a run that fails: the writes handed over finish first (a second signal ends the
                # wait), while a signal is still a request, not the end of the process
                self.folder.settle()
            finally:
                for s, h in old_handlers.items():
                    signal.signal(s, h)

    def begin(self, progress: bool) -> None:
        """The clocks start; the progress bar (``progress``: where a terminal shows it)."""
        from tqdm import tqdm

        self.t_log = time.perf_counter()
        self.t_start = self.t_log - self.start.elapsed
        self.t_session = self.t_log
        # the bar only where a terminal shows it; logs (non-tty) get a line every --log-every instead
        self.show_bar = progress and sys.stderr.isatty() and self.world.is_writer
        self.bar = tqdm(total=self.cfg.iters, initial=self.start.iteration, desc="train", unit="it",
                        dynamic_ncols=True, disable=not self.show_bar, smoothing=0.05)

    def count(self, n_critic: int) -> None:
        """One generator iteration of ``n_critic`` critic steps done."""
        self.n_crit += n_critic
        self.n_gen += 1
        self.images_since_log += n_critic * self.cfg.batch_size  # the global batch: every rank
        self.bar.update(1)

    def iterate(self, start_iter: int) -> None:
        """Generator iterations from ``start_iter`` to ``--iters``, each followed by its intervals."""
        cfg, engine = self.cfg, self.engine
        described = engine.describe()
        for it in range(start_iter, cfg.iters):
            n_critic = cfg.n_critic_at(it)
            engine.iteration(n_critic)
            if it == start_iter and engine.describe() != described:  # e.g. a capture that failed
                self.log(f"engine: {engine.describe()}")
            self.count(n_critic)
            self.after_iteration(it + 1)

    def after_iteration(self, done: int) -> None:
        """The intervals due after iteration ``done``; then the stop, when a signal asked for one."""
        log_point, *rest = self.intervals
        if log_point.due(done, False):
            log_point.action(done)
        stop = self.stop_vote(done, bool(self.stop_signal), last=done == self.cfg.iters)
        for interval in rest:
            if interval.due(done, stop):
                self.timed(interval.action, done)
        if stop:
            self.timed(self.folder.wait)  # the checkpoint is on disk before the run says so
            signum = self.stop_signal[0] if self.stop_signal else signal.SIGTERM
            name = signal.Signals(signum).name
            how = "" if self.stop_signal else " (by another process of the run)"
            raise Stop(f"{name}{how}: stopped at iteration {done}; checkpoint written. "
                       f"Continue with python -m fastwgan.train --resume {self.cfg.out}", 128 + signum)

    def timed(self, work: Callable[..., None], *args) -> None:
        """``work(*args)``, its time counted as periodic work (``maint_s``)."""
        t = time.perf_counter()
        try:
            work(*args)
        finally:
            spent = time.perf_counter() - t
            self.maint_since_log += spent
            self.maint_total += spent

    def finish(self, start_iter: int) -> dict:
        """The writes still under way waited for; the "done:" line with the wall-clock time, split
        into training and periodic work (this session's, for a resumed run)."""
        cfg = self.cfg
        self.timed(self.folder.wait)
        now = time.perf_counter()
        total, session = now - self.t_start, now - self.t_session
        out = Path(cfg.out)
        split = (f"{duration(session - self.maint_total)} of training and "
                 f"{duration(self.maint_total)} of periodic work (samples, checkpoints"
                 f"{', evaluation' if cfg.eval_every else ''})")
        when = (f"{cfg.iters - start_iter} of them in this session, {duration(total)} in all; "
                f"this session: {split}" if start_iter else f"{duration(total)}: {split}")
        self.log(f"done: {cfg.iters} iterations, {when}. "
                 f"Samples: {out / 'samples'}, losses: {out / 'loss.png'}, log: {out / 'train.log'}, "
                 f"checkpoint: {out / ckpt_io.CHECKPOINT_NAME}")
        return {"iteration": cfg.iters, "elapsed": total, "out": str(out)}

    def log_point(self, done: int) -> None:
        """A metrics row: the losses since the last one, averaged over the ranks (a host sync),
        with an evaluation where one is due."""
        s = distributed.mean_over_ranks(self.sums, self.world).tolist()  # host sync
        if not all(math.isfinite(v) for v in s):
            self.raise_nonfinite(done)
        try:
            distributed.check_in_sync(self.engine.parameter_sets(), self.world)
        except distributed.OutOfSync as e:
            raise Stop(f"{e} (at iteration {done})", 1) from None
        now = time.perf_counter()
        ips = self.images_since_log / max(now - self.t_log, 1e-9)  # wall clock, everything included
        row = self.metrics_row(done, s, now, ips)
        self.sums.zero_()
        self.n_crit = self.n_gen = self.images_since_log = 0
        self.maint_since_log, self.t_log = 0.0, now  # the next interval starts here
        evaluate = self.evaluation_due(done)
        if evaluate:  # in this row, its time in the next one's maint_s
            self.timed(lambda: row.update(self.folder.evaluate(self.G)))
        self.folder.metrics_row(row)
        self.show_progress(done, row, ips, evaluate)

    def metrics_row(self, done: int, s: list[float], now: float, ips: float) -> dict:
        """metrics.jsonl's row from the loss sums read back (``s``: the loss's ``sums`` order)."""
        loss, n_crit, n_gen = self.engine.loss, self.n_crit, self.n_gen
        return {
            "iter": done, "time": round(now - self.t_start, 3),
            "wdist": (s[1] - s[2]) / n_crit if loss.wasserstein else None,
            "loss_d": s[0] / n_crit, "loss_g": s[3] / n_gen,
            "d_real": s[1] / n_crit, "d_fake": s[2] / n_crit,
            **loss.extra_means(s, n_crit),  # e.g. wgan-gp: gp, grad_norm
            "critic_steps": n_crit, "img_per_s": round(ips, 1),
            "maint_s": round(self.maint_since_log, 3),  # of the time img_per_s counts
        }

    def show_progress(self, done: int, row: dict, ips: float, evaluate: bool) -> None:
        cfg = self.cfg
        w = f"W {row['wdist']:.4g}  " if row["wdist"] is not None else ""
        w += self.engine.loss.progress(row)
        if "swd" in row:
            w += f"SWD {row['swd']:.1f}  "
        if "fid" in row:
            w += f"FID {row['fid']:.2f}  KID {row['kid'] * 1e3:.2f}e-3  "
        self.bar.set_postfix_str(f"{w}{ips:,.0f} img/s")
        maint = f" ({row['maint_s']:.2f} s of periodic work)" if row["maint_s"] else ""
        line = (f"iter {done}/{cfg.iters}  {w}loss_D {row['loss_d']:.4g}  "
                f"loss_G {row['loss_g']:.4g}  {ips:,.0f} img/s{maint}")
        on_screen = not self.show_bar or evaluate or done % (cfg.log_every * 10) == 0 or done == cfg.iters
        self.log.progress(line, on_screen, self.bar.write)

    def checkpoint(self, iteration: int) -> None:
        """Every rank's part (its RNG state and loss sums) gathered to rank 0, which writes."""
        G, D, engine = self.G, self.D, self.engine
        # one host sync: a checkpoint is only written from finite weights
        finite = torch.stack([torch.isfinite(p).all() for p in [*G.parameters(), *D.parameters()]])
        if not finite.all():
            self.raise_nonfinite(iteration)
        elapsed = time.perf_counter() - self.t_start
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
        self.folder.wait()  # the last checkpoint handed to the writer is on disk (or its error raised)
        out = Path(self.cfg.out)
        kept = (f"the last good checkpoint, from iteration {self.last_good}, is kept in "
                f"{out / ckpt_io.CHECKPOINT_NAME}" if self.last_good is not None
                else "no checkpoint had been written yet")
        raise Stop(f"the loss became NaN or Inf by iteration {iteration}; stopping. {kept}. "
                   "Try a lower --lr (or no --amp), and check the data.", 1)
