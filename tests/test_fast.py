"""The fast engine against the reference: same batches and z, same parameters.

On CPU the fast engine runs eagerly, with the plain-PyTorch twins (and, at tiny sizes, with the
Triton kernels under the interpreter). GPU-marked tests check graph replay against eager steps
and the compiled kernels against the reference.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastwgan.config import Config
from fastwgan.engine import ReferenceEngine
from fastwgan.fast import FastEngine
from fastwgan.parity import FixedBatches, assert_same_state
from fastwgan.parity import engine_pair as pair
from fastwgan.parity import fixed_batches as batches

from tiny import assert_same_training


def run_both(cfg, iterations, device="cpu", impl=None, graphs=False, amp=None):
    (G, D), (G2, D2) = pair(cfg, device)
    data = batches(cfg, 4, device)
    ref = ReferenceEngine(cfg, G, D, FixedBatches(data), torch.device(device), amp)
    fast = FastEngine(cfg, G2, D2, FixedBatches(data), torch.device(device), amp, graphs=graphs, impl=impl)
    for it in iterations:
        n = cfg.n_critic_at(it)
        torch.manual_seed(1000 + it)  # the same z for both
        ref.iteration(n)
        torch.manual_seed(1000 + it)
        fast.iteration(n)
    return ref, fast


TINY = dict(image_size=32, nz=8, ngf=8, ndf=8, batch_size=4, n_critic=2, n_critic_warmup=3, lr=1e-3)


@pytest.mark.parametrize("loss,extra", [("wgan", {}), ("gan", {}), ("hinge", {}),
                                        # not the default weight: the engines must pass it on
                                        ("wgan-gp", dict(gp_weight=5.0)),
                                        ("wgan-gp", dict(gp_weight=5.0, critic_norm="layer"))])
def test_fast_eager_equals_reference_on_cpu(loss, extra):
    # fp32, the same operations through the twins: 1e-6 relative (rounding order only)
    cfg = Config(**TINY, loss=loss, **extra)
    ref, fast = run_both(cfg, iterations=[0, 30, 31])  # a 3-step warm-up phase, then n_critic = 2
    assert fast.impl == "ref"
    assert_same_state(ref.G, fast.G, rtol=1e-6, atol=1e-7)
    assert_same_state(ref.D, fast.D, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast.sums, ref.sums, rtol=1e-6, atol=1e-7)
    if loss == "wgan":
        assert max(p.abs().max().item() for p in fast.D.parameters()) <= cfg.clip
    if loss == "wgan-gp":  # penalty and gradient norm summed beside the losses; no clipping
        assert fast.sums.shape == (6,) and (fast.sums[4:] > 0).all()
        assert max(p.abs().max().item() for p in fast.D.parameters()) > cfg.clip
        assert isinstance(fast.opt_d, torch.optim.Adam) and fast.opt_d.defaults["betas"] == (0.0, 0.9)
    if loss == "hinge":  # the four sums of every loss; Adam with the recipe's betas, no clipping
        assert fast.sums.shape == (4,) and ref.sums[0] > 0
        assert max(p.abs().max().item() for p in fast.D.parameters()) > cfg.clip
        assert isinstance(fast.opt_d, torch.optim.Adam) and fast.opt_d.defaults["betas"] == (0.0, 0.9)


def test_fast_with_triton_kernels_under_interpreter():
    # Triton kernels (interpreted) in the whole loop at a tiny size. The fused BatchNorm sums in
    # another order, and RMSprop's first steps move each weight by about lr * sign(grad): a
    # gradient within rounding of zero can take either sign. Hence a bound per element of
    # 2 * 10 * lr per step (|update| <= lr / sqrt(1 - alpha) on the first step) and a tight
    # bound for all but a few elements.
    cfg = Config(**{**TINY, "ngf": 4, "ndf": 4, "batch_size": 2, "n_critic_warmup": 2, "lr": 1e-4})
    ref, fast = run_both(cfg, iterations=[0], impl="triton")
    for a, b in [(ref.G, fast.G), (ref.D, fast.D)]:
        pa = torch.cat([p.detach().flatten() for p in a.parameters()])
        pb = torch.cat([p.detach().flatten() for p in b.parameters()])
        diff = (pa - pb).abs()
        steps = 3
        assert diff.max() <= 2 * 10 * cfg.learning_rate * steps
        assert (diff > 1e-5 * pa.abs().clamp_min(1e-2)).float().mean() < 0.01


def test_fast_backend_trains_from_the_cli(tmp_path, monkeypatch, capsys):
    from fastwgan import checkpoint as ckpt_io
    from fastwgan import train

    from oddfiles import make_good_folder

    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    make_good_folder(tmp_path / "d", n=10)
    common = ["--preset", "smoke", "--no-progress", "--data", str(tmp_path / "d"), "--workers", "0"]
    out = tmp_path / "fast"
    assert train.main([*common, "--backend", "fast", "--out", str(out), "--iters", "3"]) == 0
    assert ckpt_io.load(out)["iteration"] == 3
    assert "engine: fast (plain-PyTorch twins, eager)" in capsys.readouterr().out
    assert (out / "samples" / "iter_000002.png").exists()
    # a checkpoint of one backend resumes in the other, both ways
    assert train.main(["--resume", str(out), "--backend", "reference", "--iters", "4", "--no-progress"]) == 0
    assert train.main(["--resume", str(out), "--backend", "fast", "--iters", "5", "--no-progress"]) == 0
    ck = ckpt_io.load(out)
    assert ck["iteration"] == 5 and ck["config"]["backend"] == "fast"


def options(opt):
    """Each param group's options (everything but the parameters)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def as_built_on_cuda(engine):
    """``engine``'s Adam optimizers with the options make_fast_optimizers gives them on CUDA
    (fused, capturable), which a CPU build cannot have: the options a resume must keep."""
    for opt in (engine.opt_g, engine.opt_d):
        for group in opt.param_groups:
            group.update(fused=True, capturable=True)
    return engine


