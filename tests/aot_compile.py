"""Compile the Triton kernels for an H100 (sm_90) without a GPU, and report registers and spills.

The Triton interpreter that runs the kernels in CI checks their arithmetic, not that they compile:
a construct the interpreter accepts can still fail in the compiler, or spill registers. This
script builds each kernel variant the fast engine launches at the DCGAN shapes (64x64, batch 64,
channels_last; fp32 and bf16) through Triton's ahead-of-time path (``ASTSource`` and a
``GPUTarget``, assembled by the ``ptxas`` that ships with Triton) and prints one JSON line per
variant: its name and the cubin's registers, stack and local memory (where spills go), or the
error.

    env -u TRITON_INTERPRET python tests/aot_compile.py [--all] [--launchers]

It must run without TRITON_INTERPRET (the interpreter replaces ``@triton.jit`` functions), hence
a script of its own, which tests/test_kernels_compile.py runs in a subprocess. ``--all`` adds
NCHW layouts and eval-mode forwards. Pointers and the sizes M, C, S and n_elements are declared
16-aligned, as a real launch at these shapes specialises them; other launch specialisations
(arguments equal to 1) are not reproduced. Each row has the seconds its compilation took (cold when
TRITON_CACHE_DIR is a new folder). ``--launchers`` (Triton 3.6, which builds a C launcher per
kernel signature, as the GPU machines' version does) also builds that launcher as the JIT would
(its source, its compiler command, without linking libcuda: there is no GPU here), once per
distinct source as the JIT's cache does, and adds the seconds it took.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

rc = importlib.import_module("fastwgan.kernels.rmsprop_clip")
bn = importlib.import_module("fastwgan.kernels.bn_act")

H100_SMS = 132
INTS = {"M", "C", "S", "NSB", "UNITS", "UNITS_PER_PROG", "GROUP_CHUNKS", "P", "GROUPS",
        "n_elements"}
ALIGNED_INTS = {"M", "C", "S", "n_elements"}
DATA_PTRS = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}  # in the activations' dtype; the rest fp32
INT_PTRS = {"count_ptr": "*i64", "tickets_ptr": "*i32"}

# the DCGAN blocks with BatchNorm at 64x64 (ngf = ndf = 64): (C, H=W, activation)
BLOCKS = [(512, 4, "relu"), (256, 8, "relu"), (128, 16, "relu"), (64, 32, "relu"),       # G
          (128, 16, "leaky_relu"), (256, 8, "leaky_relu"), (512, 4, "leaky_relu")]      # D
ACTS = {"none": 0, "relu": 1, "leaky_relu": 2}


def resources(cubin: bytes) -> dict:
    """Registers, stack and local memory (spills land there) of a cubin, as cuobjdump reports."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(f.name)
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {"regs": int(found["REG"]), "stack": int(found["STACK"]), "local": int(found["LOCAL"])}


def source(kernel, dtype: str, constexprs: dict) -> ASTSource:
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in INT_PTRS:
            sig[n] = INT_PTRS[n]
        elif n.endswith("_ptr") or (n == "lr" and constexprs.get("LR_FROM_PTR")):
            sig[n] = f"*{dtype}" if n in DATA_PTRS else "*fp32"
        elif n in INTS:
            sig[n] = "i32"
        else:
            sig[n] = "fp32"
    # what a real launch specialises on: 16-byte aligned pointers (torch's allocations) and sizes
    # that are multiples of 16 (true of every DCGAN shape and of the parameter counts)
    aligned = [n for n in names if sig[n].startswith("*") or n in ALIGNED_INTS]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    return ASTSource(fn=kernel, signature=sig, attrs=attrs,
                     constexprs={(names.index(n),): v for n, v in constexprs.items()})


def compile_variant(src: ASTSource, num_warps: int) -> dict:
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return {**resources(compiled.asm["cubin"]), "seconds": round(time.perf_counter() - t0, 3)}


def build_launcher(src: ASTSource, built: set) -> float:
    """Seconds to build the C launcher that Triton 3.6's JIT builds for ``src``'s signature; 0
    where the same source was built already (the JIT caches launchers by their source)."""
    from triton.backends.nvidia import driver
    from triton.runtime import build

    names = src.fn.arg_names
    constants = {(names.index(k),) if isinstance(k, str) else k: v for k, v in src.constants.items()}
    code = driver.make_launcher(constants, dict(src.signature), None)
    if code in built:
        return 0.0
    built.add(code)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "launcher.c"
        path.write_text(code)
        t0 = time.perf_counter()
        build._build("launcher", str(path), tmp, [], driver.include_dirs, [], [])
        return round(time.perf_counter() - t0, 3)


