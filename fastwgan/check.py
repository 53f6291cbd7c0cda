"""Does the fast path work on this machine? ``python -m fastwgan.check`` (or ``fastwgan-check``).

Run it first on a new GPU machine. It prints the environment (torch, Triton, the CUDA driver and
runtime, the GPU, a C compiler and Python's headers for Triton's launcher, DALI and whether its
CUDA version fits the driver), then one line per check, PASS, FAIL or SKIP (with why) and its time,
in this order (the import first; then the engines, which compile the kernels the trainer launches,
so that a run cut short by a time limit on a fresh machine has checked those):

* ``import fastwgan.kernels``;
* a CUDA-graph capture and replay of the fast engine's iteration against the same engine eager;
* a short fast-vs-reference run in fp32 (TF32 off), compared after every critic and generator step;
* a sweep's grouped network of two members on the fast engine (its kernels at the K-wide shapes,
  its CUDA graphs) against the two members' single runs;
* each fused kernel against its plain-PyTorch twin, at the shapes the trainer launches (the
  64x64 DCGAN at batch 64, channels_last; fp32 and bf16; ``--full`` adds NCHW): RMSprop + clip
  over the critic's and the generator's flat parameter buffers, BatchNorm + activation forward
  and backward for every block (the gradients without the elements tied at the activation's
  threshold, counted on the line: ``fastwgan.parity.untie``);
* NVIDIA DALI's decoder against Pillow on a few synthetic JPEGs (nvJPEG on a GPU, its CPU decoder
  without one).

On a CPU it runs what a CPU can: the kernels under the Triton interpreter at tiny shapes (when
Triton is installed), the fast engine with the twins against the reference, DALI's CPU decoder;
the rest is SKIP for want of a GPU. ``--bench`` adds a speed table of about 30 s (the fast engine
against the eager fp32 reference, measured in the same run); ``--json FILE`` writes everything.
Exit status 0 when nothing failed (skips are not failures), 1 when a check failed, 2 on bad flags.
In the JSON a FAIL's ``error`` is its exception's type: AssertionError where the check ran and its
results disagree, another where it could not run (import, compilation, launch).

The engine checks and the speed table run the networks the trainer builds (``fastwgan.build``)
for ``--preset`` and ``--loss`` (default: the paper's recipe on a GPU, the cpu preset on a CPU),
shortened only in how long they run (``check_config``). The trainer runs the short form of the
kernel checks (one call of each kernel, about a second) before a fast run on CUDA:
``fastwgan.parity.start_of_run_problem``.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch's import: a Ctrl-C there is one line (fastwgan.startup)
    from fastwgan.startup import quiet_interrupt

    quiet_interrupt()

import argparse
import contextlib
import ctypes
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from fastwgan.device import device_label
from fastwgan.parity import one_line

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
NO_GPU = "no CUDA device here"
class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class Result:
    name: str
    status: str      # PASS, FAIL or SKIP
    seconds: float
    detail: str = ""  # why it failed or was skipped; what it measured when it passed
    # a FAIL's exception type: AssertionError where the check ran and its results disagree, any
    # other where it could not run (an import, a compilation, a launch, the device)
    error: str = ""


def run_check(name: str, fn: Callable[[], Optional[str]]) -> Result:
    """``fn`` returns None (or a note) when it passed, raises Skip, AssertionError or anything else."""
    t0 = time.perf_counter()
    error = ""
    try:
        note = fn()
        if torch.cuda.is_initialized():  # the device work counts in the time, its errors here
            torch.cuda.synchronize()
        status, detail = PASS, note or ""
    except Skip as e:
        status, detail = SKIP, str(e)
    except Exception as e:  # noqa: BLE001 - a check that breaks is a failed check, reported
        status, detail, error = FAIL, one_line(e), type(e).__name__
    return Result(name, status, round(time.perf_counter() - t0, 3), detail, error)


# --- environment ---------------------------------------------------------------------------------

def cuda_driver_version() -> Optional[tuple[int, int]]:
    """The CUDA version the installed driver supports, as (major, minor), or None without one."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
        return v.value // 1000, (v.value % 1000) // 10
    except OSError:
        return None


