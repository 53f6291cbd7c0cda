"""Checkpoints: written atomically, loaded with clear errors, resumed exactly.

A checkpoint holds both networks, both optimizer states, the iteration, the data position, every
RNG state and the config. It is written to a temporary file in the same folder, flushed to disk,
then renamed over the old one: a crash or a full disk mid-write never damages the last good one.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwgan.config import Config
from fastwgan.models import Generator
from fastwgan.runfolder import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing or cannot be read: one line, exit code 2."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` written to ``path`` whole or not at all (fastwgan.runfolder.atomic_write).

    Serialised in memory first: a full disk then fails in a plain write, an OSError naming the
    file, where torch.save into the file would raise a RuntimeError of its own."""
    buf = io.BytesIO()
    torch.save(obj, buf)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    return atomic_write(path, write)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
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
    return ckpt


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


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, Config]:
    """The generator of a checkpoint (or run directory), in eval mode, and its config."""
    ckpt = load(path)
    cfg = Config.from_dict(ckpt["config"])
    G = Generator(cfg.image_size, cfg.nz, cfg.ngf, extra_layers=cfg.extra_layers)
    G.load_state_dict(ckpt["generator"])
    return G.to(device).eval(), cfg
