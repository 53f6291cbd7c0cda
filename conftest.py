"""Shared by tests/ and bench/.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors: the variable must be
set before triton is first imported. GPU-marked tests are skipped there, with the reason.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (compiled kernels, CUDA graphs, nvJPEG); not available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
