"""The self-check (``python -m fastwgan.check``) on a CPU, and the trainer's start-of-run check of
the kernels, with kernels made to fail or to disagree with their twins."""
import importlib
import json

import pytest
import torch

from fastwgan import build, check, parity, train
from fastwgan.config import Config

from oddfiles import make_good_folder

bn_mod = importlib.import_module("fastwgan.kernels.bn_act")
rc_mod = importlib.import_module("fastwgan.kernels.rmsprop_clip")
CPU = torch.device("cpu")


def compile_error(*args, **kwargs):
    raise RuntimeError("PassManager::run failed (simulated compilation error)")


def off_by_a_little(*args, **kwargs):
    """The twin's output moved by 1e-2: a kernel that runs but computes something else."""
    kwargs.pop("impl", None)
    return bn_mod.bn_act_ref(*args, **kwargs) + 1e-2


def no_update(param, grad, square_avg, lr, alpha, eps, clip=None, step=None, *, impl="triton"):
    """An optimizer kernel that launches and writes nothing but the step count."""
    step.add_(1)


pytestmark = pytest.mark.usefixtures("private_cache")


# --- python -m fastwgan.check ----------------------------------------------------------------------

def test_cpu_run_passes_what_a_cpu_can_and_skips_the_gpu_parts(tmp_path):
    lines = []
    out = tmp_path / "check.json"
    assert check.main(["--json", str(out)], echo=lines.append) == 0
    text = "\n".join(lines)
    report = json.loads(out.read_text())
    status = {r["name"]: r["status"] for r in report["results"]}
    # the twins and the interpreted kernels ran and passed (conftest.py sets TRITON_INTERPRET=1)
    for name in ("kernel rmsprop_clip critic (3,000 fp32, clip 0.01)",
                 "kernel bn_act 2x16x4x4 fp32 channels_last relu train",
                 "kernel bn_act 2x16x4x4 fp32 NCHW leaky_relu train",
                 "fast engine vs reference, fp32, step by step",
                 "sweep: grouped network of 2 members vs their single runs"):
        assert status[name] == "PASS", (name, text)
        assert f"PASS  {name}  (" in text
    # what needs a GPU says so
    for name in ("fast engine: CUDA graph replay vs eager",
                 "kernels compiled for the GPU at the trainer's shapes"):
        assert status[name] == "SKIP"
        reason = next(r["detail"] for r in report["results"] if r["name"] == name)
        assert reason.startswith("no CUDA device here")
    assert "FAIL" not in status.values()
    # DALI's CPU decoder where DALI is installed, else a skip with the reason
    from fastwgan.data.dali import dali_available
    assert status["DALI decode vs Pillow"] == ("PASS" if dali_available() else "SKIP")
    assert report["exit_code"] == 0 and report["device"] == "cpu"
    assert {"torch", "triton", "cuda driver", "gpu", "dali"} <= set(report["environment"])
    assert all(r["seconds"] >= 0 for r in report["results"])
    assert lines[-1].endswith("(no CUDA device here: the GPU checks were skipped)")


@pytest.mark.parametrize("patch, kernel, expected", [
    (compile_error, "bn_act", "RuntimeError: PassManager::run failed"),
    (off_by_a_little, "bn_act", "y: max |fast - ref_fp32|"),
    (no_update, "rmsprop_clip", "param:"),
])
def test_a_kernel_that_fails_or_disagrees_is_a_fail_line(monkeypatch, patch, kernel, expected):
    monkeypatch.setattr(bn_mod if kernel == "bn_act" else rc_mod, kernel, patch)
    results = [check.run_check(name, fn) for name, fn in check.kernel_checks(CPU, full=False)
               if kernel in name]
    assert results and all(r.status == "FAIL" for r in results)
    assert expected in results[0].detail, results[0].detail


def test_exit_status_and_json_follow_the_results(tmp_path, monkeypatch):
    def skipped():
        raise check.Skip("not here")

    def failed():
        raise AssertionError("wrong values")

    checks = [("fine", lambda: None), ("skipped", skipped)]
    monkeypatch.setattr(check, "all_checks", lambda device, full, cfg: iter(checks))
    out = tmp_path / "c.json"
    assert check.main(["--json", str(out)], echo=lambda line: None) == 0  # skips are not failures
    checks.append(("broken", failed))
    lines = []
    assert check.main(["--json", str(out)], echo=lines.append) == 1
    report = json.loads(out.read_text())
    assert [(r["name"], r["status"]) for r in report["results"]] == [
        ("fine", "PASS"), ("skipped", "SKIP"), ("broken", "FAIL")]
    assert report["results"][2]["detail"] == "wrong values" and report["exit_code"] == 1
    assert any(line.startswith("FAIL  broken  (") and line.endswith(": wrong values") for line in lines)
    assert lines[-1].startswith("1 passed, 1 failed, 1 skipped")


