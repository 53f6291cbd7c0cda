"""Checkpoints: written atomically, loaded with clear errors, resumed exactly.

A checkpoint holds both networks, both optimizer states, the iteration, the data position, every
RNG state and the config. Written by several processes, it also holds the world size and each
rank's RNG state and loss sums (``rank_states``), so the same world size resumes exactly
(``resume_point``). It is written to a temporary file in the same folder, flushed to disk,
then renamed over the old one: a crash or a full disk mid-write never damages the last good one.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from fastwgan.atomic import atomic_write
from fastwgan.build import build_critic, build_generator
from fastwgan.config import Config
from fastwgan.losses import LOSSES
from fastwgan.models import Generator

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing or cannot be read: one line, exit code 2."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` written to ``path`` whole or not at all (fastwgan.atomic.atomic_write)."""
    return write_serialized(serialize(obj), path)


def serialize(obj: Any) -> io.BytesIO:
    """``obj`` as torch.save writes it, in memory: a snapshot that the training going on after it
    cannot change (its device tensors are copied to the host here), to be written later."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf


def write_serialized(buf: io.BytesIO, path: str | os.PathLike) -> Path:
    """``serialize``'s bytes written to ``path`` whole or not at all. Serialised first, a full disk
    fails in a plain write, an OSError naming the file, where torch.save into the file would raise
    a RuntimeError of its own."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    return atomic_write(path, write)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
         resume: bool = False) -> dict[str, Any]:
    """A checkpoint read and validated (``validate``); ``resume``: everything training needs.

    Raises CheckpointError (one line) for a missing, unreadable or damaged file."""
    p = checkpoint_path(path)
    if not p.exists():
        where = f"{path} has no {CHECKPOINT_NAME}" if Path(path).is_dir() else f"checkpoint not found: {p}"
        raise CheckpointError(where)
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty")
    try:
        # weights_only: a checkpoint is data; it never runs code when loaded
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {p} ({size:,} bytes): it is damaged, "
                              f"truncated or not a fastwgan checkpoint ({_reason(e)})") from None
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{p} is not a fastwgan checkpoint")
    validate(ckpt, p, resume)
    return ckpt


# What a checkpoint holds: the key, its type, and whether sampling and evaluation need it too
# (training needs all of them; a missing optional one is written by older versions).
FIELDS = {
    "config": (dict, True),
    "generator": (dict, True),
    "critic": (dict, False),
    "opt_g": (dict, False),
    "opt_d": (dict, False),
    "iteration": (int, False),
    "data_position": (int, False),
    "rng": (dict, False),
}
OPTIONAL = {"format": int, "elapsed": (int, float), "log_accum": dict, "world_size": int,
            "rank_states": list}


