"""One sweep in one process: K runs of one architecture, trained as one grouped network.

Reads top to bottom like a single run (fastwgan.run), K times where a run has one of a thing:
the plan (``plan_fresh``: the base config and the grid's members; ``plan_resume``: every member
from its own checkpoint), the data (one dataset; each member's batches in its own order), each
member's run folder and log, the members (seeded as their single runs), the grouped engine
(fastwgan.sweep.engine), each member's resume point, then ``SweepLoop``: one grouped iteration,
then each member's periodic work by its own ``TrainingLoop`` (metrics row, samples, checkpoint
in the single-run format), with the global random streams set to the member's.

A member whose losses go non-finite stops alone: its loop raises Stop at the log point where it
sees them, its folder keeps its last good checkpoint, sweep.json and the summary say so, and the
others go on.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


from fastwgan import distributed, runconfig
from fastwgan import run as single
from fastwgan.config import Config, ConfigError
from fastwgan.distributed import World
from fastwgan.engine import load_optimizer_state
from fastwgan.loop import TrainingLoop
from fastwgan.runfolder import RunFolder, RunLog, holds_run
from fastwgan.stop import Interrupted, Stop
from fastwgan.sweep.report import (SWEEP_FILE, is_sweep, plot_sweep, read_sweep, summary_rows,
                                   summary_table, write_sweep)
from fastwgan.sweep.engine import (Member, MemberRng, MemberView, SweepFastEngine,
                                   SweepReferenceEngine, restore_member_rng, seeded_member)
from fastwgan.sweep.grid import make_grid, member_configs
from fastwgan.sweep.memory import check_fits


class MemberFolder(RunFolder):
    """A member's run folder, which keeps its last metrics row for the sweep's progress line."""

    last_row: Optional[dict] = None

    def metrics_row(self, row: dict) -> None:
        super().metrics_row(row)
        self.last_row = row


class MemberLog(RunLog):
    """A member's train.log: its lines kept, none shown (the sweep shows its summary)."""

    def progress(self, line: str, on_screen: bool, show) -> None:
        self.write(line)


@dataclass
class MemberPlan:
    name: str
    values: dict
    cfg: Config
    resume: Optional[dict] = None


@dataclass
class SweepPlan:
    base: Config               # the shared settings; ``out`` is the sweep's folder
    axes: dict                 # Config field -> values
    members: list[MemberPlan]
    stopped: list[dict]        # members stopped earlier (a resumed sweep leaves them as they are)
    notes: list[str]


def plan_fresh(axes: Sequence[str], seeds: Optional[int], argv: Sequence[str],
               given: Optional[dict] = None) -> SweepPlan:
    """A new sweep: the flags (or the API's values) as one run's config, then the grid."""
    base, resume, notes = runconfig.parse_config(argv, given)
    if resume is not None:
        raise ConfigError("--sweep starts a sweep; continue one with --resume <sweep folder> alone")
    if is_sweep(base.out) and not base.overwrite:
        raise ConfigError(f"{base.out} already holds a sweep; continue it with --resume {base.out}, "
                          "or pass another --out (or --overwrite to start it again)")
    grid = make_grid(axes, seeds, base)
    members = [MemberPlan(n, v, c) for n, v, c in member_configs(grid, base)]
    for m in members:
        if holds_run(m.cfg.out) and not base.overwrite:
            raise ConfigError(f"{m.cfg.out} already holds a run; pass another --out (or --overwrite)")
    return SweepPlan(base, grid.to_dict(), members, [], notes)