def dali_cuda_major() -> Optional[int]:
    """The CUDA major version of the installed DALI build (nvidia-dali-cuda130 -> 13), or None."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-dali-cuda"):
            digits = name.rsplit("cuda", 1)[1]
            return int(digits[:-1]) if digits.isdigit() and len(digits) >= 2 else None
    return None


def dali_fits() -> tuple[bool, str]:
    """(usable, why): DALI imports, and on a GPU its CUDA major version is the driver's or older."""
    from fastwgan.data.dali import dali_available, dali_version

    if not dali_available():
        return False, "NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)"
    if not torch.cuda.is_available():
        return True, f"DALI {dali_version()} (CPU decoder)"
    major, driver = dali_cuda_major(), cuda_driver_version()
    if major is not None and driver is not None and major > driver[0]:
        return False, (f"DALI {dali_version()} is built for CUDA {major}, the driver supports CUDA "
                       f"{driver[0]}.{driver[1]}: install nvidia-dali-cuda{driver[0]}0")
    return True, f"DALI {dali_version()} (CUDA {major}, driver CUDA {driver[0]}.{driver[1]})" \
        if major and driver else f"DALI {dali_version()}"


def c_compiler() -> Optional[str]:
    """What Triton builds its launcher with: $CC, else cc, gcc or clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"]) or None
    return next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def python_headers() -> Optional[str]:
    h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return str(h) if h.exists() else None


def version_of(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as e:  # noqa: BLE001 - absent or broken: say which
        return f"not importable ({type(e).__name__})"


def environment() -> dict[str, str]:
    env = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": f"{torch.__version__} (built for CUDA {torch.version.cuda or 'no'})",
        "triton": version_of("triton"),
        "numpy": version_of("numpy"),
    }
    driver = cuda_driver_version()
    env["cuda driver"] = f"supports CUDA {driver[0]}.{driver[1]}" if driver else "none found (libcuda.so.1)"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = (f"{p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                      f"{p.total_memory / 2**30:.0f} GiB")
    else:
        env["gpu"] = NO_GPU
        env["triton interpreter"] = os.environ.get("TRITON_INTERPRET", "unset")
    env["c compiler (Triton's launcher)"] = c_compiler() or "none found: Triton cannot build its launcher"
    env["python headers"] = python_headers() or "Python.h not found: Triton cannot build its launcher"
    env["dali"] = dali_fits()[1]
    env["tqdm"], env["matplotlib"] = version_of("tqdm"), version_of("matplotlib")
    return env


# --- the kernels against their twins ------------------------------------------------------------

def interpreter_problem() -> Optional[str]:
    """Why the Triton kernels cannot run on CPU tensors here, or None when the interpreter can."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton), so its interpreter cannot run"
    import numpy as np

    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        return f"numpy {np.__version__}: the Triton interpreter needs numpy < 2.4"
    from fastwgan.kernels.rmsprop_clip import triton_unavailable_reason

    bn_mod = importlib.import_module("fastwgan.kernels.bn_act")

    reason = triton_unavailable_reason(torch.device("cpu"))
    if reason is None and not bn_mod._INTERPRET:
        reason = "TRITON_INTERPRET=1 was set after the kernels were imported"
    return reason