def variants(full: bool):
    for lr_ptr in (True, False):
        for clip in (True, False):
            yield (f"rmsprop_clip lr_ptr={lr_ptr} clip={clip}", rc._rmsprop_clip_kernel, "fp32",
                   dict(LR_FROM_PTR=lr_ptr, HAS_CLIP=clip, HAS_STEP=True, BLOCK_SIZE=rc.BLOCK_SIZE),
                   rc.NUM_WARPS)
    bn._num_sms = lambda index: H100_SMS  # the launch configuration of an H100, without one
    seen = set()
    layouts = (True, False) if full else (True,)
    for dtype in ("fp32", "bf16"):
        for channels_last in layouts:
            for C, hw, act in BLOCKS:
                cfg = bn._launch_config(64, C, hw * hw, channels_last, 0)
                tile = dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_C=cfg["BLOCK_C"], CHANNELS_LAST=channels_last)
                a = ACTS[act]
                fold = dict(FOLD=True, HAS_RUNNING=True, HAS_COUNT=True, BLOCK_P=cfg["BLOCK_PF"])
                # the fast engine's: dweight and dbias added into the parameters' .grad
                writes = dict(WRITE_DW=2, WRITE_DB=2, WRITE_COEF=True)
                jobs = [
                    ("stats_partial", bn._bn_stats_partial_kernel, {**tile, **fold}),
                    ("stats_partial sync-bn", bn._bn_stats_partial_kernel,
                     dict(tile, FOLD=False, HAS_RUNNING=False, HAS_COUNT=False, BLOCK_P=2)),
                    ("stats_finalize", bn._bn_stats_finalize_kernel,
                     dict(HAS_RUNNING=True, HAS_COUNT=True, MOMENTS=False, BLOCK_P=cfg["BLOCK_P"],
                          BLOCK_C=cfg["BLOCK_CF"])),
                    ("stats_finalize sync-bn moments", bn._bn_stats_finalize_kernel,
                     dict(HAS_RUNNING=False, HAS_COUNT=False, MOMENTS=True, BLOCK_P=cfg["BLOCK_P"],
                          BLOCK_C=cfg["BLOCK_CF"])),
                    ("fwd", bn._bn_act_fwd_kernel, dict(ACT=a, FROM_RUNNING=False, **tile)),
                    ("bwd_partial", bn._bn_act_bwd_partial_kernel,
                     dict(ACT=a, FOLD=True, BLOCK_P=cfg["BLOCK_PF"], **writes, **tile)),
                    ("bwd_finalize", bn._bn_act_bwd_finalize_kernel,
                     dict(WRITE_DW=True, WRITE_DB=True, WRITE_COEF=True, BLOCK_P=cfg["BLOCK_P"],
                          BLOCK_C=cfg["BLOCK_CF"])),
                    ("bwd_dx", bn._bn_act_bwd_dx_kernel, dict(ACT=a, TRAINING=True, **tile)),
                ]
                if full:
                    jobs.append(("fwd eval", bn._bn_act_fwd_kernel, dict(ACT=a, FROM_RUNNING=True, **tile)))
                for name, kernel, consts in jobs:
                    warps = cfg["num_warps"] if "finalize" not in name else 4
                    key = (name, dtype if "finalize" not in name else "fp32", tuple(sorted(consts.items())), warps)
                    if key in seen:
                        continue
                    seen.add(key)
                    label = f"bn_act {name} {key[1]} C={C} {hw}x{hw} {act} {'NHWC' if channels_last else 'NCHW'}"
                    yield label, kernel, key[1], consts, warps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="NCHW layouts and eval-mode forwards too")
    p.add_argument("--launchers", action="store_true", help="build each C launcher too (Triton 3.6)")
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels", file=sys.stderr)
        return 2
    if args.launchers and not hasattr(importlib.import_module("triton.backends.nvidia.driver"),
                                      "make_launcher"):
        print(f"Triton {triton.__version__} builds no C launcher per signature", file=sys.stderr)
        return 2
    failed, built = 0, set()
    for label, kernel, dtype, consts, warps in variants(args.all):
        try:
            src = source(kernel, dtype, consts)
            row = {"variant": label, **compile_variant(src, warps)}
            if args.launchers:
                row["launcher_seconds"] = build_launcher(src, built)
        except Exception as e:  # noqa: BLE001 - reported, counted
            row = {"variant": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            failed += 1
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