def test_bad_json_folder_is_one_line_and_exit_2(tmp_path, capsys):
    lines = []
    assert check.main(["--json", str(tmp_path / "missing" / "c.json")], echo=lines.append) == 2
    assert lines == [f"error: --json {tmp_path / 'missing' / 'c.json'}: the folder "
                     f"{tmp_path / 'missing'} does not exist"]
    with pytest.raises(SystemExit) as e:
        check.main(["--no-such-flag"])
    assert e.value.code == 2


def test_speed_table_rows():
    rows = check.bench(CPU, seconds_per_row=0.01)
    assert [r["engine"] for r in rows] == ["reference (plain PyTorch, eager), fp32",
                                           "fast (plain-PyTorch twins, eager), fp32"]
    assert rows[0]["x_reference"] == 1.0 and all(r["img_per_s"] > 0 for r in rows)
    assert check.bench_table(rows).count("\n") == 3


# --- the trainer's start-of-run check ----------------------------------------------------------

@pytest.fixture
def guard_on_cpu(monkeypatch):
    """The start-of-run check applies on CUDA only; here it runs on the CPU (the kernels under the
    interpreter, tiny shapes), and --backend auto picks the fast engine as it does on CUDA."""
    monkeypatch.setattr(parity, "guard_applies", lambda device: True)
    monkeypatch.setattr(build, "resolve_backend",
                        lambda cfg, device: "fast" if cfg.backend == "auto" else cfg.backend)


def test_guard_passes_healthy_kernels(guard_on_cpu):
    assert parity.start_of_run_problem(Config(), CPU, None) is None


def test_guard_does_not_touch_the_runs_random_numbers(guard_on_cpu):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert parity.start_of_run_problem(Config(), CPU, None) is None
    assert torch.equal(torch.rand(3), expected)


def test_guard_is_off_without_cuda():
    # the real condition: a CPU run builds the fast engine with the twins, nothing to check
    assert not parity.guard_applies(CPU)
    assert parity.start_of_run_problem(Config(), CPU, None) is None


def _train(tmp_path, *flags):
    make_good_folder(tmp_path / "d", n=10)
    out = tmp_path / "run"
    code = train.main(["--preset", "smoke", "--no-progress", "--workers", "0", "--data", str(tmp_path / "d"),
                       "--out", str(out), "--iters", "2", *flags])
    return code, out


@pytest.mark.parametrize("kernel, patch, expected", [
    ("rmsprop_clip", compile_error, "the fused RMSprop + clip kernel failed its check against the "
                                    "PyTorch twin on cpu: RuntimeError: PassManager::run failed"),
    ("bn_act", off_by_a_little, "the fused BatchNorm + activation kernel (2x16x4x4, fp32) failed its "
                                "check against the PyTorch twin on cpu: y: max |fast - ref_fp32|"),
])
def test_auto_backend_falls_back_to_the_reference_with_one_warning(
        tmp_path, monkeypatch, guard_on_cpu, kernel, patch, expected):
    monkeypatch.setattr(bn_mod if kernel == "bn_act" else rc_mod, kernel, patch)
    code, out = _train(tmp_path)
    assert code == 0
    log = (out / "train.log").read_text()
    warnings = [line for line in log.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: " + expected)
    assert warnings[0].endswith("training with the reference engine instead (python -m fastwgan.check "
                                "for the details)")
    assert "engine: reference (plain PyTorch, eager)" in log


# The trainer runs here in pytest's process, where DeprecationWarnings are shown (a command line
# run ignores them, Python's default): Triton 3.6's interpreter raises numpy's "conversion of an
# array with ndim > 0 to a scalar" for the kernels' run-time loop bounds, which train.log would get.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_healthy_kernels_keep_the_fast_engine(tmp_path, guard_on_cpu):
    code, out = _train(tmp_path)
    log = (out / "train.log").read_text()
    assert code == 0 and "engine: fast" in log and "warning" not in log


def test_explicit_fast_backend_stops_with_the_checks_message(tmp_path, monkeypatch, capsys, guard_on_cpu):
    monkeypatch.setattr(bn_mod, "bn_act", off_by_a_little)
    code, out = _train(tmp_path, "--backend", "fast")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: --backend fast: the fused BatchNorm + activation kernel (2x16x4x4, fp32) failed its "
        "check against the PyTorch twin on cpu: y: max |fast - ref_fp32|")
    assert err[0].endswith("Run python -m fastwgan.check for the details, or train with --backend reference")
    assert "stopped: --backend fast: the fused BatchNorm" in (out / "train.log").read_text()
    assert not (out / "checkpoint.pt").exists()


