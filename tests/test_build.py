"""One builder: what the trainer trains is what the self-check checks and the benchmarks time.

For every loss and preset, the networks built from the self-check's and the benchmarks' configs
have the trainer's module tree and parameter shapes; and no module outside ``fastwgan/models.py``
and ``fastwgan/build.py`` constructs a network itself (an AST scan of the package and bench/)."""
import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from fastwgan import check
from fastwgan.build import build_engine, build_networks
from fastwgan.config import PRESETS
from fastwgan.losses import LOSSES
from fastwgan.runconfig import preset_config
from fastwgan.train import parse_config

ROOT = Path(__file__).resolve().parents[1]
CASES = [(loss, preset) for loss in LOSSES for preset in (None, *PRESETS)]


def trainer_config(loss, preset):
    flags = ["--loss", loss, "--out", "unused"] + (["--preset", preset] if preset else [])
    return parse_config(flags)[0]


def settings(cfg) -> dict:
    """Every setting but the run folder."""
    return {k: v for k, v in cfg.to_dict().items() if k != "out"}


def shape(cfg):
    """The module tree (printed, with each block's kind) and every parameter's name and shape."""
    with torch.device("meta"):
        G, D = build_networks(cfg)
    return [(repr(net), [(n, tuple(p.shape)) for n, p in net.named_parameters()]) for net in (G, D)]


@pytest.mark.parametrize("loss, preset", CASES)
def test_the_self_checks_networks_are_the_trainers(loss, preset):
    cfg = trainer_config(loss, preset)
    assert settings(check.trainer_config(torch.device("cuda"), preset, loss)) == settings(cfg)
    for cuda in (True, False):
        checked = check.check_config(cfg, cuda)
        assert shape(checked) == shape(cfg)
        assert (checked.loss, checked.amp, checked.critic_normalization) == (cfg.loss, cfg.amp,
                                                                            cfg.critic_normalization)


@pytest.fixture
def bench_train(monkeypatch):
    """bench/test_bench_train.py, imported beside bench/conftest.py (which it imports as
    ``conftest``), outside pytest's collection of bench/."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "bench" / "conftest.py")
    bench_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_conftest)
    monkeypatch.setitem(sys.modules, "conftest", bench_conftest)
    monkeypatch.delitem(sys.modules, "test_bench_train", raising=False)
    return importlib.import_module("test_bench_train")


@pytest.mark.parametrize("loss", LOSSES)
def test_the_benchmarks_networks_are_the_trainers(loss, bench_train):
    for device, preset in ((torch.device("cuda"), None), (torch.device("cpu"), "cpu")):
        cfg = bench_train.bench_config(device, loss)
        assert settings(cfg) == settings(trainer_config(loss, preset))
        assert shape(cfg) == shape(trainer_config(loss, preset))


@pytest.mark.parametrize("loss", [None, *LOSSES])
def test_the_default_self_check_is_what_each_device_trains(loss):
    named = loss or "wgan"
    assert settings(check.trainer_config(torch.device("cpu"), loss=loss)) == settings(trainer_config(named, "cpu"))
    assert settings(check.trainer_config(torch.device("cuda"), loss=loss)) == settings(trainer_config(named, None))


@pytest.mark.parametrize("loss", LOSSES)
def test_engine_checks_run_the_trainers_networks(loss):
    """The self-check's fast-vs-reference comparison at the smoke preset's networks, each loss."""
    cfg = trainer_config(loss, "smoke")
    detail = check.check_fast_vs_reference(torch.device("cpu"), cfg)
    short = check.check_config(cfg, cuda=False)
    steps = sum(short.n_critic_at(it) + 1 for it in range(3))
    assert detail.startswith(f"{steps} steps, fast (plain-PyTorch twins, eager"), detail


def test_build_engine_picks_the_backend():
    cfg = preset_config("smoke")
    G, D = build_networks(cfg)
    source = iter(())
    assert build_engine(cfg, G, D, source, torch.device("cpu"), None).name == "reference"
    assert build_engine(cfg, *build_networks(cfg), source, torch.device("cpu"), None,
                        backend="fast").name == "fast"
    with pytest.raises(ValueError, match="backend must be"):
        build_engine(cfg, G, D, source, torch.device("cpu"), None, backend="quick")


def network_constructions(path: Path) -> list[str]:
    """Calls of ``Generator(...)``, ``Critic(...)`` (not ``torch.Generator``) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else None
            if name in ("Generator", "Critic"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_networks_are_built_in_one_place():
    files = [*sorted((ROOT / "fastwgan").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
    builders = {ROOT / "fastwgan" / "models.py", ROOT / "fastwgan" / "build.py"}
    found = [hit for f in files if f not in builders for hit in network_constructions(f)]
    assert not found, f"networks built outside fastwgan.build: {found}"
