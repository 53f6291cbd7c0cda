"""The Python API: ``from fastwgan import Config, train, load_generator``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastwgan
from fastwgan import Config, load_generator, train
from fastwgan import checkpoint as ckpt_io
from fastwgan import sample
from fastwgan.config import ConfigError


ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("private_cache")


def test_import_is_light():
    code = "import sys, fastwgan; print('torch' in sys.modules, sorted(fastwgan.__all__))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert p.stdout.split()[0] == "False", p.stdout + p.stderr


def test_train_from_python_is_the_cli_run(tmp_path, data):
    lines = []
    cfg = Config(preset="smoke", data=data, out=str(tmp_path / "api"), iters=3, workers=0, progress=False)
    summary = train(cfg, log=lines.append)
    assert summary["iteration"] == 3 and summary["out"] == str(tmp_path / "api")
    assert any(l.startswith("done: 3 iterations") for l in lines)
    # the same settings as flags: the preset applied under them, the same weights bit for bit
    assert train.main(["--preset", "smoke", "--data", data, "--out", str(tmp_path / "cli"), "--iters", "3",
                       "--workers", "0", "--no-progress"]) == 0
    a, b = ckpt_io.load(tmp_path / "api"), ckpt_io.load(tmp_path / "cli")
    assert {k: v for k, v in a["config"].items() if k != "out"} == {k: v for k, v in b["config"].items()
                                                                    if k != "out"}
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k
    assert "fastwgan.train(" in (tmp_path / "api" / "train.log").read_text()
    # keywords resume it, as --resume does
    assert train(resume=str(tmp_path / "api"), iters=4, progress=False, log=lines.append)["iteration"] == 4
    rows = [json.loads(l) for l in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    # a finished run is not an error
    assert train(resume=str(tmp_path / "api"), iters=4, log=lines.append)["iteration"] == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "--lr must be positive"),
    (dict(loss="wgan-typo"), "--loss must be one of"),       # argparse's choices, for a Config
    (dict(iters="100"), "--iters must be an integer"),        # and its types
    (dict(image_size=48), "--image-size must be one of"),
    (dict(amp=1), "--amp must be True or False"),
])
def test_bad_config_is_refused_as_on_the_command_line(tmp_path, data, kwargs, message):
    tiny = dict(preset="smoke", data=data, iters=1, workers=0, progress=False)  # quick if it ran
    with pytest.raises(ConfigError, match=message):
        train(Config(out=str(tmp_path / "r"), **{**tiny, **kwargs}), log=lambda line: None)
    assert not (tmp_path / "r").exists()


def test_unknown_setting_and_existing_run(tmp_path, data):
    with pytest.raises(ConfigError, match="unknown setting itters"):
        train(itters=5)
    common = dict(preset="smoke", data=data, out=str(tmp_path / "r"), iters=1, workers=0, progress=False)
    train(**common, log=lambda line: None)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(**common)


def test_load_generator_is_a_plain_module_in_eval_mode(tmp_path, data):
    assert train.main(["--preset", "smoke", "--data", data, "--out", str(tmp_path / "r"), "--iters", "1",
                       "--workers", "0", "--no-progress"]) == 0
    G = load_generator(str(tmp_path / "r"))
    assert isinstance(G, torch.nn.Module) and not G.training
    assert not any(m.training for m in G.modules())
    z = sample.noise(5, G.nz, seed=3)
    with torch.no_grad():
        x = G(z)
    assert x.shape == (5, 3, G.image_size, G.image_size) == (5, 3, 32, 32)
    assert torch.equal(x, sample.generate(G, 5, 3, torch.device("cpu")))  # what the sample CLI draws


def test_train_is_the_module_and_the_function_in_either_import_order():
    import fastwgan.train as module

    assert fastwgan.train is module is train and callable(train) and callable(train.main)