def test_dali_that_does_not_fit_the_driver_is_a_skip_with_the_reason(monkeypatch):
    from fastwgan.data import dali

    if not dali.dali_available():
        assert check.dali_fits() == (False, "NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(check, "dali_cuda_major", lambda: 13)
    monkeypatch.setattr(check, "cuda_driver_version", lambda: (12, 8))
    usable, why = check.dali_fits()
    assert not usable and why.endswith("is built for CUDA 13, the driver supports CUDA 12.8: "
                                       "install nvidia-dali-cuda120")
    r = check.run_check("DALI decode vs Pillow", lambda: check.check_dali(torch.device("cuda")))
    assert r.status == "SKIP" and r.detail == why
    monkeypatch.setattr(check, "cuda_driver_version", lambda: (13, 0))
    assert check.dali_fits()[0]


# --- ties at the activation's threshold, what a FAIL means, the order --------------------------------

def plant_tie(x, w, b, at):
    """x with the element ``at`` moved so that its pre-activation with the batch's statistics is 0
    to within fp32 rounding (the statistics move with it: a fixed point, reached in a few steps)."""
    x = x.clone()
    c = at[1]
    for _ in range(20):
        var, mean = torch.var_mean(x[:, c].double(), unbiased=False)
        x[at] = (mean - b[c].double() * (var + 1e-5).sqrt() / w[c].double()).float()
    return x


def test_a_tie_is_left_out_and_counted_on_the_kernels_line(monkeypatch):
    def inputs_with_a_tie(*args, **kwargs):
        x, w, b, rm, rv, dy = bn_inputs(*args, **kwargs)
        return plant_tie(x, w, b, (1, 5, 2, 3)), w, b, rm, rv, dy

    bn_inputs = parity.bn_inputs
    monkeypatch.setattr(parity, "bn_inputs", inputs_with_a_tie)
    name = "kernel bn_act 2x16x4x4 fp32 NCHW leaky_relu train"
    fn = dict(check.kernel_checks(CPU, full=False))[name]
    r = check.run_check(name, fn)  # the kernel under the interpreter
    assert r.status == "PASS", r.detail
    assert r.detail == "1 of 512 elements within rounding of the leaky_relu threshold left out of the gradients"


def test_a_fail_says_whether_the_kernel_ran(monkeypatch):
    monkeypatch.setattr(bn_mod, "bn_act", off_by_a_little)
    disagrees = [check.run_check(n, fn) for n, fn in check.kernel_checks(CPU, full=False) if "bn_act" in n]
    assert {(r.status, r.error) for r in disagrees if r.status != "SKIP"} == {("FAIL", "AssertionError")}
    monkeypatch.setattr(bn_mod, "bn_act", compile_error)
    broken = [check.run_check(n, fn) for n, fn in check.kernel_checks(CPU, full=False) if "bn_act" in n]
    assert {(r.status, r.error) for r in broken if r.status != "SKIP"} == {("FAIL", "RuntimeError")}
    assert check.run_check("fine", lambda: None).error == ""


def test_engines_are_checked_before_the_kernel_matrix():
    names = [name for name, _ in check.all_checks(CPU, full=False)]
    assert names[:4] == ["import fastwgan.kernels", "fast engine: CUDA graph replay vs eager",
                         "fast engine vs reference, fp32, step by step",
                         "sweep: grouped network of 2 members vs their single runs"]
    assert all(n.startswith("kernel") for n in names[4:-1]) and len(names) > 6
    assert names[-1] == "DALI decode vs Pillow"


def test_guard_message_counts_the_ties(guard_on_cpu, monkeypatch):
    monkeypatch.setattr(bn_mod, "bn_act", off_by_a_little)
    problem = parity.start_of_run_problem(Config(), CPU, None)
    assert problem.endswith("(0 of 512 elements within rounding of the leaky_relu threshold left out "
                            "of the gradients)"), problem