def kernels_can_run(device: torch.device) -> None:
    """Raise Skip when the Triton kernels cannot run on ``device``'s tensors."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ImportError("Triton is not installed: the fast engine cannot run")
        return
    problem = interpreter_problem()
    if problem:
        raise Skip(problem)


def kernel_check(device: torch.device, case: Callable, *args) -> Optional[str]:
    """``case`` where the kernels can run; its note (the ties a BatchNorm case left out)."""
    kernels_can_run(device)
    return case(*args)


def _layout_name(layout) -> str:
    return "channels_last" if layout == torch.channels_last else "NCHW"


def kernel_checks(device: torch.device, full: bool, cfg=None) -> Iterator[tuple[str, Callable]]:
    """(name, check) of every kernel check for ``device``: the shapes a run of ``cfg`` launches
    on CUDA (default: ``trainer_config``), tiny ones under the interpreter."""
    from fastwgan.parity import CPU_RMSPROP_SIZES, rmsprop_case

    cfg = cfg or trainer_config(device)
    cuda = device.type == "cuda"
    if cuda:
        from fastwgan.build import build_networks
        from fastwgan.optim import ALIGN

        def flat_size(net):  # the optimizer's flat buffer: each parameter padded to ALIGN
            return sum(-(-p.numel() // ALIGN) * ALIGN for p in net.parameters())

        with torch.device("meta"):
            G, D = build_networks(cfg)
            sizes = {"critic": flat_size(D), "generator": flat_size(G)}
    else:
        sizes = CPU_RMSPROP_SIZES
    for net, clip in (("critic", 0.01), ("generator", None)):
        n = sizes[net]
        yield (f"kernel rmsprop_clip {net} ({n:,} fp32, clip {clip})",
               lambda n=n, clip=clip: kernel_check(device, rmsprop_case, n, clip, device))
    yield from bn_kernel_checks(device, full, cfg)


def bn_kernel_checks(device: torch.device, full: bool, cfg) -> Iterator[tuple[str, Callable]]:
    """The BatchNorm + activation kernel at every (shape, activation, mode) a run of ``cfg``
    launches, fp32 and bf16, on CUDA; under the interpreter, tiny shapes in fp32."""
    from fastwgan.parity import CPU_BN_SHAPE, dtype_name, bn_case, bn_launches

    cuda = device.type == "cuda"
    if cuda:
        dtypes = (torch.float32, torch.bfloat16)
        layouts = (torch.channels_last, torch.contiguous_format) if full else (torch.channels_last,)
        cases = [(s, d, lay, a, t) for d in dtypes for lay in layouts for s, a, t in bn_launches(cfg)]
    else:  # the interpreter: fp32 (FACTS.md), both layouts, each activation the trainer uses
        def compiled():
            raise Skip(f"{NO_GPU}: the compiled kernels, at the trainer's shapes, in fp32 and bf16, "
                       "are checked on a GPU")

        yield "kernels compiled for the GPU at the trainer's shapes", compiled
        cases = [(CPU_BN_SHAPE, torch.float32, torch.channels_last, "relu", True),
                 (CPU_BN_SHAPE, torch.float32, torch.contiguous_format, "leaky_relu", True),
                 (CPU_BN_SHAPE, torch.float32, torch.channels_last, "relu", False)]
    for shape, dtype, layout, act, training in cases:
        name = (f"kernel bn_act {'x'.join(map(str, shape))} {dtype_name(dtype)} {_layout_name(layout)} "
                f"{act} {'train' if training else 'eval'}")
        yield name, lambda c=(shape, dtype, layout, act, training): kernel_check(
            device, bn_case, *c, device)


# --- the engines ---------------------------------------------------------------------------------

@contextlib.contextmanager
def backend_flags(**flags):
    """Set torch.backends flags (cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
    cudnn.benchmark) for a block, and put them back."""
    where = {"deterministic": torch.backends.cudnn, "benchmark": torch.backends.cudnn,
             "allow_tf32": torch.backends.cudnn, "matmul_allow_tf32": torch.backends.cuda.matmul}
    saved = {k: getattr(where[k], k.replace("matmul_", "")) for k in where}
    try:
        for k, v in flags.items():
            setattr(where[k], k.replace("matmul_", ""), v)
        yield
    finally:
        for k, v in saved.items():
            setattr(where[k], k.replace("matmul_", ""), v)


def trainer_config(device: torch.device, preset: Optional[str] = None, loss: Optional[str] = None):
    """The config the trainer resolves from ``--preset`` and ``--loss`` (nothing else given).
    Without a preset: the paper's recipe on a GPU, ``--preset cpu`` on a CPU (what each trains
    there)."""
    from fastwgan.runconfig import preset_config

    if preset is None and device.type != "cuda":
        preset = "cpu"
    return preset_config(preset, loss)


def check_config(cfg, cuda: bool):
    """``cfg`` for the engine checks: its networks, loss, optimizer and precision as they are;
    only how long the checks run shortened. On CUDA the batch is the run's and a warm-up phase
    is 7 critic steps (a phase is replayed from the step graphs); on a CPU a batch of 4, 2
    critic steps (3 in a phase) and lr 1e-3, which moves the weights far enough in a few steps
    for the comparison to see a difference."""
    import dataclasses

    if cuda:
        short = dict(n_critic_warmup=7 if cfg.warmup_phases else cfg.n_critic_warmup)
    else:
        short = dict(batch_size=4, n_critic=2, lr=1e-3,
                     n_critic_warmup=3 if cfg.warmup_phases else 2)
    return dataclasses.replace(cfg, **short)


def check_graphs(device: torch.device, cfg=None) -> str:
    """The fast engine with CUDA graphs against the same engine eager, on the networks of ``cfg``
    (default: ``trainer_config``): warm-up, capture, replays of the iteration graph and of the
    step graphs (a warm-up phase, where the loss has them), the same random draws."""
    if device.type != "cuda":
        raise Skip(f"{NO_GPU}: CUDA graphs need one")
    from fastwgan.build import build_engine
    from fastwgan.data.sampler import ResidentSampler
    from fastwgan.parity import assert_same_state, engine_pair

    cfg = check_config(cfg or trainer_config(device), cuda=True)
    (G, D), (G2, D2) = engine_pair(cfg, device)
    size = cfg.image_size
    data = torch.randint(0, 256, (4 * cfg.batch_size, size, size, 3), dtype=torch.uint8, device=device)
    eager, graph = (build_engine(cfg, g, d, ResidentSampler(data, cfg.batch_size), device, None,
                                 backend="fast", graphs=graphs)
                    for g, d, graphs in ((G, D, False), (G2, D2, True)))
    with backend_flags(deterministic=True):
        for it in [0, 30, 31, 500]:  # eager warm-up and capture, iteration replays, a phase
            torch.cuda.manual_seed(it)
            eager.iteration(cfg.n_critic_at(it))
            torch.cuda.manual_seed(it)
            graph.iteration(cfg.n_critic_at(it))
        torch.cuda.synchronize()
    assert graph.capture_error is None, f"capture failed: {graph.capture_error}"
    expected = {"iteration"} | ({"critic", "generator"} if cfg.warmup_phases else set())
    assert graph.use_graphs and set(graph.graphs) == expected, set(graph.graphs)
    assert_same_state(eager.D, graph.D, rtol=1e-5, atol=2e-7)
    assert_same_state(eager.G, graph.G, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph.sums, eager.sums, rtol=1e-4, atol=1e-5)
    return f"graphs {sorted(graph.graphs)}"


def check_fast_vs_reference(device: torch.device, cfg=None) -> str:
    """A few iterations of both engines in fp32 from the same weights, batches and z, on the
    networks of ``cfg`` (default: ``trainer_config``), compared after every critic and generator
    step (the losses) and at the end (the weights). On CUDA the fast engine runs the Triton
    kernels (TF32 off: fp32 means fp32); on a CPU the twins."""
    from fastwgan.build import build_engine
    from fastwgan.parity import FixedBatches, assert_same_state, engine_pair, fixed_batches

    cuda = device.type == "cuda"
    cfg = check_config(cfg or trainer_config(device), cuda)
    (G, D), (G2, D2) = engine_pair(cfg, device)
    data = fixed_batches(cfg, 4, device)
    ref = build_engine(cfg, G, D, FixedBatches(data), device, None, backend="reference")
    fast = build_engine(cfg, G2, D2, FixedBatches(data), device, None, backend="fast", graphs=False)
    # fp32: 1e-6 on a CPU (the same operations through the twins, rounding order only); on CUDA
    # cuDNN in another layout and the fused BatchNorm's sums: 1e-3 relative on the losses
    tol = dict(rtol=1e-3, atol=1e-4) if cuda else dict(rtol=1e-6, atol=1e-7)
    with backend_flags(allow_tf32=False, matmul_allow_tf32=False):
        steps = step_by_step(cfg, ref, fast, iterations=3, tol=tol)
    if cuda:
        weights_within_step_bound(cfg, ref, fast, steps)
    else:
        assert_same_state(ref.G, fast.G, **tol)
        assert_same_state(ref.D, fast.D, **tol)
    return f"{steps} steps, {fast.describe()}"


def check_sweep(device: torch.device, cfg=None) -> str:
    """Two members as one grouped network on the fast engine (kernels at the K-wide shapes, CUDA
    graphs) against their single runs (fastwgan.sweep.check)."""
    from fastwgan.sweep.check import check_grouped_engine

    import dataclasses

    cuda = device.type == "cuda"
    cfg = cfg or trainer_config(device)
    # the run's learning rate and batch: check_config's lr 1e-3 at batch 4 turns the grouped
    # convolutions' other rounding into chaos within three iterations (fastwgan.sweep.check)
    short = dataclasses.replace(check_config(cfg, cuda), lr=cfg.learning_rate, batch_size=cfg.batch_size)
    with backend_flags(allow_tf32=False, matmul_allow_tf32=False):
        return check_grouped_engine(short, device)


def step_by_step(cfg, ref, fast, iterations: int, tol: dict) -> int:
    """``iterations`` generator iterations of both engines, phase by phase from the same z,
    their losses compared after each step; the number of steps taken."""
    steps = 0
    for it in range(iterations):
        for phase in ["critic"] * cfg.n_critic_at(it) + ["generator"]:
            for engine in (ref, fast):
                engine.sums.zero_()
                torch.manual_seed(1000 + steps)  # the same z for both
                getattr(engine, phase)()
            torch.testing.assert_close(fast.sums, ref.sums, **tol,
                                       msg=lambda m: f"losses after step {steps} ({phase}): {m}")
            steps += 1
    return steps


def weights_within_step_bound(cfg, ref, fast, steps: int) -> None:
    """On CUDA a gradient within rounding of zero can take either sign: the weights may differ by
    up to the optimizer's step bound, and only a few of them by more than 1e-3 relative."""
    for a, b in [(ref.D, fast.D), (ref.G, fast.G)]:
        pa = torch.cat([p.detach().flatten() for p in a.parameters()])
        pb = torch.cat([p.detach().flatten() for p in b.parameters()])
        diff = (pa - pb).abs()
        assert diff.max() <= 2 * 10 * cfg.learning_rate * steps, f"weights {diff.max():.3g} apart"
        frac = (diff > 1e-3 * pa.abs().clamp_min(1e-2)).float().mean().item()
        assert frac < 0.01, f"{frac:.1%} of the weights differ by more than 1e-3 relative"


