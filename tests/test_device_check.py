"""bench/device_check.sh, the first call on a lent GPU machine, read and run in its parts on a CPU:
when its smoke step stops the run, and its step limits against what its header says fits."""
import json
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "device_check.sh"


def smoke_stops(tmp_path, results) -> bool:
    """Whether the script's ``smoke_failed`` stops the run on a check.json of ``results``
    (None: no check.json at all)."""
    if results is not None:
        (tmp_path / "check.json").write_text(json.dumps({"results": results}))
    function = re.search(r"^smoke_failed\(\) \{.*?^\}$", SCRIPT.read_text(), re.S | re.M).group(0)
    r = subprocess.run(["bash", "-c", f'{function}\nOUT="$1"; smoke_failed', "-", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def result(name, status="PASS", error=""):
    return {"name": name, "status": status, "seconds": 1.0, "detail": "", "error": error}


IMPORT = "import fastwgan.kernels"
KERNEL = "kernel bn_act 64x128x16x16 fp32 channels_last leaky_relu train"
ENGINE = "fast engine vs reference, fp32, step by step"


@pytest.mark.parametrize("results, stops", [
    pytest.param(None, True, id="no report: fastwgan does not import"),
    pytest.param([result(IMPORT, "FAIL", "ImportError")], True, id="kernels do not import"),
    pytest.param([result(IMPORT), result(KERNEL, "FAIL", "RuntimeError")], True,
                 id="a kernel does not compile or launch"),
    pytest.param([result(IMPORT), result(KERNEL, "FAIL", "AssertionError")], False,
                 id="a kernel disagrees with its twin: recorded, the run goes on"),
    pytest.param([result(IMPORT), result(ENGINE, "FAIL", "RuntimeError"), result(KERNEL)], False,
                 id="an engine check fails: recorded"),
    pytest.param([result(IMPORT), result(ENGINE)], False,
                 id="cut at the limit before the kernel matrix"),
    pytest.param([result(IMPORT), result(KERNEL, "SKIP")], False, id="skipped"),
])
def test_smoke_stops_only_when_something_does_not_import_or_launch(tmp_path, results, stops):
    assert smoke_stops(tmp_path, results) == stops


def stage1_limits() -> dict:
    """{step: limit in s} as stage 1 runs them, and as the header lists them."""
    text = SCRIPT.read_text()
    body = text.split('if [ "$STAGE" = 1 ]; then', 1)[1].split("\nelse\n", 1)[0]
    ran = {name: int(s) for name, s in re.findall(r"^\s+(?:\w+=\S+ )?(?:step|bench) ([\w-]+) (\d+) ",
                                                     body, re.M)}
    header = text.split("# Stage 1, in this order", 1)[1].split("# Stage 2:", 1)[0]
    listed = {name: int(s) for name, s in re.findall(r"^#   ([\w-]+) +(\d+) s ", header, re.M)}
    return ran, listed, text


def test_stage1_limits_add_up_to_what_the_header_says_fits_the_lease():
    ran, listed, text = stage1_limits()
    ran.pop("bench-scaling")  # only on a machine of several GPUs; the header says so
    assert ran == listed
    minutes = float(re.search(r"stage 1: step limits add up to ([\d.]+) minutes", text).group(1))
    assert sum(ran.values()) == minutes * 60
    # with the machine's start (2-3 minutes), within the lease of 15 minutes
    assert 3 + minutes <= 15