def resume_target(argv: Sequence[str], given: Optional[dict] = None) -> Optional[str]:
    """The folder ``--resume`` names (on the command line or in the API's values)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--resume", default=None)
    args, _ = p.parse_known_args(list(argv))
    return args.resume or (given or {}).get("resume")


def plan_resume(argv: Sequence[str], given: Optional[dict] = None) -> SweepPlan:
    """A sweep continued: each member still training from its own checkpoint, with the flags that
    may change over a resumed run (``--iters``) applied to every member."""
    out = resume_target(argv, given)
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--resume")
    p.add_argument("--out")
    args, rest = p.parse_known_args(list(argv))
    if args.out is not None or (given or {}).get("out") is not None:
        raise ConfigError("a sweep resumes in its own folder: leave out --out")
    state = read_sweep(out)
    members, stopped, notes = [], [], []
    for m in state["members"]:
        if m["state"] == "stopped":
            stopped.append(m)
            continue
        cfg, ckpt, member_notes = runconfig.parse_config(
            rest, {**(given or {}), "resume": str(Path(out) / m["out"])})
        members.append(MemberPlan(m["name"], m["values"], cfg, ckpt))
        notes = member_notes
    if not members:
        raise ConfigError(f"every member of the sweep in {out} has stopped; nothing to resume")
    its = {m.resume["iteration"] for m in members}
    if len(its) > 1:
        raise ConfigError(f"the members' checkpoints in {out} are at different iterations "
                          f"({', '.join(map(str, sorted(its)))}); resume the members alone")
    base = dataclasses.replace(members[0].cfg, out=str(out))
    return SweepPlan(base, state["axes"], members, stopped, notes)


def train_sweep(plan: SweepPlan, log=print, command: str = "") -> dict:
    """Train every member of ``plan`` to ``iters``; returns a summary (its ``members``: the
    summary table's rows). Raises Stop at a signal (every member's checkpoint written) or when
    every member has stopped."""
    base = plan.base
    device = single.resolve_device(base.device)
    world = distributed.init_from_env(device.type)
    if world.distributed:
        distributed.shutdown(world)
        raise ConfigError("a sweep runs in one process; run it without torchrun")
    check_fits(base, len(plan.members), device)
    Path(base.out).mkdir(parents=True, exist_ok=True)
    sweep_log = RunLog(log, command)
    sweep_log.open(Path(base.out) / "train.log", append=plan.members[0].resume is not None)
    try:
        with contextlib.ExitStack() as stack:
            return SweepRun(plan, world, sweep_log, command, stack).run()
    finally:
        sweep_log.close()


class SweepRun:
    """The set-up of a sweep (data, folders, members, engine, resume points), then its loop."""

    def __init__(self, plan: SweepPlan, world: World, log: RunLog, command: str, stack):
        self.plan, self.world, self.log, self.command, self.stack = plan, world, log, command, stack
        self.device = world.device

    def run(self) -> dict:
        plan, base, log = self.plan, self.plan.base, self.log
        for note in plan.notes:
            log(note)
        log(f"sweep: {len(plan.members)} members ({', '.join(m.name for m in plan.members)}) in "
            f"{Path(base.out) / 'members'}")
        dtype, threads, share = single.prepare_process(base, self.world, log)
        dataset = single._open_files(base, log)
        sources = self.member_batches(dataset, share)
        folders, logs = self.open_folders()
        members = self.build_members(sources)
        engine = self.build_engine(members, dtype)
        loops = []
        for k, (mp, m) in enumerate(zip(plan.members, members)):
            view = MemberView(engine, k)
            start = self.restore(mp, m, view, folders[k], logs[k])
            single.log_start(mp.cfg, self.world, view, dtype, threads, sources[k], start, logs[k])
            folders[k].start(dataset, mp.resume, logs[k])
            loops.append(TrainingLoop(mp.cfg, view, folders[k], self.world, logs[k], start))
        axes = "; ".join(f"{k} {', '.join(f'{v:g}' for v in vs)}" for k, vs in plan.axes.items())
        log(f"engine: {engine.describe()}; loss {base.loss}, batch {base.batch_size} per member, "
            f"axes: {axes} (each member's settings: its train.log and config.json)")
        return SweepLoop(plan, engine, members, loops, log).run()

    def member_batches(self, dataset, share) -> list:
        """Each member's real batches in its own order; resident, one copy of the images."""
        first = None
        sources = []
        for mp in self.plan.members:
            start = mp.resume["data_position"] if mp.resume else 0
            if first is not None and first.mode == "resident":
                sources.append(first.reseeded(mp.cfg.seed, start))
                continue
            b = single._open_batches(mp.cfg, dataset, mp.cfg.data_mode, share, self.world, mp.resume,
                                     self.log if first is None else (lambda line: None))
            first = first or b
            sources.append(b)
        return sources

    def open_folders(self) -> tuple[list[RunFolder], list[RunLog]]:
        folders, logs = [], []
        for mp in self.plan.members:
            folder = MemberFolder(mp.cfg)
            self.stack.enter_context(folder.locked())
            folder.clean()
            mlog = MemberLog(lambda line: None, self.command)  # kept in the member's train.log
            self.stack.callback(mlog.close)
            self.stack.callback(folder.close)
            folder.open(mp.resume, mlog)
            folders.append(folder)
            logs.append(mlog)
        return folders, logs

    def build_members(self, batches: list) -> list[Member]:
        members = []
        for mp, b in zip(self.plan.members, batches):
            m = seeded_member(mp.cfg, mp.name, self.device)
            if mp.resume:
                m.G.load_state_dict(mp.resume["generator"])
                m.D.load_state_dict(mp.resume["critic"])
            m.source = b
            members.append(m)
        return members

    def build_engine(self, members: list[Member], dtype):
        base = self.plan.base
        backend = single.choose_backend(base, self.device, dtype, self.world)
        if backend == "reference":
            return SweepReferenceEngine(base, members, self.device, dtype, share=members[0].source.share)
        for m in members:  # the fast engine draws a resident set on the device, from each member's stream
            if getattr(m.source, "mode", None) == "resident":
                m.source = m.source.sampler(channels_last=self.device.type == "cuda")
                m.source.generator = m.gen
        return SweepFastEngine(base, members, self.device, dtype, base.graphs,
                               share=members[0].source.share if hasattr(members[0].source, "share") else None)

    def restore(self, mp: MemberPlan, m: Member, view: MemberView, folder, mlog):
        """A member's optimizer states, loss sums and streams from its checkpoint (or nothing)."""
        if mp.resume:
            load_optimizer_state(view.opt_g, mp.resume["opt_g"])
            load_optimizer_state(view.opt_d, mp.resume["opt_d"])
        with MemberRng(m, self.device):
            start = single.restore_or_seed(mp.cfg, view, mp.resume, self.world, folder, mlog)
        if mp.resume:
            restore_member_rng(m, mp.resume["rng"], self.device)
        return start


