#!/usr/bin/env bash
# Bring NVIDIA DALI to a lent GPU machine, which has no network, no DALI, Python 3.12, and takes at
# most 64 MiB of working tree per call (the repository is about 1 MiB of it).
#
#   bash bench/dali_wheels.sh download   # HERE: nvidia-dali-cuda130==2.4.0 (the version tested on
#                                        # the CPU machines) and its wheels for CPython 3.12,
#                                        # manylinux x86_64, as wheels/part-aa, -ab, ... of 58 MiB
#                                        # (about 5) and wheels/MANIFEST (their sha256 sums)
#   bash bench/dali_wheels.sh keep       # THERE, in each call that carries a part: checks the parts
#                                        # present against MANIFEST and lists those still missing
#   bash bench/dali_wheels.sh install    # THERE, once all are present: checks Python 3.12 and a
#                                        # driver for CUDA 13 first, then joins, verifies and installs
#                                        # into wheels/site (device_check.sh puts it on PYTHONPATH)
#
# The carry-over. Parts carried by earlier calls stay in the (git-ignored) wheels/ folder only while
# the machine stays warm, which is 30 s after a call returns: the calls must follow each other at
# once, each doing nothing but `keep` (a few seconds), and the last one going straight on:
#   call 1: carry ["wheels/MANIFEST", "wheels/part-aa"], command "bash bench/dali_wheels.sh keep"
#           (this call starts the machine: minutes)
#   call 2..N-1: the same with the next part, issued as soon as the previous reply arrives
#   call N: carry ["wheels/MANIFEST", "wheels/part-ae"], command
#           "bash bench/dali_wheels.sh keep && bash bench/dali_wheels.sh install && bash bench/device_check.sh"
# If `keep` lists an earlier part as missing, the machine was given back in between (a fresh one
# started): the parts so far are lost, and it is cheaper to run device_check.sh without DALI (its
# DALI rows and tests skip, saying so) than to start over. Each part's transfer counts as device
# time too: budget about 2 minutes for the carry-over beyond the machine's start.
set -euo pipefail
cd "$(dirname "$0")/.."
DALI_PIN="nvidia-dali-cuda130==2.4.0"
PYTHON_VERSION="3.12"
CUDA_MAJOR=13  # the wheels' CUDA: the driver must support CUDA 13 (driver 580 or newer)

missing_parts() {  # the parts MANIFEST names that are absent or damaged
  [ -f wheels/MANIFEST ] || { echo "wheels/MANIFEST (carry it with every part)"; return; }
  while read -r sum name; do
    if [ ! -f "wheels/$name" ]; then
      echo "$name"
    elif [ "$(sha256sum "wheels/$name" | cut -d' ' -f1)" != "$sum" ]; then
      echo "$name (damaged: sha256 differs)"
    fi
  done < wheels/MANIFEST
}

case "${1:-}" in
  download)
    rm -rf wheels && mkdir -p wheels/dl
    pip download -q --progress-bar off --only-binary=:all: --python-version "$PYTHON_VERSION" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 "$DALI_PIN" -d wheels/dl
    rm -f wheels/dl/numpy-*.whl  # the GPU machine's own numpy stays
    tar -C wheels -cf wheels/dali.tar dl && rm -rf wheels/dl
    split -b 58M wheels/dali.tar wheels/part- && rm wheels/dali.tar
    (cd wheels && sha256sum part-* > MANIFEST)
    ls -l wheels
    ;;
  keep)
    have=$(ls wheels/part-* 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
    echo "parts here: ${have:-none}"
    missing=$(missing_parts)
    if [ -n "$missing" ]; then
      echo "still missing: $(echo "$missing" | tr '\n' ' ')"
    else
      echo "all parts present: bash bench/dali_wheels.sh install"
    fi
    ;;
  install)
    py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$py" != "$PYTHON_VERSION" ]; then
      echo "error: the wheels are for Python $PYTHON_VERSION, this python is $py: download them again with --python-version $py" >&2
      exit 1
    fi
    driver=$(python -c 'import ctypes
try:
    v = ctypes.c_int(); ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)); print(v.value // 1000)
except OSError:
    print(0)')
    if [ "$driver" -lt "$CUDA_MAJOR" ]; then
      echo "error: $DALI_PIN needs a driver for CUDA $CUDA_MAJOR; this one supports CUDA ${driver} (0: no driver): use nvidia-dali-cuda${driver}0" >&2
      exit 1
    fi
    missing=$(missing_parts)
    if [ -n "$missing" ]; then
      echo "error: parts missing: $(echo "$missing" | tr '\n' ' ')" >&2
      exit 1
    fi
    tmp=$(mktemp -d)
    cat wheels/part-* | tar -C "$tmp" -xf -
    python -m pip install -q --no-index --no-deps --target wheels/site "$tmp"/dl/*.whl
    rm -rf "$tmp"
    PYTHONPATH="$PWD/wheels/site${PYTHONPATH:+:$PYTHONPATH}" python -c \
      "import nvidia.dali as d; print('DALI', d.__version__, 'installed in wheels/site')"
    ;;
  *)
    echo "usage: bash bench/dali_wheels.sh download|keep|install" >&2
    exit 2
    ;;
esac