@pytest.mark.parametrize("loss", ["gan", "wgan-gp", "hinge"])  # the losses trained with Adam
def test_resumed_optimizers_keep_the_engines_own_options(loss):
    """A checkpoint's optimizer states go into an engine with that engine's own fused,
    capturable, foreach options (torch's load_state_dict would take the checkpoint's), and each
    step count where the engine's optimizer keeps it (float32 on the parameter's device when
    fused or capturable), both ways: a reference (CPU) checkpoint into the fast engine as built on
    CUDA, which must then capture its graphs, and a fast CUDA checkpoint into the reference
    engine."""
    cfg = Config(**TINY, loss=loss)
    ref, fast = run_both(cfg, iterations=[0])
    as_built_on_cuda(fast)
    saved_ref = {"opt_g": ref.opt_g.state_dict(), "opt_d": ref.opt_d.state_dict()}
    saved_fast = {"opt_g": fast.opt_g.state_dict(), "opt_d": fast.opt_d.state_dict()}
    assert saved_ref["opt_d"]["param_groups"][0]["capturable"] is False  # what torch would restore
    cpu = torch.device("cpu")
    for saved, kind in ((saved_ref, FastEngine), (saved_fast, ReferenceEngine)):
        (G, D), _ = pair(cfg)
        engine = kind(cfg, G, D, FixedBatches(batches(cfg, 1)), cpu, None)
        if kind is FastEngine:
            as_built_on_cuda(engine)
        fresh = [options(engine.opt_g), options(engine.opt_d)]
        engine.load_optimizer_states(saved["opt_g"], saved["opt_d"])
        assert [options(engine.opt_g), options(engine.opt_d)] == fresh
        for opt, name in ((engine.opt_g, "opt_g"), (engine.opt_d, "opt_d")):
            loaded = [opt.state[p] for g in opt.param_groups for p in g["params"]]
            assert all(s["step"].dtype == torch.float32 and s["step"].device == cpu for s in loaded)
            for mine, theirs in zip(loaded, saved[name]["state"].values()):  # the state itself
                assert torch.equal(mine["exp_avg"], theirs["exp_avg"])
                assert torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"])
                assert float(mine["step"]) == float(theirs["step"]) > 0


class RecordedGraph:
    """Stands in for a CUDA graph on CPU: capture records the function, replay runs it."""

    def __init__(self, fn, pool=None, generators=()):
        self.fn, self.replays = fn, 0
        self.pool, self.generators = pool, list(generators)

    def replay(self):
        self.replays += 1
        self.fn()


