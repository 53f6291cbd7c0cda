"""The smallest training run through the command line (the ``smoke`` preset, no progress bar, no
loader processes), the comparison of two runs' checkpoints, exact resume across engines, and an
action after a given iteration of the engine the run builds."""
import torch

from fastwgan import build, train

TINY = ["--preset", "smoke", "--no-progress", "--workers", "0"]


def smoke_flags(loss: str, data: str, *flags) -> list[str]:
    """``TINY`` for ``--loss loss`` on the folder ``data``, resident, with no samples or
    checkpoints but the last: the command line of a loss's run tests."""
    return [*TINY, "--data", data, "--loss", loss, "--data-mode", "resident", "--ckpt-every", "100",
            "--sample-every", "100", *map(str, flags)]


def run(*args) -> int:
    """``python -m fastwgan.train`` with ``TINY`` and ``args``, in this process: its exit status."""
    return train.main([*TINY, *map(str, args)])


def tensors(ck: dict) -> dict:
    """Weights, running statistics and optimizer state of a checkpoint, by name."""
    named = {**{f"G.{k}": v for k, v in ck["generator"].items()},
             **{f"D.{k}": v for k, v in ck["critic"].items()}}
    for opt in ("opt_g", "opt_d"):
        for i, s in ck[opt]["state"].items():
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    named[f"{opt}.{i}.{k}"] = v
    return named


def assert_same_training(a: dict, b: dict) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def resume_is_exact_and_crosses_engines(tmp_path, common: list, backend: str) -> None:
    """4 iterations at once against 2 and a resume to 4 (the same weights, statistics, optimizer
    states and partial loss sums), under ``common`` flags and ``backend``; then the other engine
    continues the resumed run."""
    from fastwgan import checkpoint as ckpt_io

    common = [*common, "--backend", backend]
    assert train.main([*common, "--out", str(tmp_path / "once"), "--iters", "4"]) == 0
    assert train.main([*common, "--out", str(tmp_path / "twice"), "--iters", "2"]) == 0
    assert train.main(["--resume", str(tmp_path / "twice"), "--iters", "4", "--no-progress"]) == 0
    a, b = ckpt_io.load(tmp_path / "once"), ckpt_io.load(tmp_path / "twice")
    assert_same_training(a, b)  # weights, running statistics, both optimizers' states
    assert torch.equal(a["log_accum"]["sums"], b["log_accum"]["sums"])
    other = "fast" if backend == "reference" else "reference"
    assert train.main(["--resume", str(tmp_path / "twice"), "--iters", "5", "--backend", other,
                       "--no-progress"]) == 0
    assert ckpt_io.load(tmp_path / "twice")["iteration"] == 5


def after_iteration(monkeypatch, n: int, action):
    """``action()`` after the engine's ``n``-th iteration."""
    real = build.build_engine

    def patched(*a, **k):
        engine = real(*a, **k)
        iteration, calls = engine.iteration, []

        def counted(n_critic):
            iteration(n_critic)
            calls.append(n_critic)
            if len(calls) == n:
                action()

        engine.iteration = counted
        return engine

    monkeypatch.setattr(build, "build_engine", patched)
