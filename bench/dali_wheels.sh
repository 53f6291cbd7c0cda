#!/usr/bin/env bash
# Bring NVIDIA DALI to a GPU machine that has no network and takes at most 64 MiB per call.
#
#   bash bench/dali_wheels.sh download   # here: the wheels for Python 3.12 / manylinux x86_64, as
#                                        # wheels/part-aa, part-ab, ... (58 MiB each, about 5 parts)
#   then one device call per part, each carrying it (carry: ["wheels/part-aa"], ...) and doing
#   useful work; the machine must stay warm between calls, or the parts already there are lost
#   bash bench/dali_wheels.sh install    # there, once every part is present: join and install into
#                                        # wheels/site; bench/device_check.sh puts it on PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  download)
    rm -rf wheels && mkdir -p wheels/dl
    pip download -q --progress-bar off --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      nvidia-dali-cuda130 -d wheels/dl
    rm -f wheels/dl/numpy-*.whl  # the GPU machine's own numpy stays
    tar -C wheels -cf wheels/dali.tar dl && rm -rf wheels/dl
    split -b 58M wheels/dali.tar wheels/part- && rm wheels/dali.tar
    ls -l wheels
    ;;
  install)
    ls wheels/part-* >/dev/null
    tmp=$(mktemp -d)
    cat wheels/part-* | tar -C "$tmp" -xf -
    python -m pip install -q --no-index --no-deps --target wheels/site "$tmp"/dl/*.whl
    rm -rf "$tmp"
    PYTHONPATH="$PWD/wheels/site${PYTHONPATH:+:$PYTHONPATH}" python -c \
      "import nvidia.dali as d; print('DALI', d.__version__, 'installed in wheels/site')"
    ;;
  *)
    echo "usage: bash bench/dali_wheels.sh download|install" >&2
    exit 2
    ;;
esac