@pytest.mark.parametrize("feed,loss", [("device sampler", "wgan"), ("host stream", "wgan"),
                                       ("device sampler", "gan"), ("device sampler", "wgan-gp"),
                                       ("device sampler", "hinge")])
def test_graph_bookkeeping_on_cpu(monkeypatch, feed, loss):
    """Warm-up, capture, which graph replays when, and the static input buffer of a host-fed
    stream, with recorded graphs on CPU: the result must equal the eager engine's, bit for bit."""
    from fastwgan import fast
    from fastwgan.data.sampler import ResidentSampler

    monkeypatch.setattr(fast, "capture_graph", RecordedGraph)
    # wgan-gp and hinge at their default, no warm-up phases
    cfg = Config(**{**TINY, "n_critic_warmup": None if loss in ("wgan-gp", "hinge") else TINY["n_critic_warmup"]},
                 loss=loss)
    (G, D), (G2, D2) = pair(cfg)
    if feed == "device sampler":
        data = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8)
        feeds = [ResidentSampler(data, cfg.batch_size), ResidentSampler(data, cfg.batch_size)]
    else:
        data = batches(cfg, 5)
        feeds = [FixedBatches(data), FixedBatches(data)]
    cpu = torch.device("cpu")
    eager = FastEngine(cfg, G, D, feeds[0], cpu, None, graphs=False)
    graph = FastEngine(cfg, G2, D2, feeds[1], cpu, None, graphs=False)
    graph.use_graphs = True  # CUDA-only otherwise
    iterations = [0, 30, 31, 500, 501]  # warm-up phase (eager), then replays, a phase again
    for it in iterations:
        torch.manual_seed(it)
        eager.iteration(cfg.n_critic_at(it))
        torch.manual_seed(it)
        graph.iteration(cfg.n_critic_at(it))
    expected = {"host stream": {"critic", "generator"}, "device sampler": {"critic", "generator", "iteration"}}
    # --loss gan, wgan-gp and hinge: no phases, only the iteration graph
    assert set(graph.graphs) == ({"iteration"} if loss != "wgan" else expected[feed])
    if loss != "wgan":
        assert graph.graphs["iteration"].replays == 4
    elif feed == "device sampler":
        assert graph.graphs["iteration"].replays == 3  # 30, 31 and 501: n_critic = 2
        assert graph.graphs["critic"].replays == cfg.n_critic_warmup  # 500: a 3-step phase
    else:
        assert graph.graphs["critic"].replays == 3 * cfg.n_critic + cfg.n_critic_warmup
        assert graph.data_position == eager.data_position == feeds[0].position
    if loss == "wgan":
        assert graph.graphs["generator"].replays == (1 if feed == "device sampler" else 4)
    assert_same_state(eager.G, graph.G, rtol=0, atol=0)
    assert_same_state(eager.D, graph.D, rtol=0, atol=0)
    assert torch.equal(eager.sums, graph.sums)


class HostSyncGuard(TorchDispatchMode):
    """Fails on what a CUDA graph cannot capture, seen from the CPU: an op that reads a value
    back to the host (``.item()``, ``bool(t)``, ``nonzero``, ...), a tensor made from host data
    inside the step (``torch.tensor(...)``: on CUDA a pageable host-to-device copy), and random
    numbers from a generator other than the default one (a graph replays only the default
    generator's offsets unless the generator is registered)."""

    HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "equal",
                  "allclose", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                  "unique_consecutive", "repeat_interleave", "lift_fresh"}

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.HOST_READS:
            raise AssertionError(f"aten.{name} in a captured step: it needs the host")
        if kwargs.get("generator") is not None:
            raise AssertionError(f"aten.{name} draws from a non-default generator in a captured step")
        self.ops += 1
        return func(*args, **kwargs)


