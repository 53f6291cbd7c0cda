"""Compile the Triton kernels for an H100 (sm_90) without a GPU, and report registers and spills.

The Triton interpreter that runs the kernels in CI checks their arithmetic, not that they compile:
a construct the interpreter accepts can still fail in the compiler, or spill registers. This
script builds each kernel variant the fast engine launches at the DCGAN shapes (64x64, batch 64,
channels_last; fp32 and bf16) through Triton's ahead-of-time path (``ASTSource`` and a
``GPUTarget``, assembled by the ``ptxas`` that ships with Triton) and prints one JSON line per
variant: its name and the cubin's registers, stack and local memory (where spills go), or the
error.

    env -u TRITON_INTERPRET python tests/aot_compile.py [--all]

It must run without TRITON_INTERPRET (the interpreter replaces ``@triton.jit`` functions), hence
a script of its own, which tests/test_kernels_compile.py runs in a subprocess. ``--all`` adds
NCHW layouts and eval-mode forwards. Pointers and the sizes M, C, S and n_elements are declared
16-aligned, as a real launch at these shapes specialises them; other launch specialisations
(arguments equal to 1) are not reproduced.
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

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

rc = importlib.import_module("fastwgan.kernels.rmsprop_clip")
bn = importlib.import_module("fastwgan.kernels.bn_act")

H100_SMS = 132
INTS = {"M", "C", "S", "NSB", "UNITS", "UNITS_PER_PROG", "P", "n_elements"}
ALIGNED_INTS = {"M", "C", "S", "n_elements"}
DATA_PTRS = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}  # in the activations' dtype; the rest fp32

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


def compile_variant(kernel, dtype: str, constexprs: dict, num_warps: int) -> dict:
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in constexprs:
            sig[n] = "constexpr"
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
    src = ASTSource(fn=kernel, signature=sig, attrs=attrs,
                    constexprs={(names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return resources(compiled.asm["cubin"])


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
                jobs = [
                    ("stats_partial", bn._bn_stats_partial_kernel, tile),
                    ("stats_finalize", bn._bn_stats_finalize_kernel,
                     dict(HAS_RUNNING=True, MOMENTS=False, BLOCK_P=cfg["BLOCK_P"],
                          BLOCK_C=cfg["BLOCK_CF"])),
                    ("stats_finalize sync-bn moments", bn._bn_stats_finalize_kernel,
                     dict(HAS_RUNNING=False, MOMENTS=True, BLOCK_P=cfg["BLOCK_P"],
                          BLOCK_C=cfg["BLOCK_CF"])),
                    ("fwd", bn._bn_act_fwd_kernel, dict(ACT=a, FROM_RUNNING=False, **tile)),
                    ("bwd_partial", bn._bn_act_bwd_partial_kernel, dict(ACT=a, **tile)),
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
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels", file=sys.stderr)
        return 2
    failed = 0
    for label, kernel, dtype, consts, warps in variants(args.all):
        try:
            row = {"variant": label, **compile_variant(kernel, dtype, consts, warps)}
        except Exception as e:  # noqa: BLE001 - reported, counted
            row = {"variant": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            failed += 1
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
