"""Several processes: who this process is, and the few collectives training needs.

Everything fastwgan knows about torch.distributed lives here (the BatchNorm kernel's two
collectives, in kernels/bn_act.py, take a process group from the caller).

Several processes (engine level)
    ``torchrun`` starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK and the
    rendezvous variables; ``init_from_env`` turns them into a ``World`` and joins the process
    group (NCCL on CUDA, gloo on a CPU). Without those variables it returns the world of one
    process, with no process group, so ``python -m fastwgan.train`` is unchanged.

    * ``--batch-size`` is the global batch: each rank takes ``split_batch(batch, world_size)``
      images per step, so a critic step at any world size averages the gradient of as many
      images as one process does.
    * Both networks' weights are the same on every rank at all times: the initial weights are
      broadcast from rank 0 (``broadcast_``), every rank applies the same averaged gradient, and
      ``check_in_sync`` compares a bitwise checksum of the parameters across ranks (at log
      intervals: it is a host sync).
    * The reference engine wraps G and D in torch's DistributedDataParallel; the fast engine has
      no wrapper: each optimizer averages its one flat gradient buffer with one all-reduce
      (``all_reduce_mean_``) between backward and its update.
    * BatchNorm normalises each rank's share of the batch by default (DDP's behaviour);
      sync-bn normalises over the global batch: one collective per BatchNorm layer in the
      forward and one in the backward.
    * Every rank draws its own z and noise: ``seed_device_rng(seed, rank)`` after the models
      are built (rank 0 keeps ``seed`` itself, so rank 0's stream is the single process's).
    * Only ``is_writer`` (rank 0) writes files.

Several processes (the trainer)
    * Host-side agreement (``StopVote``: a stop signal seen by some rank, voted on about every
      0.1 s without waiting; ``any_rank``: a decision taken once) and small objects
      (``gather_to_writer``: every rank's RNG state for the checkpoint) go through ``control``, a
      gloo group on the host: no device synchronisation, no NCCL object collectives.
    * The loss sums are averaged at log time only (``mean_over_ranks``).
    * Work that fills a cache on the machine (the built-in faces, the decoded dataset) is done by
      each machine's first process while the others wait (``machine_leader_first``).
    * A checkpoint is resumed exactly with the world size that wrote it (each rank gets its own
      RNG state back); with another world size every rank continues from rank 0's state, or from
      ``resume_seed`` where the checkpoint has none for it: not bit for bit, and the trainer says
      so.

Collectives block until every rank joins them or the process group's timeout passes
(``init_from_env(timeout=...)``), so a rank that died stops the others with an error instead
of a hang (gloo notices a closed connection at once, a silent rank after the timeout; NCCL's
watchdog aborts the process after the timeout). ``lost_peer`` recognises those errors.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from fastwgan.data.share import BatchShare

DEFAULT_TIMEOUT = timedelta(minutes=10)
# how long the other processes of a machine wait for its first one to generate or decode the data
LEADER_WAIT = timedelta(hours=2)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RESTART_VAR = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: 0, then 1, 2, ... after failures
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None          # "nccl" or "gloo"; None without a process group
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # the gloo group for host-side agreement and small objects (None: the default group)
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def distributed(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the run folder (config, metrics, samples, logs, checkpoints)."""
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            return "1 process"
        return f"{self.world_size} processes ({self.backend}), rank {self.rank}"


