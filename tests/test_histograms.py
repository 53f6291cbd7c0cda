"""--tb-histograms under CUDA graphs: only gradients that live outside the graphs' memory pool
(RMSpropClip's flat buffers) are read between replays; torch's Adam makes its gradients inside
the pool, so they are left out, and the run says so once. On CPU the rule is checked with
recorded graphs (tests/test_fast.py's ``RecordedGraph``); on CUDA against the allocator's own
record of which memory belongs to a graph pool."""
import types

import pytest
import torch

from fastwgan import build, fast
from fastwgan.config import Config
from fastwgan.fast import FastEngine
from fastwgan.histograms import histogram_tensors
from fastwgan.optim import RMSpropClip
from fastwgan.parity import engine_pair

import tiny
from test_fast import TINY, RecordedGraph


def trained(opt_g, opt_d, graphs):
    """An engine as the loop sees it: two small networks after one backward and step each."""
    torch.manual_seed(0)
    G, D = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
    opts = [opt(net.parameters()) for opt, net in ((opt_g, G), (opt_d, D))]
    for opt, net, x in zip(opts, (G, D), (torch.randn(5, 3), torch.randn(5, 4))):
        opt.zero_grad(set_to_none=True)
        net(x).sum().backward()
        opt.step()
    return types.SimpleNamespace(G=G, D=D, opt_g=opts[0], opt_d=opts[1], graphs=graphs)


rmsprop_clip = lambda params: RMSpropClip(params, lr=1e-3, clip=0.01, impl="ref")  # noqa: E731
adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731


def test_eager_engines_give_every_gradient():
    engine = trained(adam, rmsprop_clip, graphs={})  # an engine with no captured graph
    tensors, left_out = histogram_tensors(engine)
    assert left_out == []
    assert sorted(tensors) == sorted(f"{kind}/{net}/{name}" for kind in ("weights", "grads")
                                     for net in "GD" for name in ("weight", "bias"))


def test_under_graphs_only_flat_buffer_gradients():
    engine = trained(adam, rmsprop_clip, graphs={"iteration": object()})
    tensors, left_out = histogram_tensors(engine)
    assert left_out == ["G"]  # Adam's .grad: made by a backward inside the graph
    assert {t for t in tensors if t.startswith("grads/")} == {"grads/D/weight", "grads/D/bias"}
    assert {t for t in tensors if t.startswith("weights/")} == {
        "weights/G/weight", "weights/G/bias", "weights/D/weight", "weights/D/bias"}
    flat = engine.opt_d.buffers().grad
    assert all(t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
               for tag, t in tensors.items() if tag.startswith("grads/"))
    # a .grad that is no longer a view of the flat buffer (module.zero_grad(), then a backward)
    engine.D.weight.grad = engine.D.weight.grad.clone()
    tensors, left_out = histogram_tensors(engine)
    assert left_out == ["G", "D"] and "grads/D/weight" not in tensors and "grads/D/bias" in tensors


event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install 'fastwgan[tensorboard]')")


def histogram_tags(out):
    acc = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc.Tags()["histograms"]


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("loss", ["wgan", "gan"])
def test_the_loop_reads_no_gradient_from_the_graph_pool(tmp_path, data, monkeypatch, capsys, loss):
    """The fast engine with recorded graphs on CPU, through the trainer: wgan's RMSpropClip
    gradients are written, gan's Adam gradients are not (one note says why)."""
    monkeypatch.setattr(fast, "capture_graph", RecordedGraph)
    real = build.build_engine

    def with_graphs(*a, **k):
        engine = real(*a, **k)
        engine.use_graphs = True  # CUDA-only otherwise: capture after the first iteration
        return engine

    monkeypatch.setattr(build, "build_engine", with_graphs)
    out = tmp_path / "r"
    assert tiny.run("--data", data, "--out", out, "--loss", loss, "--backend", "fast", "--iters", 4,
                    "--tensorboard", "--tb-histograms", 2, "--data-mode", "resident") == 0
    tags = histogram_tags(out)
    assert any(t.startswith("weights/G/") for t in tags) and any(t.startswith("weights/D/") for t in tags)
    grads = [t for t in tags if t.startswith("grads/")]
    printed = capsys.readouterr().out
    if loss == "wgan":
        assert any(t.startswith("grads/G/") for t in grads) and any(t.startswith("grads/D/") for t in grads)
        assert "no gradient histograms" not in printed
    else:
        assert grads == []
        assert printed.count("note: --tb-histograms: no gradient histograms of G and D") == 1


# --- GPU ---

def graph_pool_ranges():
    """(start, end) of every allocator segment that belongs to a CUDA graph's pool."""
    return [(s["address"], s["address"] + s["total_size"]) for s in torch.cuda.memory_snapshot()
            if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0)]


def in_pool(t, ranges):
    return any(a <= t.data_ptr() < b for a, b in ranges)


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["wgan", "gan"])
def test_no_histogram_tensor_lies_in_the_graph_pool(loss):
    from fastwgan.data.sampler import ResidentSampler

    cfg = Config(**{**TINY, "loss": loss, "image_size": 32})
    (G, D), _ = engine_pair(cfg, "cuda")
    data = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8, device="cuda")
    engine = FastEngine(cfg, G, D, ResidentSampler(data, cfg.batch_size), torch.device("cuda"), None)
    for it in [0, 30, 500, 501]:  # warm-up and capture, an iteration, a phase of step graphs, again
        engine.iteration(cfg.n_critic_at(it))
    torch.cuda.synchronize()
    assert engine.capture_error is None and engine.graphs
    ranges = graph_pool_ranges()
    assert ranges, "no graph pool segment in the allocator's snapshot"
    tensors, left_out = histogram_tensors(engine)
    assert not [tag for tag, t in tensors.items() if in_pool(t, ranges)]
    adam_grads = [p.grad for p in G.parameters() if p.grad is not None]
    if loss == "gan":  # the reason for the rule: Adam's gradients are made inside the pool
        assert left_out == ["G", "D"] and adam_grads and all(in_pool(g, ranges) for g in adam_grads)
    else:
        n_params = len(list(G.parameters())) + len(list(D.parameters()))
        assert left_out == [] and sum(t.startswith("grads/") for t in tensors) == n_params
