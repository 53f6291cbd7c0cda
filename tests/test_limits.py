"""Limits of the command-line programs: Ctrl-C while they start, and large sample counts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastwgan import sample
from fastwgan.config import Config
from fastwgan.models import Generator
from fastwgan.startup import MESSAGE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torch_interrupted(tmp_path):
    """A PYTHONPATH on which importing torch is interrupted, as a Ctrl-C during its import."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}


@pytest.mark.parametrize("argv", [
    ["-m", "fastwgan.train", "--preset", "smoke"],
    ["-m", "fastwgan.sample", "runs/x"],
    ["-m", "fastwgan.eval", "runs/x"],
    # what the console scripts (setup.py) run
    ["-c", "import sys; from fastwgan.startup import train; sys.exit(train())"],
    ["-c", "import sys; from fastwgan.startup import sample; sys.exit(sample())"],
])
def test_ctrl_c_while_torch_imports_is_one_line(torch_interrupted, tmp_path, argv):
    r = subprocess.run([sys.executable, *argv], env=torch_interrupted, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.stderr.strip() == MESSAGE, r.stderr
    assert r.returncode in (130, -2)  # ended by SIGINT, as Python ends on an uncaught Ctrl-C
    assert list(tmp_path.iterdir()) == [tmp_path / "fake"]


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    cfg = Config(image_size=32, nz=8, ngf=4, ndf=4)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": cfg.to_dict(), "generator": Generator(32, 8, 4).state_dict()},
               run / "checkpoint.pt")
    return run


def test_sample_draws_and_writes_page_by_page(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, "PAGE", 16)
    held = []
    real_save = sample.save_grid
    monkeypatch.setattr(sample, "save_grid", lambda images, *a, **k: (held.append(len(images)),
                                                                      real_save(images, *a, **k))[1])
    assert sample.main([str(run_dir), "--n", "40", "--out", str(tmp_path / "g.png"), "--nrow", "4"]) == 0
    assert held == [16, 16, 8]  # never more than a page in memory
    sizes = [Image.open(tmp_path / f"g_{i:04d}.png").size for i in range(3)]
    assert sizes == [(138, 138), (138, 138), (138, 70)]  # 4 per row of 32 + 2 pixels
    assert not (tmp_path / "g.png").exists()
    assert "3 grids" in capsys.readouterr().out
    # up to a page: one file, the images of one draw
    assert sample.main([str(run_dir), "--n", "16", "--out", str(tmp_path / "one.png")]) == 0
    assert Image.open(tmp_path / "one.png").size == (138, 138)


def test_pages_are_the_images_of_one_draw(run_dir):
    G = sample.load_generator(run_dir).generator
    whole = sample.generate(G, 10, seed=3, device=torch.device("cpu"))
    pages = list(sample.generate_pages(G, 10, seed=3, device=torch.device("cpu"), page=10))
    assert len(pages) == 1 and torch.equal(pages[0], whole)
    pages = list(sample.generate_pages(G, 10, 3, torch.device("cpu"), page=4))
    assert [len(p) for p in pages] == [4, 4, 2]
    assert torch.equal(torch.cat(pages), whole)  # one noise stream across the pages