SINGLE = World()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(rank: int, world_size: int, device: torch.device | str, init_method: str = "env://",
         local_rank: int = 0, backend: Optional[str] = None,
         timeout: timedelta = DEFAULT_TIMEOUT) -> World:
    """Join the process group (``init_method`` as for ``dist.init_process_group``)."""
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size == 1:
        return World(device=device)
    backend = backend or backend_for(device)
    kw = {"device_id": device} if backend == "nccl" else {}
    if init_method == "env://":
        # torchrun keeps its store across restarts (--max-restarts): the keys of an earlier
        # attempt would point the new processes at dead peers (gloo, torch 2.13: "connectFullMesh
        # failed ... Connection refused"), so each attempt gets keys of its own
        store, _, _ = next(dist.rendezvous(init_method, rank, world_size, timeout=timeout))
        store = dist.PrefixStore(f"fastwgan/attempt{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout, **kw)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timeout, **kw)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return World(rank, world_size, local_rank, backend, device, control)


def init_from_env(device: torch.device | str = "cpu", timeout: timedelta = DEFAULT_TIMEOUT,
                  environ: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in the environment; one process when it describes none.

    ``device`` is the kind of device ("cuda" or "cpu"); on CUDA each rank takes the GPU of its
    LOCAL_RANK."""
    if not all(v in environ for v in _TORCHRUN_VARS):
        return World(device=torch.device(device))
    rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    return init(rank, world_size, device, "env://", int(environ["LOCAL_RANK"]), timeout=timeout)


def shutdown(world: World) -> None:
    """Leave the process group (also after a failed collective: then it returns at once)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a process of several ranks, after its work and ``shutdown``, without the interpreter's
    teardown: measured with torch 2.13 and gloo on a CPU, about one clean two-rank run in four
    aborted there ("terminate called without an active exception", exit -6, after every file was
    written), which torchrun reports as a failed job. Output is flushed first; the kernel releases
    files and locks; DataLoader workers notice their parent is gone and leave."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def launched_as(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(rank, world size) as torchrun's environment describes them, before any process group:
    (0, 1) without torchrun."""
    if not all(v in environ for v in _TORCHRUN_VARS):
        return 0, 1
    return int(environ["RANK"]), int(environ["WORLD_SIZE"])


def restart_count(environ: Mapping[str, str] = os.environ) -> int:
    """How many times torchrun has restarted this job's processes (``--max-restarts``); 0 for a
    first start or without torchrun."""
    try:
        return int(environ.get(RESTART_VAR, "0"))
    except ValueError:
        return 0


# --- the batch and the random streams -----------------------------------------------------------

def split_batch(global_batch: int, world_size: int) -> int:
    """Each rank's share of ``--batch-size``; a one-line error naming the nearest valid sizes
    (``BatchSplitError``: see ``BatchShare``)."""
    return BatchShare(global_batch, 0, world_size).local


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` itself on rank 0, an independent
    stream (numpy's SeedSequence of (seed, rank)) on the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1, np.uint64)[0] >> 1)


def resume_seed(seed: int, rank: int, iteration: int) -> int:
    """A fresh seed for rank ``rank`` resuming at ``iteration`` from a checkpoint that holds no
    RNG state for it (written with fewer ranks): independent of every stream the run drew."""
    return int(np.random.SeedSequence((seed, rank, iteration, 1)).generate_state(1, np.uint64)[0] >> 1)


def seed_device_rng(seed: int, world: World) -> None:
    """Seed torch's generators (CPU and every CUDA device) for this rank: z and the device
    sampler's indices differ across ranks. Call after the models are built (their initial
    weights come from ``seed`` on every rank, then rank 0's are broadcast anyway)."""
    torch.manual_seed(rank_seed(seed, world.rank))


# --- collectives ----------------------------------------------------------------------------------

def all_reduce_mean_(flat: torch.Tensor, world: World) -> torch.Tensor:
    """Average ``flat`` over the ranks in place: one all-reduce (sum), then a scale.

    A plain call on one tensor, so it is captured in a CUDA graph with the step around it
    (NCCL supports capture). ``ReduceOp.AVG`` would save the scale but gloo lacks it; for a
    power-of-two world size the scale is exact."""
    if world.distributed:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.mul_(1.0 / world.world_size)
    return flat


def all_reduce_grads_mean_(params: Iterable[torch.Tensor], world: World) -> None:
    """Average the ``.grad`` of ``params`` over the ranks with one all-reduce on a flat copy
    (for optimizers without a flat gradient buffer: torch's Adam). Costs a gather and a scatter
    copy of the gradients; a parameter without a gradient counts as a zero one, on every rank."""
    if not world.distributed:
        return
    params = [p for p in params]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean_(flat, world)
    torch._foreach_copy_(grads, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)])


