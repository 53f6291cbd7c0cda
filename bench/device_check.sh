#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one call of at most 7.5 minutes (step limits
# of 7 minutes, plus the install and the summary):
#   GPU tests (pytest -m gpu), the kernel benchmarks, the end-to-end training benchmark, and a
#   kernel-by-kernel profile of one training iteration.
# The training-parity check (2,000 iterations per backend) needs a call of its own, a few minutes:
#   python -m pytest -m "gpu and slow" tests/test_training_parity.py -s
#
#   bash bench/device_check.sh
#
# In $OUT (default ./bench-out), few files, since a lent machine returns at most 8: env.txt,
# steps.txt (each step's exit status and last line), summary.md (the benchmark table),
# profile.md, and detail.tar.gz (every log, JSON and test report). The table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./bench-out}
DETAIL="$OUT/detail"
mkdir -p "$DETAIL"
rm -f "$OUT/steps.txt"
# caches in ignored folders of the tree: the dataset, compiled Triton kernels and Inductor's
# autotuning results. A second call on the still-warm machine reuses them instead of compiling.
export FASTWGAN_CACHE="$PWD/.cache/fastwgan"
export TRITON_CACHE_DIR="$PWD/.cache/triton" TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/inductor"
# tests in parallel processes where pytest-xdist is installed: the GPU tests are mostly Triton
# compilation (CPU work), and the machine has 16 cores
XDIST=""
python -c "import xdist" 2>/dev/null && XDIST="-n 8"
# DALI, where bench/dali_wheels.sh brought it (the GPU machines have none of their own)
[ -d wheels/site ] && export PYTHONPATH="$PWD/wheels/site${PYTHONPATH:+:$PYTHONPATH}"

# fastwgan.kernels is the kernels/ folder through setup.py's package_dir: install in place,
# offline (the machine has torch, triton, numpy, pillow, pytest, pytest-benchmark already).
python -m pip install -q --no-deps --no-build-isolation -e . >"$DETAIL/install.log" 2>&1 \
  || echo "warning: editable install failed (see install.log)"

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  python -c "import nvidia.dali as d; print('dali', d.__version__)" 2>/dev/null || echo "dali: not installed (GPU decode not measured)"
  echo "pytest-xdist: ${XDIST:-not installed}"
} | tee "$OUT/env.txt"

step() {  # name, timeout (s), command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$DETAIL/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s ($(tail -n 1 "$DETAIL/$name.log"))" | tee -a "$OUT/steps.txt"
}

# Step limits add up to 7 minutes at most: a step that runs over is cut, and the rest still run.
# The GPU tests in two steps, each with its own report: the engine and optimizer first, then the
# BatchNorm kernel's matrix (many kernel variants to compile).
step gpu-tests 70 python -m pytest -m "gpu and not slow" tests/ --ignore=tests/test_bn_act.py -q \
  -p no:cacheprovider $XDIST --junitxml="$DETAIL/gpu-tests.xml"
step gpu-tests-bn-act 50 python -m pytest -m "gpu and not slow" tests/test_bn_act.py -q \
  -p no:cacheprovider $XDIST --junitxml="$DETAIL/gpu-tests-bn-act.xml"
step bench-optim 30 python -m pytest bench/test_bench_optim.py --benchmark-only -q \
  --benchmark-json="$DETAIL/optim.json"
FASTWGAN_BENCH_DTYPES=bfloat16 step bench-bn-act 40 python -m pytest bench/test_bench_bn_act.py \
  --benchmark-only -q --benchmark-json="$DETAIL/bn_act.json"
step bench-train 80 python -m pytest bench/test_bench_train.py --benchmark-only -q -k "not compiled" \
  --benchmark-json="$DETAIL/train.json"
step profile 30 python bench/profile_step.py --out "$OUT/profile.md"
# Inductor's max-autotune compiles and times many kernel choices per convolution: the longest step
step bench-compile 100 python -m pytest bench/test_bench_train.py --benchmark-only -q -k compiled \
  --benchmark-json="$DETAIL/compile.json"
step bench-data 20 python -m pytest bench/test_bench_data.py --benchmark-only -q \
  --benchmark-json="$DETAIL/data.json"

python bench/summarize.py "$DETAIL"/train.json "$DETAIL"/compile.json "$DETAIL"/optim.json \
  "$DETAIL"/bn_act.json "$DETAIL"/data.json --out "$OUT/summary.md" >/dev/null
tar -czf "$OUT/detail.tar.gz" -C "$OUT" detail && rm -rf "$DETAIL"
echo
cat "$OUT/steps.txt"
echo
cat "$OUT/summary.md"
