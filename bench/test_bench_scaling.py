"""Scaling over the GPUs of one machine: img/s and efficiency at 1, 2, 4, ... GPUs.

Each row is one ``torchrun --standalone --nproc_per_node N bench/scaling.py`` (the fast engine,
CUDA graphs, bf16, random images resident on each GPU, one all-reduce per optimizer step) for two
configs: the paper's (batch 64 at 64x64: 32, 16, 8 images per GPU at 2, 4, 8 GPUs) and batch 256
at 128x128. ``extra_info``: img/s over all GPUs, seconds per generator iteration, the efficiency
(img/s at N over N times img/s at 1 GPU, same run), and the time of one all-reduce of the
critic's flat gradient buffer alone beside the time of a step. The benchmark's own time is the
whole launch (start-up and capture included): read the derived units.

Skipped, with the reason, on a CPU and where the machine has one GPU.

    pytest bench/test_bench_scaling.py --benchmark-only -v
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 240
_ONE_GPU: dict[str, float] = {}  # config -> img/s at world size 1, this run


def gpu_counts() -> list[int]:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [k for k in (1, 2, 4, 8, 16) if k <= n]


def launch(config: str, nproc: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", str(nproc), str(ROOT / "bench" / "scaling.py"),
                        "--config", config, "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if r.returncode != 0:
        pytest.fail(f"{nproc} GPUs, {config}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["paper", "large"])
@pytest.mark.parametrize("nproc", [1, 2, 4, 8])
def test_scaling(benchmark, tmp_path, config, nproc):
    counts = gpu_counts()
    if len(counts) < 2:
        pytest.skip(f"{len(counts)} GPU here: scaling needs at least 2")
    if nproc not in counts:
        pytest.skip(f"{nproc} GPUs asked for, {counts[-1]} here")
    point = {}
    benchmark.pedantic(lambda: point.update(launch(config, nproc, tmp_path / "point.json")),
                       rounds=1, iterations=1)
    if nproc == 1:
        _ONE_GPU[config] = point["img_per_s"]
    elif config not in _ONE_GPU:  # this row alone (-k): the baseline in the same run
        _ONE_GPU[config] = launch(config, 1, tmp_path / "one.json")["img_per_s"]
    benchmark.extra_info.update({
        **{k: point[k] for k in ("device", "engine", "batch", "per_rank_batch", "image_size",
                                 "world_size", "img_per_s", "s_per_iter", "allreduce_ms",
                                 "critic_step_ms")},
        "gen_iters_per_s": 1 / point["s_per_iter"],
        "scaling_efficiency": point["img_per_s"] / (nproc * _ONE_GPU[config]),
    })