# --- DALI ----------------------------------------------------------------------------------------

def check_dali(device: torch.device, n: int = 6) -> str:
    """DALI's decode (nvJPEG "mixed" on a GPU, its CPU decoder without) of a few synthetic
    CelebA-sized JPEGs against Pillow, per image: mean and largest difference in levels of 255
    (tests/test_dali.py's mean tolerances; the largest difference is wider here: these faces have
    sharp drawn edges, where DALI's CPU decoder (2.4.0) differs from Pillow by up to 8 levels)."""
    usable, why = dali_fits()
    if not usable:
        raise Skip(why)
    import numpy as np

    from fastwgan.data.dali import decode_dali
    from fastwgan.data.files import load_image
    from fastwgan.data.synthetic import JPEG_QUALITY, render_face

    tol_mean, tol_max = (1.5, 16) if device.type == "cuda" else (1.0, 12)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):
            files.append(Path(tmp) / f"{i}.jpg")
            render_face(0, i).save(files[-1], quality=JPEG_QUALITY)
        decoded = decode_dali(files, 64, 108, device, workers=1).cpu().numpy().astype(np.int32)
        worst_mean = worst_max = 0.0
        for f, got in zip(files, decoded):
            d = np.abs(got - load_image(f, 64, 108).astype(np.int32))
            worst_mean, worst_max = max(worst_mean, float(d.mean())), max(worst_max, int(d.max()))
    assert worst_mean < tol_mean and worst_max <= tol_max, (
        f"DALI vs Pillow: mean difference up to {worst_mean:.2f}, max {worst_max} (tolerance "
        f"{tol_mean}, {tol_max})")
    where = "nvJPEG" if device.type == "cuda" else "CPU decoder"
    return f"{why}; {where}: mean |DALI - Pillow| <= {worst_mean:.2f}, max {worst_max} of 255"