def test_host_sync_guard_catches_host_reads():
    # the guard below is only as good as what it catches
    x = torch.ones(3)
    for bad in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.nonzero(),
                lambda: x * torch.tensor(2.0),
                lambda: torch.randn(3, generator=torch.Generator().manual_seed(0))):
        with pytest.raises(AssertionError), HostSyncGuard():
            bad()
    with HostSyncGuard() as guard:
        x.add_(1).mul_(torch.randn(3))
    assert guard.ops == 3


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_captured_steps_do_not_sync_with_the_host(monkeypatch, impl):
    """What the fast engine captures (the critic step with its device-side draw of real images
    and z, the generator step, the whole iteration) runs under HostSyncGuard, at capture and at
    every replay: no host synchronisation inside the loop, as CUDA graphs require. The Triton
    launch wrappers run too (kernels interpreted, tiny sizes).

    WGAN only: ``--loss gan`` uses torch's Adam, capturable on CUDA (its step count stays on the
    device) but not on a CPU, where it reads the step count back; the GPU tests capture it.
    """
    from fastwgan import fast
    from fastwgan.data.sampler import ResidentSampler

    def guarded(fn, **_):
        def run():
            with HostSyncGuard() as guard:
                fn()
            assert guard.ops > 0
        run()  # capture: the step's Python runs once
        return RecordedGraph(run)

    monkeypatch.setattr(fast, "capture_graph", guarded)
    small = dict(ngf=4, ndf=4, batch_size=2) if impl == "triton" else {}
    cfg = Config(**{**TINY, **small})
    (G, D), _ = pair(cfg)
    sampler = ResidentSampler(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8), cfg.batch_size)
    engine = FastEngine(cfg, G, D, sampler, torch.device("cpu"), None, graphs=False, impl=impl)
    engine.use_graphs = True  # CUDA-only otherwise
    for it in [0, 30, 500]:  # eager warm-up and capture, an iteration replay, a phase of replays
        engine.iteration(cfg.n_critic_at(it))
    assert engine.capture_error is None and set(engine.graphs) == {"critic", "generator", "iteration"}
    assert engine.graphs["iteration"].replays == 1
    assert engine.graphs["critic"].replays == cfg.n_critic_warmup


# --- GPU ---

def gpu_cfg(**kw):
    return Config(**{**dict(image_size=64, batch_size=64, n_critic=5, n_critic_warmup=7, lr=5e-5), **kw})


@pytest.mark.gpu
@pytest.mark.parametrize("feed,loss", [("host stream", "wgan"), ("device sampler", "wgan"),
                                       ("device sampler", "gan")])
