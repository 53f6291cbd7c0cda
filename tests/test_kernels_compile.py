"""The Triton kernels compile for an H100 (sm_90), with no register spills, on a machine without a
GPU: the interpreter that runs them elsewhere in CI checks their arithmetic, not the compiler's
view of them. tests/aot_compile.py does the work, in a process without TRITON_INTERPRET."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

SCRIPT = Path(__file__).with_name("aot_compile.py")
ROOT = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90_without_spills():
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "cuobjdump").exists():
        pytest.skip(f"this Triton has no NVIDIA toolchain ({tools}) to compile for a GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows, r.stderr[-2000:]
    failed = [row for row in rows if "error" in row]
    assert not failed, failed
    # both kernels, every DCGAN block's forward and backward, fp32 and bf16
    names = " ".join(row["variant"] for row in rows)
    for part in ("rmsprop_clip", "stats_partial", "fwd", "bwd_partial", "bwd_dx", "bf16"):
        assert part in names, part
    spilled = [row for row in rows if row["local"] or row["stack"]]
    assert not spilled, spilled  # local memory or a stack frame: registers spilled
    assert r.returncode == 0, r.stderr[-2000:]
