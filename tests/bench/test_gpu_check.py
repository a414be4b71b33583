"""benchmarks/gpu_check.py and benchmarks/gpu_sanitize_driver.py without a GPU: the dry run, the driver's
cases against the operators the sources register, its refusal without CUDA, and the parsing of results."""
import importlib.util
import os
import subprocess
import sys

import pytest

from support import ROOT

BENCH = str(ROOT / "benchmarks")


def _load(name):
    """benchmarks/<name>.py as a module, without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module                  # gpu_check imports the driver by this name
    spec.loader.exec_module(module)
    return module


driver = _load("gpu_sanitize_driver")
gpu_check = _load("gpu_check")


def test_dry_run_names_every_stage_and_tool_and_writes_nothing(tmp_path):
    out = tmp_path / "from_env"
    env = {**os.environ, "OUT": str(out)}
    res = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_check.py"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for stage in gpu_check.STAGES:
        assert f"== {stage}" in res.stdout
    for tool in gpu_check.TOOLS:
        assert f"--tool {tool}" in res.stdout
    assert "QSATTN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0" in res.stdout and "--precisions tf32x3 bf16" in res.stdout
    assert "tests/ops/test_conformance.py" in res.stdout and "--size 512" in res.stdout and "--smallest" in res.stdout
    assert str(out) in res.stdout and not out.exists()


def test_the_plan_fits_its_budget_in_priority_order(capsys):
    """--all --budget 480: the commands' timeouts in stage order; a worst case past the budget names the
    --stage command for the rest, and the rest begins with the last stages (priority order)."""
    assert gpu_check.main(["--all", "--budget", "480", "--dry-run", "--out", "/nonexistent/x"]) == 0
    text = capsys.readouterr().out
    total = sum(c.timeout for st in gpu_check.STAGES for c in gpu_check.plan(st, "/x", gpu_check.TIMEOUTS))
    assert f"every timeout used: {total:.0f} s against a budget of 480 s" in text
    stages = [ln[3:] for ln in text.splitlines() if ln.startswith("== ")]
    assert stages == list(gpu_check.STAGES)
    rest = next(ln for ln in text.splitlines() if ln.startswith("then run the rest"))
    cut = rest.split("--stage ")[1].split(" --out")[0].split()
    assert cut == list(gpu_check.STAGES[len(gpu_check.STAGES) - len(cut):])     # the tail of the order
    assert gpu_check.BUDGET_S == 480 and total < 1.25 * 480


def test_smallest_keeps_one_size_of_every_case(capsys):
    driver.main(["--list"])
    every = capsys.readouterr().out.splitlines()
    driver.main(["--list", "--smallest"])
    small = capsys.readouterr().out.splitlines()
    B, C, H, W = driver.SIZES[0][0]
    assert small and all(f"B{B} C{C} {H}x{W}" in line for line in small) and len(small) * 2 == len(every)


def test_step_results_are_parsed(tmp_path):
    rows = [dict(model="cut", backend="-", layers="-", mode="-", what="step", median_ms=30.0, vs_cut=1.0,
                 peak_extra_bytes=2**30),
            dict(model="qs", backend="auto", layers="all", mode="global", what="step", median_ms=60.0, vs_cut=2.0,
                 peak_extra_bytes=3 * 2**30),
            dict(model="qs", backend="auto", layers="all", mode="global", what="ops fwd", median_ms=9.0, vs_cut=0.3)]
    (tmp_path / "train_step_256.json").write_text(__import__("json").dumps(dict(rows=rows)))
    key, text, good = gpu_check.key_step([dict(name="256"), dict(name="512")], str(tmp_path))
    assert not good and "512: no JSON" in text and "qs all global 2.00x 3.00 GiB" in text
    assert key["256"]["qs all global"] == dict(median_ms=60.0, vs_cut=2.0, error=None, peak_extra_bytes=3 * 2**30)


def test_cases_cover_every_registered_op_of_both_backends():
    ops = driver.registered_ops()
    assert all(op.startswith("qsattn::") for op in ops) and len(ops) == 14
    assert sum(op.endswith(".triton") for op in ops) == 7 and sum(op.endswith(".native") for op in ops) == 7
    reached = {k for case in driver.CASES for k in case.kernels}
    assert set(ops) <= reached
    for backend in ("native", "triton"):
        for op in driver.OPS:
            dtypes = {c.dtype for c in driver.CASES if c.backend == backend and c.op == op}
            assert dtypes == {"float32", "bfloat16"}, (backend, op)
    assert {c.precision for c in driver.CASES if c.backend == "triton"} == {None, "ieee", "tf32", "bf16"}
    shapes = {c.shape for c in driver.CASES}
    assert {s[0] for s in shapes} == {1, 2} and all(s[1] % 2 and (s[2] * s[3]) % 16 for s in shapes)


def test_driver_without_cuda_exits_with_a_message(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        driver.main([])


def test_native_cases_reach_their_kernels_on_cpu():
    """The driver's claims checked by its own recorder (the first dispatch mode imports torch._dynamo, ~3 s)."""
    from qsattn_fast.backends import native
    if native.LOAD_ERROR:
        pytest.skip(native.LOAD_ERROR)
    small = driver.SIZES[0][0]
    for case in driver.CASES:
        if case.backend == "native" and case.shape == small:
            assert set(case.kernels) <= driver.run_case(case, "cpu"), case.name


def test_sanitizer_and_junit_results_are_parsed(tmp_path):
    (tmp_path / "sanitize_plain.log").write_text("ok   a\n76/76 cases ok\n")
    (tmp_path / "sanitize_memcheck.log").write_text(
        "========= COMPUTE-SANITIZER\n========= Invalid __global__ read of size 4 bytes\n"
        "=========     at _route_global_fwd_kernel+0x10\n========= ERROR SUMMARY: 2 errors\n")
    recs = [dict(name="plain", log="sanitize_plain.log", rc=0), dict(name="memcheck", log="sanitize_memcheck.log",
                                                                     rc=gpu_check.SANITIZER_ERROR_RC)]
    key, text, clean = gpu_check.key_sanitize(recs, str(tmp_path))
    assert not clean and key["memcheck"]["errors"] == 2 and "memcheck 2" in text and "76/76 cases ok" in text
    assert key["memcheck"]["first_errors"][0].endswith("read of size 4 bytes")
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_x"><failure message="boom"/></testcase>'
        '</testsuite></testsuites>')
    key, text, good = gpu_check.key_test([], str(tmp_path))
    assert not good and key["passed"] == 2 and key["failed_tests"] == ["tests.test_a::test_x"]


def test_a_command_past_its_timeout_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0)
    cmd = gpu_check.Command("sleepy", ["sh", "-c", "sleep 30 & sleep 30"], 0.5, "sleepy.log")
    rec = gpu_check.execute(cmd, str(tmp_path), None, 0.0, "test")
    assert rec["status"] == "timeout" and rec["rc"] is None and rec["seconds"] < 15
