#!/usr/bin/env bash
# The first call on a lent GPU machine. The lease is 15 minutes of device time in all, of which the
# machine's start takes 2-3, so the work is in two stages, each one device call:
#
#   bash bench/device_check.sh      # stage 1: step limits add up to 7.5 minutes (+ install, summary)
#   bash bench/device_check.sh 2    # stage 2, optional: 3.8 minutes, the compile-heavy rows; it fits
#                                   # the same lease only when stage 1 ended early (its steps.txt
#                                   # says), else it is the first call of a later lease
#
# Stage 1, in this order; a step that runs over its limit is cut and the next one runs:
#   smoke         150 s  python -m fastwgan.check: environment, import, graph replay against eager,
#                        fast against reference (these compile the kernels the trainer launches),
#                        then each kernel against its twin at the trainer's shapes. The script
#                        STOPS here (exit 3) only if fastwgan or its kernels do not import, or a
#                        kernel does not compile or launch (a FAIL whose error is not an
#                        AssertionError): a broken environment costs a few minutes, not the lease.
#                        A numeric disagreement is a FAIL line in check.txt and the run goes on.
#                        The step is bound by compilation: cold, Triton 3.6 compiles ~60 kernel
#                        variants and builds a C launcher per signature, one after another, besides
#                        CUDA's start, cuDNN's autotuning and the captures (tests/aot_compile.py
#                        --all --launchers on 2 loaded CPU cores: 95 variants in 27 s, 8 launchers
#                        at 0.3 s each; bench/RESULTS.md). Its cache (.cache/triton) serves every
#                        later step.
#   data           25 s  the built-in synthetic faces, generated once (4,000 JPEGs, 16 cores) and
#                        decoded into the cache, for the benchmarks that would otherwise wait for it
#   gpu-tests      75 s  pytest -m "gpu and not slow"; the BatchNorm kernel matrix is the trainer's
#                        launches, compiled by the smoke step (FASTWGAN_GPU_MATRIX=full: all of
#                        it, stage 2)
#   bench-optim    30 s  RMSprop + clip: eager rows, and in CUDA graphs beside the copy bandwidth
#   bench-bn-act   45 s  BatchNorm + activation, bf16: eager and Triton rows, and the same in CUDA
#                        graphs beside the copy bandwidth (no torch.compile rows: stage 2)
#   bench-train    55 s  end to end, every engine but torch.compile
#   profile-fast   25 s  one iteration of the fast engine (graphs, bf16), kernel by kernel
#   profile-ref    20 s  the same for the eager fp32 reference, in a process of its own
#   bench-data     25 s  the loaders and the resident sampler
# Stage 2: bench-compile 120 s (the reference under torch.compile max-autotune), bench-bn-act-compile
#   50 s (Inductor's fused BatchNorm rows), gpu-tests-full 60 s (the whole kernel matrix; the
#   kernels compiled in stage 1 come from the Triton cache).
#   bench-scaling 240 s  only where the machine has more than one GPU (else skipped, and
#                        steps.txt says so): torchrun at 1, 2, 4, ... GPUs, the paper's config
#                        and batch 256 at 128x128 (bench/test_bench_scaling.py)
# The training-parity check (2,000 iterations per backend) needs a call of its own, a few minutes:
#   python -m pytest -m "gpu and slow" tests/test_training_parity.py -s
#
# In $OUT (default ./bench-out), few files, since a lent machine returns at most 8, each written as
# soon as its step finishes: env.txt, steps.txt (each step's exit status, time and last line),
# check.txt and check.json (the self-check), summary.md (the benchmark table, rewritten after every
# benchmark step from rows written as each row finishes: a step cut by its limit keeps what it
# measured), profile.md, and at the end detail.tar.gz (every log and the rows). The table is
# printed last. The logs and rows themselves are kept in .cache/device-check (a lent machine
# empties $OUT before each call): stage 2's summary holds stage 1's rows too.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-1}
case "$STAGE" in 1|2) ;; *) echo "usage: bash bench/device_check.sh [1|2]" >&2; exit 2 ;; esac
OUT=${OUT:-./bench-out}
DETAIL="$PWD/.cache/device-check"
[ "$STAGE" = 1 ] && rm -rf "$DETAIL"
mkdir -p "$DETAIL" "$OUT"
rm -f "$OUT/steps.txt" "$OUT/check.json" "$OUT/summary.md"
export PYTHONUNBUFFERED=1
# every benchmark row appended here as it finishes (bench/conftest.py)
export FASTWGAN_BENCH_ROWS="$DETAIL/rows.jsonl"
# caches in ignored folders of the tree: the dataset, compiled Triton kernels and Inductor's
# autotuning results. Stage 2, or a second call on the still-warm machine, reuses them.
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
# fastwgan.kernels is kernels/ only through the install's package_dir: without the install, a link
# in this copy of the tree makes it importable from the tree's root (where every step runs)
if ! python -c "import fastwgan.kernels" 2>/dev/null && [ ! -e fastwgan/kernels ]; then
  ln -s ../kernels fastwgan/kernels && echo "note: fastwgan/kernels linked to kernels/ (no install)"