class SweepLoop:
    """Grouped iterations; after each, every active member's intervals by its own loop."""

    def __init__(self, plan: SweepPlan, engine, members: list[Member], loops: list[TrainingLoop],
                 log: RunLog):
        self.plan, self.engine, self.members, self.loops, self.log = plan, engine, members, loops, log
        self.base = plan.base
        self.stop_signal: list[int] = []
        for loop in loops:
            loop.stop_signal = self.stop_signal  # one signal stops every member

    def _on_signal(self, signum, _frame):
        if self.stop_signal:
            raise Interrupted(signum)
        self.stop_signal.append(signum)

    def run(self) -> dict:
        start = self.loops[0].start.iteration
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        for loop in self.loops:
            loop.begin(False)
        try:
            self.write_state(start)
            for it in range(start, self.base.iters):
                self.iteration(it)
            for loop, m in zip(self.loops, self.members):
                if m.active:
                    loop.finish(start)
            return self.finish()
        finally:
            for loop in self.loops:
                loop.bar.close()
                loop.folder.settle()
            for s, h in old.items():
                signal.signal(s, h)

    def iteration(self, it: int) -> None:
        n_critic = self.base.n_critic_at(it)
        self.engine.iteration(n_critic)
        done, stops = it + 1, []
        for loop, m in zip(self.loops, self.members):
            if not m.active:
                continue
            loop.count(n_critic)
            try:
                with MemberRng(m, self.engine.device):
                    loop.after_iteration(done)
            except Stop as e:
                if self.stop_signal:
                    stops.append(e)
                    continue
                self.member_stopped(m, done, str(e))
        if self.base.log_every and (done % self.base.log_every == 0 or done == self.base.iters):
            self.progress(done)
        if stops or not any(m.active for m in self.members):
            self.write_state(done)
            self.log(summary_table(self.rows()))
        if stops:
            name = signal.Signals(self.stop_signal[0]).name
            raise Stop(f"{name}: stopped at iteration {done}; every member's checkpoint written. "
                       f"Continue with python -m fastwgan.train --resume {self.base.out}", stops[0].code)
        if not any(m.active for m in self.members):
            raise Stop(f"every member of the sweep stopped by iteration {done} (non-finite losses); "
                       f"see {Path(self.base.out) / SWEEP_FILE}", 1)

    def member_stopped(self, m: Member, done: int, why: str) -> None:
        m.active, m.stopped = False, f"at iteration {done}: {why}"
        self.log(f"member {m.name} stopped {m.stopped}; the others go on")
        self.write_state(done)

    def progress(self, done: int) -> None:
        evaluated = self.base.eval_every and (done % self.base.eval_every == 0 or done == self.base.iters)
        if evaluated or done == self.base.iters:
            self.write_state(done)
            self.log(f"iteration {done}/{self.base.iters}:\n" + summary_table(self.rows(done)))
            return
        rows = [(m.name, loop.folder.last_row) for m, loop in zip(self.members, self.loops) if m.active]
        key = "wdist" if self.engine.loss.wasserstein else "loss_d"
        values = "  ".join(f"{name} {row[key]:.4g}" for name, row in rows if row is not None)
        ips = next((row["img_per_s"] for _, row in rows if row is not None), 0.0)
        self.log(f"iter {done}/{self.base.iters}  {'W' if key == 'wdist' else 'loss_D'}: {values}  "
                 f"{ips:,.0f} img/s per member")

    def state_members(self, done: int = 0) -> list[dict]:
        """Each member's entry in sweep.json: training, done (at ``--iters``) or stopped."""
        out, finished = Path(self.base.out), done == self.base.iters
        rows = [{"name": m.name, "values": mp.values, "out": str(Path(mp.cfg.out).relative_to(out)),
                 "state": ("done" if finished else "training") if m.active else "stopped",
                 "stopped": m.stopped}
                for m, mp in zip(self.members, self.plan.members)]
        return rows + self.plan.stopped

    def rows(self, done: int = 0) -> list[dict]:
        return summary_rows(self.state_members(done), self.base.out)

    def write_state(self, done: int) -> None:
        base = {k: v for k, v in self.base.to_dict().items() if k not in self.plan.axes}
        write_sweep(self.base.out, self.plan.axes, base, self.state_members(done), done)

    def finish(self) -> dict:
        done = self.base.iters
        self.write_state(done)
        members = self.state_members(done)
        rows = summary_rows(members, self.base.out)
        plot = plot_sweep(members, self.base.out,
                                 title=f"{self.base.loss}, {len(members)} members")
        self.log(f"done: {done} iterations, {len(members)} members. Summary: "
                 f"{Path(self.base.out) / SWEEP_FILE}" + (f", curves: {plot}" if plot else ""))
        return {"iteration": done, "out": self.base.out, "members": rows}
