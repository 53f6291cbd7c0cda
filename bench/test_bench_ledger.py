"""The kernel ledger as benchmark rows: per engine, the kernels, GFLOP and MB of a critic step, a
generator step and an iteration, counted (exact, not timed) at the paper's sizes (64x64, batch
64, width 64) on any device, with the modeled time of the paper's recipe on an H100 SXM
(bench/ledger.py; modeled, not measured).

    pytest bench/test_bench_ledger.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from conftest import device_name
from ledger import ENGINES, engine_rows, recipe_minutes

from fastwgan.runconfig import preset_config


@pytest.mark.parametrize("engine", list(ENGINES))
def test_ledger(benchmark, bench_device, engine):
    cfg = preset_config(None, "wgan")  # the paper's networks: counting is exact on a CPU too
    rows = benchmark.pedantic(lambda: engine_rows(cfg, engine, bench_device), rounds=1, iterations=1)
    info = {"device": device_name(bench_device), "engine": f"ledger {engine}",
            "image_size": cfg.image_size, "batch": cfg.batch_size, "width": cfg.ngf,
            "modeled_recipe_min_h100": recipe_minutes(rows, engine, "H100 SXM")}
    for r in rows:
        info[f"{r['step']}_kernels"] = r["kernels"]
        info[f"{r['step']}_mb"] = r["bytes"] / 1e6
        if "profiled" in r:
            info[f"{r['step']}_profiled"] = r["profiled"]
    benchmark.extra_info.update(info)
    assert torch.isfinite(torch.tensor(info["modeled_recipe_min_h100"]))