fi

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ, stage $STAGE"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not available"
  python -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  python -c "import nvidia.dali as d; print('dali', d.__version__)" 2>/dev/null || echo "dali: not installed (GPU decode not measured)"
  echo "pytest-xdist: ${XDIST:-not installed}"
} | tee "$OUT/env.txt"

step() {  # name, limit (s), command...: runs it, records its exit status, time and last line
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$DETAIL/$name.log" 2>&1
  local rc=$?
  local how="exit $rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && how="cut at its limit of $limit s"
  echo "$name: $how in $((SECONDS - t0)) s ($(grep -v '^[[:space:]]*$' "$DETAIL/$name.log" | tail -n 1))" \
    | tee -a "$OUT/steps.txt"
  return $rc
}

summarize() {  # the table so far, from the rows written as each finished
  [ -s "$FASTWGAN_BENCH_ROWS" ] && python bench/summarize.py "$FASTWGAN_BENCH_ROWS" --out "$OUT/summary.md" >/dev/null
  return 0
}

bench() {  # name, limit, pytest arguments...
  local name=$1 limit=$2; shift 2
  # -v: each row's line in the log as it finishes
  step "$name" "$limit" python -m pytest -p no:cacheprovider --benchmark-only -v "$@"
  summarize
}

smoke_failed() {  # whether the self-check found fastwgan or its kernels unable to import or launch
  python - "$OUT/check.json" <<'EOF'
import json, sys
try:
    results = json.load(open(sys.argv[1]))["results"]
except (OSError, ValueError, KeyError):
    sys.exit(0)  # no report at all: fastwgan did not even import
# a disagreement with the twin (AssertionError) is recorded in check.txt, and the run goes on
broken = [r for r in results if r["status"] == "FAIL" and r["name"].startswith(("import", "kernel"))
          and r.get("error") != "AssertionError"]
for r in broken:
    print(f"FAIL  {r['name']}: {r['detail']}")
sys.exit(0 if broken else 1)
EOF
}

if [ "$STAGE" = 1 ]; then
  step smoke 150 python -m fastwgan.check --json "$OUT/check.json"
  cp "$DETAIL/smoke.log" "$OUT/check.txt"
  if smoke_failed; then
    echo "smoke: fastwgan or its kernels are broken on this machine; stopping (see check.txt)" \
      | tee -a "$OUT/steps.txt"
    tar -czf "$OUT/detail.tar.gz" -C "$DETAIL" .
    exit 3
  fi
  step data 25 python - <<'EOF'
import torch
from fastwgan.data import Batches, open_dataset
# generated, then decoded into the cache as bench/test_bench_train.py reads them (64x64 on a GPU)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
size = 64 if device.type == "cuda" else 32
batches = Batches(open_dataset(None), size, 108, 64, seed=0, device=device, mode="resident")
print(f"{len(batches.data)} images at {size}x{size}: {batches.describe()}")
EOF
  step gpu-tests 75 python -m pytest -m "gpu and not slow" tests/ -q -rfE -p no:cacheprovider $XDIST
  bench bench-optim 30 bench/test_bench_optim.py -k "not compile"
  FASTWGAN_BENCH_DTYPES=bfloat16 bench bench-bn-act 45 bench/test_bench_bn_act.py -k "not compile"
  bench bench-train 55 bench/test_bench_train.py -k "not compiled"
  step profile-fast 25 python bench/profile_step.py --engine fast-graphs --amp --out "$OUT/profile.md"
  step profile-ref 20 python bench/profile_step.py --engine reference --out "$OUT/profile.md"
  bench bench-data 25 bench/test_bench_data.py
  GPUS=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
  if [ "${GPUS:-0}" -gt 1 ]; then
    bench bench-scaling 240 bench/test_bench_scaling.py
  else
    echo "bench-scaling: skipped, ${GPUS:-0} GPU on this machine (scaling needs at least 2)" \
      | tee -a "$OUT/steps.txt"
  fi
else
  # Inductor's max-autotune compiles and times many kernel choices per convolution
  bench bench-compile 120 bench/test_bench_train.py -k compiled
  FASTWGAN_BENCH_DTYPES=bfloat16 bench bench-bn-act-compile 50 bench/test_bench_bn_act.py -k compile
  FASTWGAN_GPU_MATRIX=full step gpu-tests-full 60 python -m pytest -m "gpu and not slow" \
    tests/test_bn_act.py -q -rfE -p no:cacheprovider $XDIST
fi

summarize
tar -czf "$OUT/detail.tar.gz" -C "$DETAIL" .
echo
cat "$OUT/steps.txt"
echo
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
exit 0
