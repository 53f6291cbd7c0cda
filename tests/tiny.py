"""The smallest training run through the command line (the ``smoke`` preset, no progress bar, no
loader processes), and the comparison of two runs' checkpoints."""
import torch

from fastwgan import train

TINY = ["--preset", "smoke", "--no-progress", "--workers", "0"]


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
