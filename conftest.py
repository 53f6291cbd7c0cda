"""Shared by tests/ and bench/.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors: the variable must be
set before triton is first imported. GPU-marked tests are skipped there, with the reason.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The thread count as chosen, so that no run in the tests picks its own from the machine's load at
# its start (fastwgan.device.threads_for_load): runs compared bit for bit use the same count.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _subprocess_tmpdir(tmp_path_factory):
    """Processes the tests start (torchrun, trainer runs) make their temporary folders under
    pytest's own, which pytest prunes, instead of leaving them in /tmp: torchrun makes a
    ``torchelastic_*`` log folder per launch and does not remove it."""
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("subprocess-tmp"))
    yield
    if saved is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved


@pytest.fixture(autouse=True)
def _restore_backend_flags():
    """The fast engine turns on cuDNN's autotuner and tests may pin determinism or TF32: flags
    that are process-wide. Each test and benchmark starts from, and leaves, the same ones."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    yield
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (compiled kernels, CUDA graphs, nvJPEG); not available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