def validate(ckpt: dict[str, Any], p: Path, resume: bool = False) -> None:
    """Check keys, types and shapes against the checkpoint's own config, before anything uses it:
    a damaged file is refused in one line rather than failing halfway through a start.

    Sampling and evaluation need the config and the generator (and check whatever else is
    there); resuming (``resume``) needs every field of ``FIELDS``."""
    def fail(what: str) -> None:
        raise CheckpointError(f"{p} is damaged: {what}")

    for key, (kind, always) in FIELDS.items():
        if key not in ckpt:
            if always or resume:
                fail(f"it has no {key!r}")
            continue
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            fail(f"its {key!r} is a {type(ckpt[key]).__name__}, not a {kind.__name__}")
    for key, kind in OPTIONAL.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            fail(f"its {key!r} is a {type(ckpt[key]).__name__}")
    for key in ("iteration", "data_position"):
        if key in ckpt and ckpt[key] < 0:
            fail(f"its {key!r} is negative ({ckpt[key]})")
    try:
        cfg = Config.from_dict(ckpt["config"]).validate()
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        fail(f"its config is not valid ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    with torch.device("meta"):  # shapes only: nothing is allocated
        nets = {"generator": build_generator(cfg), "critic": build_critic(cfg)}
    for name, net in nets.items():
        if name in ckpt:
            why = _state_mismatch(ckpt[name], net.state_dict())
            if why:
                size = f"{cfg.image_size}x{cfg.image_size}"
                raise CheckpointError(f"{p}: the {name} does not match its config "
                                      f"(ngf {cfg.ngf}, ndf {cfg.ndf}, {size}): {why}")
    for opt, net in (("opt_g", "generator"), ("opt_d", "critic")):
        if opt in ckpt:
            why = _optimizer_mismatch(ckpt[opt], [q for q in nets[net].parameters()])
            if why:
                fail(f"its {opt!r} does not fit the {net}: {why}")
    if "rng" in ckpt and not _rng_complete(ckpt["rng"]):
        fail("its RNG states are incomplete")
    acc = ckpt.get("log_accum")
    n_sums = len(LOSSES[cfg.loss].sums)  # loss_d, d_real, d_fake, loss_g, then the loss's own
    if acc is not None and not (_is_sums(acc.get("sums"), n_sums) and isinstance(acc.get("critic_steps"), int)
                                and isinstance(acc.get("gen_steps"), int)):
        fail("its 'log_accum' is incomplete")
    world_size = ckpt.get("world_size", 1)
    if isinstance(world_size, bool) or world_size < 1:
        fail(f"its 'world_size' is not a positive integer ({world_size!r})")
    if "rank_states" in ckpt:
        states = ckpt["rank_states"]
        if len(states) != world_size:
            fail(f"it has {len(states)} ranks' states for a world size of {world_size}")
        if not all(isinstance(r, dict) and _rng_complete(r.get("rng")) and _is_sums(r.get("sums"), n_sums)
                   for r in states):
            fail("a rank's RNG state or loss sums are incomplete")


def _rng_complete(rng: Any) -> bool:
    return (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(rng.get("numpy"), (tuple, list)) and len(rng["numpy"]) == 5
            and isinstance(rng.get("python"), (tuple, list)))


def _is_sums(t: Any, n: int) -> bool:
    return isinstance(t, torch.Tensor) and t.shape == (n,)


def _state_mismatch(state: dict, expected: dict[str, torch.Tensor]) -> str | None:
    """Why the tensors of ``state`` differ from ``expected`` (keys, shapes, kinds), or None."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        return (f"{len(missing)} missing (first: {missing[0]})" if missing
                else f"{len(extra)} unexpected (first: {extra[0]})")
    for k, ref in expected.items():
        v = state[k]
        if not isinstance(v, torch.Tensor):
            return f"{k} is a {type(v).__name__}, not a tensor"
        if tuple(v.shape) != tuple(ref.shape):
            return f"{k} has shape {tuple(v.shape)}, the config needs {tuple(ref.shape)}"
        if v.is_floating_point() != ref.is_floating_point():
            return f"{k} is {v.dtype}, the config needs {ref.dtype}"
    return None


def _optimizer_mismatch(sd: dict, params: list[torch.Tensor]) -> str | None:
    """Why an optimizer state_dict does not fit ``params`` (torch's layout: parameters numbered in
    group order, state per number), or None."""
    groups, state = sd.get("param_groups"), sd.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        return "no param_groups or state"
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return "a param group without params"
    indices = [i for g in groups for i in g["params"]]
    if len(indices) != len(params):
        return f"{len(indices)} parameters, the network has {len(params)}"
    shapes = {i: tuple(q.shape) for i, q in zip(indices, params)}
    for i, s in state.items():
        if i not in shapes or not isinstance(s, dict):
            return f"state for an unknown parameter {i!r}"
        for name, v in s.items():
            if not isinstance(v, torch.Tensor):
                return f"{name} of parameter {i} is a {type(v).__name__}"
            if v.dim() > 0 and tuple(v.shape) != shapes[i]:
                return f"{name} of parameter {i} has shape {tuple(v.shape)}, not {shapes[i]}"
    return None


def _reason(e: Exception) -> str:
    """One line of torch.load's error: its message runs to paragraphs of advice that do not apply
    to a damaged file (such as loading it with weights_only=False)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # what the unpickler met: "Unsupported operand 194", ...
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        return f"unpickler: {detail}" if detail else "unpickler error"
    text = text.split(". ", 1)[0].strip() or type(e).__name__  # the first sentence
    return text if len(text) <= 120 else text[:117] + "..."


def _numpy_state() -> tuple:
    # as tensors and Python scalars, which a weights_only load accepts
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def rng_state(device: Optional[torch.device] = None) -> dict[str, Any]:
    """Every RNG state of this process. ``device``: a rank's own CUDA device, whose generator
    alone is saved (a rank never touches the other GPUs); without it, every initialised device's."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device)]
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: Optional[torch.device] = None) -> None:
    """``rng_state``'s states restored. ``device``: a rank's own CUDA device, set from the saved
    state of the device of its index (of the last one saved where there are fewer)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        if device is not None and device.type == "cuda":
            saved = state["cuda"]
            torch.cuda.set_rng_state(saved[min(device.index or 0, len(saved) - 1)], device)
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def rank_entries(rngs: list[dict], sums: list[torch.Tensor]) -> dict[str, Any]:
    """The checkpoint fields of a run of ``len(rngs)`` ranks: rank 0's RNG state as ``rng`` (what
    one process resumes), and with several ranks every rank's RNG state and loss sums."""
    entries: dict[str, Any] = {"world_size": len(rngs), "rng": rngs[0]}
    if len(rngs) > 1:
        entries["rank_states"] = [{"rng": r, "sums": s} for r, s in zip(rngs, sums)]
    return entries


def resume_point(ckpt: dict[str, Any], rank: int, world_size: int) -> tuple[Optional[dict], Optional[torch.Tensor], bool]:
    """Rank ``rank``'s (RNG state, loss sums, exact) to resume ``ckpt`` with ``world_size`` ranks.

    The world size that wrote it: each rank's own RNG state and sums, exact. Another one: rank 0's
    RNG state for rank 0 and for the ranks the checkpoint has a state for, None for the others
    (the caller seeds them afresh), and the mean of the ranks' sums (what the next metrics row
    averages): the run continues, not bit for bit."""
    saved = ckpt.get("world_size", 1)
    acc = ckpt.get("log_accum")
    mean_sums = acc["sums"] if acc is not None else None
    states = ckpt.get("rank_states")
    if saved == world_size:
        if states is None:
            return ckpt["rng"], mean_sums, True
        return states[rank]["rng"], states[rank]["sums"], True
    if rank == 0:
        return ckpt["rng"], mean_sums, False
    if states is not None and rank < len(states):
        return states[rank]["rng"], mean_sums, False
    return None, mean_sums, False


class LoadedGenerator(NamedTuple):
    """What ``load_generator`` gives: the network and where it comes from."""
    generator: Generator  # in eval mode, on the device asked for
    config: Config  # the run's config, as the checkpoint holds it
    iteration: Optional[int]  # the iterations trained (None: a checkpoint that does not say)
    path: Path  # the checkpoint file read


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The generator of a checkpoint (or run directory), built as the run built it
    (fastwgan.build), in eval mode on ``device``, with its config, iteration and file.

    Raises CheckpointError (one line) for a checkpoint that cannot give one."""
    ckpt = load(path)  # validated: the weights fit the config
    file = checkpoint_path(path)
    cfg = Config.from_dict(ckpt["config"])
    G = build_generator(cfg)
    try:
        G.load_state_dict(ckpt["generator"])
    except RuntimeError as e:
        raise CheckpointError(f"{file}: the generator does not match its config: "
                              f"{str(e).splitlines()[0]}") from None
    iteration = ckpt.get("iteration")
    return LoadedGenerator(G.to(device).eval(), cfg, None if iteration is None else int(iteration), file)