# --- the speed table -----------------------------------------------------------------------------

def bench(device: torch.device, seconds_per_row: float = 7.0, cfg=None) -> list[dict]:
    """Generator iterations per second of the eager fp32 reference and of the fast engine (with
    CUDA graphs, fp32 and bf16, on a GPU; eager with the twins on a CPU), same run, on the
    networks, batch and n_critic of ``cfg`` (default: ``trainer_config``: the paper's on a GPU,
    the cpu preset's on a CPU), on random resident images, outside the warm-up phases."""
    from fastwgan.build import build_engine, build_networks
    from fastwgan.data.sampler import ResidentSampler

    cuda = device.type == "cuda"
    cfg = cfg or trainer_config(device)
    n_critic = cfg.steady_n_critic
    data = torch.randint(0, 256, (1024, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         device=device)
    rows = [("reference", None), ("fast", None)] + ([("fast", torch.bfloat16)] if cuda else [])
    out = []
    for backend, dtype in rows:
        torch.manual_seed(0)
        G, D = build_networks(cfg, device)
        fast = backend == "fast"
        sampler = ResidentSampler(data, cfg.batch_size, device=device, channels_last=fast and cuda)
        with backend_flags(benchmark=True):
            eng = build_engine(cfg, G, D, sampler, device, dtype, backend=backend, graphs=True)
            dt = seconds_per_iteration(eng, n_critic, seconds_per_row, cuda)
        out.append({"engine": f"{eng.describe()}, {'bf16' if dtype else 'fp32'}",
                    "ms_per_iteration": dt * 1e3,
                    "gen_iters_per_s": 1 / dt, "img_per_s": n_critic * cfg.batch_size / dt})
    base = out[0]["ms_per_iteration"]
    for row in out:
        row["x_reference"] = base / row["ms_per_iteration"]
    return out


def seconds_per_iteration(eng, n_critic: int, seconds: float, cuda: bool) -> float:
    """Wall time of one generator iteration of ``eng``, after two untimed ones (compilation,
    cuDNN's choices, graph capture), over at least ``seconds``."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):
        eng.iteration(n_critic)
    sync()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            eng.iteration(n_critic)
        sync()
        iters += 5
    return (time.perf_counter() - t0) / iters


def bench_table(rows: list[dict]) -> str:
    lines = ["| engine | ms/iteration | gen it/s | img/s | x eager fp32 reference |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['ms_per_iteration']:.2f} | "
                     f"{r['gen_iters_per_s']:,.1f} | {r['img_per_s']:,.0f} | {r['x_reference']:.2f} |")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------

def all_checks(device: torch.device, full: bool, cfg=None) -> Iterator[tuple[str, Callable]]:
    """Every check, in order, for the networks and loss of ``cfg`` (default: ``trainer_config``)."""
    cfg = cfg or trainer_config(device)

    def imports():
        importlib.import_module("fastwgan.kernels")
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            raise ImportError("Triton is not installed")

    yield "import fastwgan.kernels", imports
    # the engines first: they launch the kernels the trainer launches, and on a fresh GPU machine
    # compiling those is most of the time a check takes, so a run cut short has checked them
    yield "fast engine: CUDA graph replay vs eager", lambda: check_graphs(device, cfg)
    yield "fast engine vs reference, fp32, step by step", lambda: check_fast_vs_reference(device, cfg)
    yield "sweep: grouped network of 2 members vs their single runs", lambda: check_sweep(device, cfg)
    yield from kernel_checks(device, full, cfg)
    yield "DALI decode vs Pillow", lambda: check_dali(device)


def format_result(r: Result) -> str:
    line = f"{r.status}  {r.name}  ({r.seconds:.2f} s)"
    return f"{line}: {r.detail}" if r.detail else line


def prepare_interpreter() -> None:
    """Without a GPU the kernels can run under the Triton interpreter, which must be chosen
    before Triton is first imported."""
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastwgan.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="write the environment, every result and the "
                   "speed table to FILE")
    p.add_argument("--bench", action="store_true", help="add a speed table (about 30 s): the fast "
                   "engine against the eager fp32 reference, same run")
    p.add_argument("--full", action="store_true", help="check the BatchNorm kernel in the NCHW "
                   "layout too (the trainer uses channels_last on CUDA)")
    from fastwgan.config import PRESETS
    from fastwgan.losses import LOSSES

    p.add_argument("--preset", choices=tuple(PRESETS), help="check the networks this preset trains "
                   "(default: the trainer's defaults, the paper's recipe, on a GPU; cpu on a CPU)")
    p.add_argument("--loss", choices=tuple(LOSSES), help="check the networks, optimizer and phases "
                   "of this loss (default: the preset's, else wgan)")
    return p


def describe_config(cfg) -> str:
    """What the engine checks and the speed table run: the trainer's networks of this config."""
    return (f"--loss {cfg.loss}, {cfg.image_size}x{cfg.image_size}, ngf {cfg.ngf}, ndf {cfg.ndf}, "
            f"extra layers {cfg.extra_layers}, critic norm {cfg.critic_normalization}, batch "
            f"{cfg.batch_size}")


def _print(line: str) -> None:
    print(line, flush=True)


def main(argv=None, echo=_print) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        folder = Path(args.json).resolve().parent
        if not folder.is_dir():
            echo(f"error: --json {args.json}: the folder {folder} does not exist")
            return 2
    prepare_interpreter()
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = trainer_config(device, args.preset, args.loss)
    env = environment()
    env["networks checked"] = describe_config(cfg)
    echo(f"fastwgan self-check on {device_label(device)}")
    for k, v in env.items():
        echo(f"  {k}: {v}")
    results: list[Result] = []
    rows: list[dict] = []

    def report(summary: str = "running", code: Optional[int] = None) -> None:
        # rewritten after every check: a run cut short by a time limit keeps what it found
        if args.json:
            write_report(args.json, device, env, results, rows, summary, code)

    for name, fn in all_checks(device, args.full, cfg):
        results.append(run_check(name, fn))
        echo(format_result(results[-1]))
        report()
    if args.bench:
        r = run_check("speed table", lambda: rows.extend(bench(device, cfg=cfg)))
        results.append(r)
        echo(format_result(r))
        if rows:
            echo(bench_table(rows))
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    code = 1 if counts[FAIL] else 0
    summary = (f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped in "
               f"{time.perf_counter() - t0:.1f} s")
    if device.type != "cuda":
        summary += f" ({NO_GPU}: the GPU checks were skipped)"
    echo(summary)
    report(summary, code)
    return code


def write_report(path: str, device: torch.device, env: dict, results: list, rows: list,
                 summary: str, code: Optional[int]) -> None:
    """--json: the environment, every result so far and the speed table."""
    from fastwgan import __version__

    Path(path).write_text(json.dumps({
        "fastwgan": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "device": device_label(device), "environment": env,
        "results": [asdict(r) for r in results], "bench": rows, "summary": summary,
        "exit_code": code}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