def test_graph_replay_equals_eager(feed, loss):
    """Graph replays against the same engine run eagerly: the warm-up, the capture, replays of the
    iteration graph (a device sampler: the real batch and z drawn inside it) or of the step graphs
    (a host stream copied into the static buffer), and a warm-up phase replayed step by step. A
    replay draws the same random numbers as eager code from the same generator state."""
    from fastwgan.data.sampler import ResidentSampler

    cfg = gpu_cfg(loss=loss, lr=5e-5 if loss == "wgan" else 2e-4)
    (G, D), (G2, D2) = pair(cfg, "cuda")
    if feed == "device sampler":
        data = torch.randint(0, 256, (256, 64, 64, 3), dtype=torch.uint8, device="cuda")
        feeds = [ResidentSampler(data, cfg.batch_size), ResidentSampler(data, cfg.batch_size)]
    else:
        data = batches(cfg, 4, "cuda")
        feeds = [FixedBatches(data), FixedBatches(data)]
    dev = torch.device("cuda")
    eager = FastEngine(cfg, G, D, feeds[0], dev, None, graphs=False)
    graph = FastEngine(cfg, G2, D2, feeds[1], dev, None, graphs=True)
    torch.backends.cudnn.deterministic = True
    for it in [0, 30, 31, 500, 501]:  # eager warm-up, capture, replays, a warm-up phase replay
        n = cfg.n_critic_at(it)
        torch.cuda.manual_seed(it)
        eager.iteration(n)
        torch.cuda.manual_seed(it)
        graph.iteration(n)
    torch.cuda.synchronize()
    assert graph.capture_error is None
    if feed == "host stream":
        assert set(graph.graphs) == {"critic", "generator"}
    else:  # with --loss gan no step graphs: no warm-up phases to replay them
        assert set(graph.graphs) == ({"iteration"} if loss == "gan" else {"critic", "generator", "iteration"})
    # the same kernels on the same inputs; cuDNN may pick other algorithms per engine
    assert_same_state(eager.D, graph.D, rtol=1e-5, atol=2e-7)
    assert_same_state(eager.G, graph.G, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph.sums, eager.sums, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_capture_beside_a_pinned_memory_loader(tmp_path):
    """A streamed dataset: DataLoader workers and the pin-memory thread call CUDA while the steps
    are captured. To be sure such calls happen during the capture, a thread page-locks and
    releases host memory all along (cudaHostRegister: under torch's default "global" capture mode
    it fails in that thread and invalidates the capture). The capture must succeed
    (CAPTURE_ERROR_MODE), the other thread see no error, the stream go on in order."""
    import ctypes
    import mmap
    import threading

    from fastwgan.data import Batches, open_dataset

    from oddfiles import make_good_folder

    make_good_folder(tmp_path / "d", n=48)
    cfg = gpu_cfg(batch_size=8, n_critic=2, n_critic_warmup=3)
    (G, D), _ = pair(cfg, "cuda")
    dev = torch.device("cuda")
    batches = Batches(open_dataset(str(tmp_path / "d")), 64, None, cfg.batch_size, seed=0,
                      device=dev, mode="stream", workers=2, backend="pillow")
    engine = FastEngine(cfg, G, D, batches, dev, None, graphs=True)
    done, errors, calls = threading.Event(), [], [0]
    page_aligned = mmap.mmap(-1, 1 << 20)
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(page_aligned))
    cudart = torch.cuda.cudart()

    def lock_pages():
        try:
            while not done.is_set():
                torch.cuda.check_error(cudart.cudaHostRegister(ptr, 1 << 20, 0))
                torch.cuda.check_error(cudart.cudaHostUnregister(ptr))
                torch.empty(1 << 16).pin_memory()
                calls[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    locker = threading.Thread(target=lock_pages, daemon=True)
    locker.start()
    try:
        for it in [0, 30, 31, 500]:
            engine.iteration(cfg.n_critic_at(it))
        torch.cuda.synchronize()
    finally:
        done.set()
        locker.join(timeout=10)
    assert not errors, errors
    assert calls[0] > 0
    assert engine.capture_error is None and set(engine.graphs) == {"critic", "generator"}
    assert engine.data_position == 3 + 2 + 2 + 3
    assert torch.isfinite(engine.sums).all()


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_fast_triton_matches_reference_on_gpu(amp):
    if amp is None:  # fp32 means fp32: cuDNN's default TF32 convolutions keep 10 mantissa bits
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    cfg = gpu_cfg()
    ref, fast = run_both(cfg, iterations=[0], device="cuda", impl="triton", graphs=False, amp=amp)
    assert fast.impl == "triton"
    # losses of the 7 critic steps and the generator step: fp32 near 1e-4 relative (cuDNN in
    # another layout, BatchNorm sums in another order); bf16 relative to bf16's own error
    tol = dict(rtol=1e-3, atol=1e-4) if amp is None else dict(rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(fast.sums, ref.sums, **tol)
    steps = cfg.n_critic_at(0)
    for a, b in [(ref.D, fast.D), (ref.G, fast.G)]:
        pa = torch.cat([p.detach().flatten() for p in a.parameters()])
        pb = torch.cat([p.detach().flatten() for p in b.parameters()])
        diff = (pa - pb).abs()
        assert diff.max() <= 2 * 10 * cfg.learning_rate * steps  # see the interpreter test
        frac = (diff > 1e-3 * pa.abs().clamp_min(1e-2)).float().mean().item()
        assert frac < (0.01 if amp is None else 0.1), frac


def test_fast_resume_is_exact_on_cpu(tmp_path, monkeypatch):
    from fastwgan import checkpoint as ckpt_io
    from fastwgan import train

    from oddfiles import make_good_folder

    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    make_good_folder(tmp_path / "d", n=10)
    common = ["--preset", "smoke", "--no-progress", "--data", str(tmp_path / "d"), "--backend", "fast",
              "--data-mode", "resident", "--ckpt-every", "100", "--sample-every", "100"]
    assert train.main([*common, "--out", str(tmp_path / "once"), "--iters", "4"]) == 0
    assert train.main([*common, "--out", str(tmp_path / "twice"), "--iters", "2"]) == 0
    assert train.main(["--resume", str(tmp_path / "twice"), "--iters", "4", "--no-progress"]) == 0
    assert_same_training(ckpt_io.load(tmp_path / "once"), ckpt_io.load(tmp_path / "twice"))


class GraphWithGenerators:
    """Stands in for torch.cuda.CUDAGraph where it has ``register_generator_state``."""

    def register_generator_state(self, generator):
        pass


def test_graphs_share_one_pool_and_register_a_seeded_samplers_generator(monkeypatch):
    """A seeded ResidentSampler draws from its own generator: every captured graph gets it
    registered (else its replays would repeat the same draw), and all graphs capture into one
    memory pool. Recorded graphs on CPU; the replays equal the eager engine's, bit for bit."""
    from fastwgan import fast
    from fastwgan.data.sampler import ResidentSampler

    pool = object()
    monkeypatch.setattr(fast, "capture_graph", RecordedGraph)
    monkeypatch.setattr(fast, "graph_pool", lambda device: pool)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", GraphWithGenerators)
    cfg = Config(**TINY)
    (G, D), (G2, D2) = pair(cfg)
    data = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8)
    samplers = [ResidentSampler(data, cfg.batch_size, seed=7), ResidentSampler(data, cfg.batch_size, seed=7)]
    cpu = torch.device("cpu")
    eager = FastEngine(cfg, G, D, samplers[0], cpu, None, graphs=False)
    graph = FastEngine(cfg, G2, D2, samplers[1], cpu, None, graphs=False)
    graph.use_graphs = True  # CUDA-only otherwise
    for it in [0, 30, 31, 500]:
        torch.manual_seed(it)
        eager.iteration(cfg.n_critic_at(it))
        torch.manual_seed(it)
        graph.iteration(cfg.n_critic_at(it))
    assert set(graph.graphs) == {"critic", "generator", "iteration"}
    for g in graph.graphs.values():
        assert g.pool is pool
        assert g.generators == [samplers[1].generator]
    assert_same_state(eager.D, graph.D, rtol=0, atol=0)
    assert torch.equal(samplers[0].generator.get_state(), samplers[1].generator.get_state())


def test_seeded_sampler_without_generator_registration_is_refused(monkeypatch):
    from fastwgan import fast
    from fastwgan.data.sampler import ResidentSampler

    class OldGraph:  # a torch whose CUDAGraph cannot register generators
        pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", OldGraph)
    data = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    assert fast.graph_generators(ResidentSampler(data, 4)) == []  # the default generator: fine
    with pytest.raises(ValueError, match="create the sampler without a seed .* or pass graphs=False"):
        fast.graph_generators(ResidentSampler(data, 4, seed=1))


@pytest.mark.gpu
def test_resumed_wgan_gp_run_captures_its_graphs(tmp_path, monkeypatch):
    """A wgan-gp run written by the reference engine on the CPU, resumed on CUDA with the fast
    engine: its Adam keeps the fused, capturable options of a fresh fast engine (with its step
    counts on the device), so the iteration is captured and replayed, not run eagerly."""
    from fastwgan import run, train
    from fastwgan.data import Batches, open_dataset
    from fastwgan.distributed import SINGLE
    from fastwgan.runconfig import parse_config

    from oddfiles import make_good_folder
    from tiny import smoke_flags

    monkeypatch.setenv("FASTWGAN_CACHE", str(tmp_path / "cache"))
    make_good_folder(tmp_path / "d", n=10)
    out = tmp_path / "r"
    assert train.main([*smoke_flags("wgan-gp", str(tmp_path / "d")), "--device", "cpu",
                       "--backend", "reference", "--out", str(out), "--iters", "2"]) == 0
    cfg, resume, _ = parse_config(["--resume", str(out), "--device", "cuda", "--backend", "fast",
                                   "--iters", "4"])
    dev = torch.device("cuda")
    data = Batches(open_dataset(cfg.data), cfg.image_size, cfg.crop, cfg.batch_size, cfg.seed, dev,
                   mode="resident", workers=0, backend="pillow")
    engine = run.setup_models(cfg, dev, None, data, SINGLE, resume)
    for opt in (engine.opt_g, engine.opt_d):
        group = opt.param_groups[0]
        assert group["fused"] is True and group["capturable"] is True
        assert all(s["step"].is_cuda for s in opt.state.values())
    for it in range(2):  # the eager warm-up and the capture, then a replay
        engine.iteration(cfg.n_critic_at(2 + it))
    torch.cuda.synchronize()
    assert engine.capture_error is None and engine.use_graphs
    assert set(engine.graphs) == {"iteration"}


@pytest.mark.gpu
def test_graph_replay_with_a_seeded_sampler_equals_eager():
    """A seeded sampler in the captured iteration: each replay draws new indices from its
    generator, as the eager engine does with the same seed."""
    from fastwgan.data.sampler import ResidentSampler

    cfg = gpu_cfg()
    (G, D), (G2, D2) = pair(cfg, "cuda")
    data = torch.randint(0, 256, (256, 64, 64, 3), dtype=torch.uint8, device="cuda")
    samplers = [ResidentSampler(data, cfg.batch_size, seed=3), ResidentSampler(data, cfg.batch_size, seed=3)]
    dev = torch.device("cuda")
    eager = FastEngine(cfg, G, D, samplers[0], dev, None, graphs=False)
    graph = FastEngine(cfg, G2, D2, samplers[1], dev, None, graphs=True)
    torch.backends.cudnn.deterministic = True
    for it in [0, 30, 31, 32]:
        torch.cuda.manual_seed(it)
        eager.iteration(cfg.n_critic_at(it))
        torch.cuda.manual_seed(it)
        graph.iteration(cfg.n_critic_at(it))
    torch.cuda.synchronize()
    assert graph.capture_error is None
    assert torch.equal(samplers[0].index, samplers[1].index)  # the last draw of each
    assert_same_state(eager.D, graph.D, rtol=1e-5, atol=2e-7)
    assert_same_state(eager.G, graph.G, rtol=1e-4, atol=1e-5)


def test_one_batch_critic_step_equals_two_calls_step_by_step():
    # real and fake as one batch with per-half BatchNorm statistics (the kernels' critic step)
    # against the reference's two calls, one critic step at a time from the same state, fp32.
    # Only the convolutions' reduction order differs (one over 2N samples instead of two sums):
    # the losses and the running statistics to 1e-6, the counters exactly; RMSprop normalises
    # each gradient, so a rounding error moves a weight by about lr * 1e-6, except where the
    # gradient is within rounding of 0 and eps weighs in: 99% of the weights to 5e-9, all to
    # 1e-7 (2e-4 of the largest first step, 10 lr = 5e-4)
    cfg = Config(**{**TINY, "lr": 5e-5})
    (G, D), (G2, D2) = pair(cfg, "cpu")
    data = batches(cfg, 4, "cpu")
    ref = ReferenceEngine(cfg, G, D, FixedBatches(data), torch.device("cpu"), None)
    fast = FastEngine(cfg, G2, D2, FixedBatches(data), torch.device("cpu"), None, graphs=False)
    assert not fast.step_cfg.one_batch  # the twins keep the reference's two calls by default
    fast.step_cfg.one_batch = True
    for i in range(3):
        for engine in (ref, fast):
            torch.manual_seed(1000 + i)
            engine.critic()
        torch.testing.assert_close(fast.sums, ref.sums, rtol=1e-6, atol=1e-9)
        for (k, a), b in zip(ref.D.state_dict().items(), fast.D.state_dict().values()):
            if a.is_floating_point():
                tol = dict(rtol=0, atol=1e-7) if "running" not in k else dict(rtol=1e-6, atol=1e-9)
                torch.testing.assert_close(b, a, msg=lambda m, k=k: f"step {i}, {k}: {m}", **tol)
                assert (b - a).abs().le(5e-9).float().mean() >= 0.99, k
            else:  # num_batches_tracked: +2 per critic step, as two calls
                assert torch.equal(a, b) and a.item() == 2 * (i + 1), k
        # the weights start equal again, so that each step is checked on its own
        with torch.no_grad():
            for p, q in zip(fast.D.parameters(), ref.D.parameters()):
                p.copy_(q)
