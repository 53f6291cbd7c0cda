"""Where a run computes: the device a ``--device`` name resolves to, the precision ``--amp`` gives
there, and torch's CPU threads. The one place that turns these flags into torch objects, for the
trainer, ``sample``, ``eval`` and the self-check alike."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import os
import time

import torch

from fastwgan.config import ConfigError


class DeviceError(ConfigError):
    """A device that was asked for and is not here; the command lines print it as one line (a
    ConfigError: exit status 2)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is a device, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} was asked for, but no CUDA device is available "
                          f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """The device for a log line: the GPU's name on CUDA."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


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


def amp_dtype(cfg, device: torch.device, log: Callable[[str], None]) -> Optional[torch.dtype]:
    """bf16 where ``cfg.amp`` (``--amp``) asks for it and the device computes it well; None (fp32)
    otherwise, with a warning logged when ``--amp`` was asked for and cannot be honoured."""
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


def _cpu_times(stat: str) -> tuple[int, int]:
    """(idle, total) jiffies of all cores from the first line of /proc/stat (idle + iowait)."""
    with open(stat, encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values[3] + values[4], sum(values)


def idle_cores(interval: float = 0.25, stat: str = "/proc/stat") -> Optional[float]:
    """How many cores sat idle over the next ``interval`` seconds (Linux's CPU time counters), or
    None where the system does not say."""
    try:
        idle0, total0 = _cpu_times(stat)
        time.sleep(interval)
        idle1, total1 = _cpu_times(stat)
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def threads_for_load(requested: int, idle: Callable[[], Optional[float]] = idle_cores
                     ) -> tuple[int, Optional[str]]:
    """Set torch's CPU threads for a run; the count and a note for the log when it was chosen.

    ``--threads N`` or ``OMP_NUM_THREADS`` decide where given. Otherwise torch's default (one per
    core) stays on a quiet machine, and on a busy one the run takes as many threads as cores were
    idle at its start (at least 1): OpenMP threads that outnumber the free cores spin waiting for
    each other, and a 2-core machine with one core busy ran the cpu preset at 90-127 img/s with 2
    threads, 956-1,022 with 1 (bench/RESULTS.md, "A busy CPU")."""
    if requested or "OMP_NUM_THREADS" in os.environ:
        return set_threads(requested), None
    default = torch.get_num_threads()
    free = idle()
    if free is None or default <= 1 or free >= default - 0.5:
        return default, None
    chosen = max(1, int(free + 0.5))
    torch.set_num_threads(chosen)
    return chosen, (f"note: {default - free:.1f} of {default} cores were busy at the start: "
                    f"training with {chosen} CPU thread{'s' if chosen > 1 else ''} (--threads or "
                    "OMP_NUM_THREADS chooses)")
