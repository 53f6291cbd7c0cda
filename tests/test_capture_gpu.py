"""The fast engine's CUDA graphs on one GPU, against the same engine eager (``gpu``-marked: on a
machine without CUDA they are collected and skipped, with the reason).

* The losses trained with Adam, each built by ``fastwgan.build.build_engine`` from the trainer's
  config for that loss (the paper's DCGAN at 64x64, batch 64): wgan-gp, whose captured critic step
  holds the penalty's double backward and its eps drawn on the device, and gan. (wgan's graphs:
  tests/test_fast.py::test_graph_replay_equals_eager.)
* A process group of one rank over NCCL: the gradient all-reduce of the fast engine's optimizers
  (RMSpropClip's flat buffer for wgan, Adam's step pre-hook for gan) is captured in the graphs and
  replayed. The group is joined through a file in the test's folder (no port to pick), with a
  60 s timeout on every collective: a collective that hangs ends the process with an error.

Tolerances: the two engines run in one process, where cuDNN's autotuner keeps one choice per
convolution, in deterministic mode, and the Triton kernels reduce in a fixed order: a replay does
what the eager step did, and the weights should agree to the bit. The comparison allows rounding
noise (rtol 1e-5 on the critic, as tests/test_fast.py), not a missed or repeated step.
"""
from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from fastwgan.build import build_engine
from fastwgan.data.sampler import ResidentSampler
from fastwgan.distributed import SINGLE, World
from fastwgan.parity import assert_same_state, engine_pair
from fastwgan.runconfig import preset_config

COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def needs_cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", torch.cuda.current_device())


def trainer_config(loss: str):
    """What a run of ``--loss loss`` trains, with a warm-up phase of 7 critic steps instead of 100
    where the loss has phases (as the self-check: a phase is replayed from the step graphs)."""
    cfg = preset_config(None, loss)
    return dataclasses.replace(cfg, n_critic_warmup=7) if cfg.warmup_phases else cfg


def eager_and_graphed(cfg, device: torch.device, world: World = SINGLE):
    """Two fast engines from the same initial weights on the same resident images, one eager and
    one with CUDA graphs, built as the trainer builds them."""
    (G, D), (G2, D2) = engine_pair(cfg, device)
    size = cfg.image_size
    data = torch.randint(0, 256, (4 * cfg.batch_size, size, size, 3), dtype=torch.uint8, device=device)
    return tuple(build_engine(cfg, g, d, ResidentSampler(data, cfg.batch_size), device, None, world,
                              backend="fast", graphs=graphs)
                 for g, d, graphs in ((G, D, False), (G2, D2, True)))


def run_side_by_side(cfg, eager, graph, iterations) -> None:
    """Both engines through ``iterations``, each from the same CUDA generator state (z, the real
    batch's indices, the penalty's eps), then their weights, buffers and loss sums compared."""
    torch.backends.cudnn.deterministic = True
    for it in iterations:
        torch.cuda.manual_seed(it)
        eager.iteration(cfg.n_critic_at(it))
        torch.cuda.manual_seed(it)
        graph.iteration(cfg.n_critic_at(it))
    torch.cuda.synchronize()
    assert graph.capture_error is None, graph.capture_error
    expected = {"iteration"} | ({"critic", "generator"} if cfg.warmup_phases else set())
    assert graph.use_graphs and set(graph.graphs) == expected, set(graph.graphs)
    assert_same_state(eager.D, graph.D, rtol=1e-5, atol=2e-7)
    assert_same_state(eager.G, graph.G, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph.sums, eager.sums, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["wgan-gp", "gan"])
def test_graph_replay_equals_eager_for_the_adam_losses(loss):
    device = needs_cuda()
    cfg = trainer_config(loss)
    eager, graph = eager_and_graphed(cfg, device)
    # iteration 0: eager (compiles the kernels, picks cuDNN's algorithms), then the capture;
    # 30, 31, 32: three replays of the iteration graph, each drawing new z, batch and eps
    run_side_by_side(cfg, eager, graph, [0, 30, 31, 32])


class OneRankGroup(World):
    """A world of one process that still takes the collective path (``distributed``), so that the
    engine all-reduces its gradients, as it does with several ranks, over a group of one."""

    @property
    def distributed(self) -> bool:
        return True


@pytest.fixture
def nccl_one_rank(tmp_path):
    """An NCCL process group of one rank on this GPU, left at the end of the test."""
    device = needs_cuda()
    if not dist.is_nccl_available():
        pytest.skip("this torch is built without NCCL")
    if dist.is_initialized():
        pytest.skip("a process group is already open in this process")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1, timeout=COLLECTIVE_TIMEOUT, device_id=device)
    try:
        yield OneRankGroup(rank=0, world_size=1, backend="nccl", device=device)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["wgan", "gan"])  # RMSpropClip's flat buffer; Adam's pre-hook
def test_one_rank_nccl_all_reduce_captured_and_replayed(nccl_one_rank, monkeypatch, loss):
    capturing = []  # for each all-reduce: whether it was recorded into a graph
    all_reduce = dist.all_reduce

    def recorded(tensor, *args, **kwargs):
        capturing.append(torch.cuda.is_current_stream_capturing())
        return all_reduce(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", recorded)  # fastwgan.distributed calls dist.all_reduce
    cfg = trainer_config(loss)
    eager, graph = eager_and_graphed(cfg, nccl_one_rank.device, nccl_one_rank)
    assert "one all-reduce per step" in graph.describe()
    # wgan: 0 is a warm-up phase run eagerly, then the capture; 30, 31 replay the iteration
    # graph; 500, a phase, replays the critic and generator graphs. gan: replays of the iteration.
    run_side_by_side(cfg, eager, graph, [0, 30, 31, 500])
    # one all-reduce per optimizer step: every critic step and every generator step, eager and
    # inside each captured graph
    captured = sum(capturing)
    steps_per_graph = {"iteration": cfg.steady_n_critic + 1, "critic": 1, "generator": 1}
    assert captured == sum(steps_per_graph[name] for name in graph.graphs), capturing
    eager_steps = sum(cfg.n_critic_at(it) + 1 for it in [0, 30, 31, 500])
    assert len(capturing) - captured == eager_steps + cfg.n_critic_at(0) + 1  # + the warm-up