def broadcast_(tensors: Iterable[torch.Tensor], world: World, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s (the initial weights, buffers)."""
    if not world.distributed:
        return
    for t in tensors:
        dist.broadcast(t.data, src)


def broadcast_module_(module: torch.nn.Module, world: World, src: int = 0) -> None:
    """Parameters and buffers (BatchNorm's running statistics) of ``module`` from rank ``src``."""
    broadcast_(list(module.parameters()) + list(module.buffers()), world, src)


class OutOfSync(RuntimeError):
    """The ranks hold different weights: they would train different networks."""


def checksum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A bitwise checksum (2,) int64 of float32 tensors: the sum of their bits read as int32,
    and the same sum weighted by position (so that swapped values differ too). Exact integer
    arithmetic: equal on two ranks if and only if (up to hash collisions) the bits are."""
    total = None
    for t in tensors:
        bits = t.detach().reshape(-1).view(torch.int32).to(torch.int64)
        weight = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 65521 + 1
        part = torch.stack([bits.sum(), (bits * weight).sum()])
        total = part if total is None else total * 31 + part
    if total is None:
        raise ValueError("checksum of no tensors")
    return total


def check_in_sync(named: Mapping[str, Sequence[torch.Tensor]], world: World) -> None:
    """Raise ``OutOfSync`` on every rank if some rank's tensors differ from rank 0's.

    ``named`` maps a name ("critic") to its tensors (flat parameter buffers, or the parameters).
    One all-gather of 2 integers per name, and a host sync: call it at log intervals."""
    if not world.distributed:
        return
    mine = torch.stack([checksum(ts) for ts in named.values()])  # (K, 2)
    gathered = [torch.empty_like(mine) for _ in range(world.world_size)]
    dist.all_gather(gathered, mine)
    sums = torch.stack(gathered).cpu()  # host sync
    bad = [(name, r) for k, name in enumerate(named) for r in range(1, world.world_size)
           if not torch.equal(sums[r, k], sums[0, k])]
    if bad:
        where = ", ".join(f"{name} on rank {r}" for name, r in bad)
        raise OutOfSync(f"the weights differ across processes ({where} differ from rank 0's); "
                        "the ranks would train different networks, so the run stops")


# --- the trainer's agreements -----------------------------------------------------------------------

def any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` is true on some rank: one all-reduce of one integer on the host (the
    control group), so that every rank takes the same decision at the same point, e.g. to train
    on the reference engine where the kernel check failed on some rank. No device
    synchronisation, but every rank waits for the others: for a decision taken once. The
    training loop's stop signal goes through ``StopVote``."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.control)
    return bool(t.item())


STOP_VOTE_S = 0.1   # about this much training between two votes on a stop
MAX_VOTE_EVERY = 1000  # iterations


class StopVote:
    """Whether to stop after an iteration because some rank got a stop signal: every rank stops
    after the same iteration, without a collective at every iteration.

    One process: its own flag, at once. Several: at vote points, about ``period_s`` of training
    apart, each rank starts an all-reduce (MAX) of its flag on the host (the control group) and
    goes on training without waiting for it; the next vote point waits for that result, long
    since there, and if some rank had a signal every rank stops there. A signal is acted on
    within two periods (and two iterations). Rank 0 sets the pace: with each vote it proposes
    how many iterations make a period (timed with ``clock``), and every rank reads the same
    proposal in the same result, so the vote points stay the same on every rank. The last
    iteration is a vote point of its own, waited for at once (``last``): a signal there still
    stops the run, as in one process. So a run that ends, or stops, leaves no vote in flight; one
    that fails between two vote points leaves one that every rank started, or that fails with
    the rank that is gone (not waited for: the error that ends the run is already on its way).
    """

    def __init__(self, world: World, period_s: float = STOP_VOTE_S,
                 clock: Callable[[], float] = time.perf_counter):
        self.world, self.period_s, self.clock = world, period_s, clock
        self.next_vote = 0   # the iteration of the next vote point
        self.every = 1       # iterations between vote points, as rank 0 proposed
        self.work = None     # the vote in flight, and its tensor: [some flag, rank 0's pace]
        self.votes = torch.zeros(2, dtype=torch.int64)
        self.last: Optional[tuple[int, float]] = None  # (iteration, time) of the last vote point

    def __call__(self, done: int, flag: bool, last: bool = False) -> bool:
        """After iteration ``done``: whether to stop, given this rank's ``flag``."""
        if not self.world.distributed:
            return flag
        if done < self.next_vote and not last:
            return False
        if self._result():
            return True
        self._start(done, flag)
        return self._result() if last else False

    def _result(self) -> bool:
        """The vote in flight (none: no stop), and the pace it agreed on."""
        if self.work is None:
            return False
        self.work.wait()
        self.work = None
        stop, self.every = bool(self.votes[0]), max(1, int(self.votes[1]))
        return stop

    def _start(self, done: int, flag: bool) -> None:
        now = self.clock()
        self.votes = torch.tensor([int(flag), self._pace(done, now) if self.world.is_writer else 0])
        self.work = dist.all_reduce(self.votes, op=dist.ReduceOp.MAX, group=self.world.control,
                                    async_op=True)
        self.next_vote, self.last = done + self.every, (done, now)

    def _pace(self, done: int, now: float) -> int:
        """Iterations of about ``period_s``, from the time since the last vote point."""
        if self.last is None or now <= self.last[1]:
            return 1
        rate = (done - self.last[0]) / (now - self.last[1])
        return min(MAX_VOTE_EVERY, max(1, round(self.period_s * rate)))


def machine_leader_first(work: Callable[[], T], world: World,
                         wait: timedelta = LEADER_WAIT) -> T:
    """``work()`` on each machine's first process (LOCAL_RANK 0) before the others, which then
    run it themselves: for work that fills a cache on this machine (the built-in faces, the
    decoded dataset), so that one process does it and the others read what it wrote, instead of
    N processes doing it N times side by side (N times the CPU work and N temporary copies of a
    2.5 GB file on the disk at once).

    The leader joins the wait whether its work succeeds or raises, then returns or re-raises;
    the others then try for themselves, so a bad dataset gives every process its own error. The
    others wait up to ``wait`` (the first decode of a large set takes minutes, longer than
    ``--dist-timeout`` allows a collective): a gloo ``monitored_barrier``, with a timeout of its
    own, on the host."""
    if not world.distributed:
        return work()
    if world.local_rank != 0:
        dist.monitored_barrier(group=world.control, timeout=wait)
        return work()
    try:
        return work()
    finally:
        dist.monitored_barrier(group=world.control, timeout=wait)


def gather_to_writer(obj: Any, world: World) -> Optional[list]:
    """Every rank's ``obj`` (small and picklable: an RNG state) in rank order on rank 0, None on
    the others; through the control group (host memory)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size if world.is_writer else None
    dist.gather_object(obj, out, dst=0, group=world.control)
    return out


def mean_over_ranks(t: torch.Tensor, world: World) -> torch.Tensor:
    """A copy of ``t`` averaged over the ranks (the loss sums at a log point: one all-reduce)."""
    out = t.clone()
    return all_reduce_mean_(out, world)


_LOST_PEER_SIGNS = ("gloo", "nccl", "connection reset", "connection closed", "timed out",
                    "broken pipe", "watchdog")


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank died or stopped answering
    (torch's DistError; gloo's and NCCL's RuntimeErrors: a closed connection, a timeout)."""
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _LOST_PEER_SIGNS)


def lost_peer_reason(e: BaseException) -> str:
    """The backend's words for it, on one line, without its file paths and advice."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if text.startswith("[") and "] " in text:  # "[/path/gloo/pair.cc:537] Read error ..."
        text = text.split("] ", 1)[1]
    text = text.split(". This is typically", 1)[0]
    return text if len(text) <= 160 else text[:157] + "..."
