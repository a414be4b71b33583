"""One command for a GPU machine (H100/H200) that fits a session's device time: build the CUDA extension,
check every op on CUDA, run compute-sanitizer over every kernel, take the GPU report and the training-step
times, in that order of priority, each stage's results written as soon as it ends.

    python benchmarks/gpu_check.py --all --budget 480     # everything, within 8 minutes (docs/gpu.md)
    python benchmarks/gpu_check.py --stage report step    # a second, shorter command for what was cut
    python benchmarks/gpu_check.py --all --dry-run        # the plan and its timeouts; touches neither GPU nor files

Stages (``--all``, in this order):
  build     pip install --no-build-isolation --no-deps --no-index -e . with QSATTN_FORCE_CUDA=1,
            TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=<cpus> (ninja compiles the sources in parallel); then checks
            that every operator qsattn::<op>.native has a CUDA kernel in qsattn_fast._C, and prints
            python -m qsattn_fast.info.
  test      the conformance suite on CUDA (tests/ops/test_conformance.py: every op x backend against the
            reference, opcheck, gradients), junit XML; counts and failing tests into the summary.
  sanitize  benchmarks/gpu_sanitize_driver.py --smallest once plainly (it fails fast and compiles the Triton
            kernels), then under compute-sanitizer --tool memcheck and racecheck (--tools adds synccheck,
            initcheck), with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation;
            per tool: exit code, the "ERROR SUMMARY: n errors" count, the first error lines, the tail. Where
            the sanitizer refuses the device, that is recorded and the next stage runs.
  report    benchmarks/gpu_report.py at S1 and S3, fp32-faithful (tf32x3; ieee for the other peers) and
            bf16, JSON.
  step      benchmarks/bench_train_step.py --gpu_ids 0 at 256x256: cut against qs (global, auto backend) on
            the last two layers and on all five, with peak memory; then one 512x512 all-layer step with its
            peak memory.

Every command runs as a subprocess with a timeout (``--timeout NAME=SECONDS``), all within ``--budget``
seconds for this invocation (default 480: 8 minutes of a 10-minute command limit, leaving the machine's
start and the copy back); a command that no longer fits is skipped (the summary says so, and the table
names the ``--stage`` command that runs what was cut), and a failing stage never stops the next. Full logs
go to files; stdout gets one line per command and a closing table. Output folder: ``--out``, else ``$OUT``
(what a GPU runner copies back), else benchmarks/results/gpu-check-<UTC date>; ``summary.json`` there
(device, driver, versions, commit; per stage its commands, exit codes, seconds and key numbers) is written
after every stage and merged with one already present, so several commands can share a folder. Exit
status 0 when every stage run passed. nvidia-smi is only queried; nothing changes the GPU's settings.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import gpu_sanitize_driver as driver

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
STAGES = ("build", "test", "sanitize", "report", "step")
TOOLS = ("memcheck", "racecheck")                 # the default ones; --tools may add the others
ALL_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
#: Seconds per command (--timeout NAME=SECONDS): build = pip install; plain = the driver without a sanitizer
#: (it compiles the Triton kernels); tool = each compute-sanitizer tool; step = the 256x256 comparison,
#: step512 = the 512x512 all-layer step. With the op check and info (CHECK_S each, a few seconds in
#: practice) the sum is about the default budget; a slow build pushes the last commands out, not the first.
TIMEOUTS = {"build": 150, "test": 75, "plain": 45, "tool": 40, "report": 60, "step": 60, "step512": 45}
BUDGET_S = 480
CHECK_S = 30                       # the build's op check and info (an import each: seconds)
MIN_STEP_S = 20                    # a command given less than this is skipped rather than started
SANITIZER_ERROR_RC = 99            # compute-sanitizer's exit status when it found errors
DRIVER = os.path.join("benchmarks", "gpu_sanitize_driver.py")

#: The build's check, in a fresh interpreter after the install: does every operator have a CUDA kernel?
CHECK_OPS = """\
import json, sys
import torch
import qsattn_fast._C  # an ImportError here names what is wrong with the build
from qsattn_fast.backends.native import has_kernel
path, ops = sys.argv[1], sys.argv[2:]
got = {op: has_kernel(op, "cuda") for op in ops}
with open(path, "w") as fh:
    json.dump({"cuda_kernels": got, "torch_cuda": torch.version.cuda}, fh, indent=1)
missing = [op for op, ok in got.items() if not ok]
print("CUDA kernels:", "missing " + ", ".join(missing) if missing else f"all {len(ops)} present")
sys.exit(1 if missing else 0)
"""

#: Versions, the device and whether qsattn_fast is installed, probed in a subprocess started outside the
#: repository root (whose qsattn_fast/ would import uninstalled), so that this process never initialises CUDA.
PROBE = """\
import json, platform, torch

def version(module):
    try:
        return __import__(module).__version__
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"

cuda = torch.cuda.is_available()
print(json.dumps(dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                      triton=version("triton"), qsattn_fast_at_start=version("qsattn_fast"), cuda_available=cuda,
                      device=torch.cuda.get_device_name(0) if cuda else None,
                      capability=list(torch.cuda.get_device_capability(0)) if cuda else None)))
"""


@dataclass
class Command:
    name: str
    argv: list
    timeout: float
    log: str                                   # file name in the output folder
    env: dict = field(default_factory=dict)    # set on top of the inherited environment
    blocked: str | None = None                 # why it cannot run here: recorded as failed, not started

    def show(self) -> str:
        """The command line, an inline script shown by name."""
        return shlex.join(f"<{self.name} script of gpu_check.py>" if "\n" in a else a for a in self.argv)


def progress(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)


def find_tool(name: str):
    """An NVIDIA tool on PATH, in $CUDA_HOME/bin or in the newest /usr/local/cuda*/bin; None if absent."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [os.path.join(os.environ["CUDA_HOME"], "bin")] if os.environ.get("CUDA_HOME") else []
    dirs += sorted(glob.glob("/usr/local/cuda*/bin"), reverse=True)
    for d in dirs:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


# ------------------------------------------------------------------ the stages' commands
def plan(stage: str, out: str, timeouts: dict, tools=TOOLS) -> list[Command]:
    """The commands of one stage."""
    t = timeouts.get(stage)
    if stage == "build":
        env = {"QSATTN_FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(os.cpu_count() or 1)}
        native = [op.partition("::")[2].partition(".")[0] for op in driver.registered_ops() if op.endswith(".native")]
        return [Command("pip", [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                                "-e", "."], t, "build_pip.log", env),
                Command("cuda_ops", [PY, "-c", CHECK_OPS, os.path.join(out, "build_cuda_ops.json"), *native],
                        CHECK_S, "build_cuda_ops.log"),
                Command("info", [PY, "-m", "qsattn_fast.info"], CHECK_S, "build_info.log")]
    if stage == "test":
        conformance = os.path.join("tests", "ops", "test_conformance.py")
        return [Command("pytest", [PY, "-m", "pytest", "-q", "-rfE", conformance,
                                   f"--junitxml={os.path.join(out, 'pytest.xml')}"], t, "test_pytest.log")]
    if stage == "sanitize":
        sanitizer = find_tool("compute-sanitizer")
        blocked = None if sanitizer else "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin)"
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
        run = [PY, DRIVER, "--smallest"]
        return [Command("plain", run, timeouts["plain"], "sanitize_plain.log")] + [
            Command(tool, [sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode",
                           str(SANITIZER_ERROR_RC), "--show-backtrace", "device", *run], timeouts["tool"],
                    f"sanitize_{tool}.log", env, blocked) for tool in tools]
    if stage == "report":
        return [Command("gpu_report", [PY, os.path.join("benchmarks", "gpu_report.py"), "--shapes", "S1", "S3",
                                       "--precisions", "tf32x3", "bf16", "--repeats", "5",
                                       "--out", os.path.join(out, "gpu_report.json")], t, "report.log")]
    step = [PY, os.path.join("benchmarks", "bench_train_step.py"), "--gpu_ids", "0", "--backends", "auto",
            "--mode", "global", "--memory"]
    return [Command("256", step + ["--size", "256", "--qs_layers", "default", "all", "--steps", "20", "--warmup",
                                   "5", "--json", os.path.join(out, "train_step_256.json")], t, "step_256.log"),
            Command("512", step + ["--size", "512", "--qs_layers", "all", "--steps", "3", "--warmup", "1",
                                   "--json", os.path.join(out, "train_step_512.json")], timeouts["step512"],
                    "step_512.log")]


# ------------------------------------------------------------------ running
def read_lines(path: str) -> list[str]:
    try:
        with open(path, errors="replace") as fh:
            return fh.read().splitlines()
    except OSError:
        return []


def execute(cmd: Command, out: str, deadline: float | None, t0: float, stage: str) -> dict:
    """Run one command with its log file and timeout (shortened to the budget); its record."""
    timeout = cmd.timeout if deadline is None else min(cmd.timeout, deadline - time.monotonic())
    log = os.path.join(out, cmd.log)
    rec = dict(name=cmd.name, command=cmd.show(), env=cmd.env, log=cmd.log, timeout_s=round(max(timeout, 0)))
    if cmd.blocked:
        progress(t0, f"{stage}/{cmd.name}: failed, {cmd.blocked}")
        return dict(rec, rc=None, seconds=0.0, status="failed", reason=cmd.blocked)
    if timeout < MIN_STEP_S:
        progress(t0, f"{stage}/{cmd.name}: skipped, {max(timeout, 0):.0f} s of the budget left")
        return dict(rec, rc=None, seconds=0.0, status="skipped", reason="out of the time budget (--budget)")
    progress(t0, f"{stage}/{cmd.name}: {cmd.show()[:150]} (timeout {timeout:.0f} s, log {cmd.log})")
    start = time.monotonic()
    with open(log, "w") as fh:
        try:
            proc = subprocess.Popen(cmd.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, **cmd.env}, start_new_session=True)
        except OSError as exc:
            return dict(rec, rc=None, seconds=0.0, status="failed", reason=f"could not start: {exc}")
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop(proc)
            rc, status = None, "timeout"
    rec.update(rc=rc, seconds=round(time.monotonic() - start, 1), status=status)
    progress(t0, f"{stage}/{cmd.name}: {status}" + (f" (rc {rc})" if rc else "") + f" in {rec['seconds']} s")
    if status != "ok":
        rec["tail"] = read_lines(log)[-15:]
    return rec


def stop(proc: subprocess.Popen) -> None:
    """Terminate a timed-out command and every process of its group (sanitizer and driver, pytest's
    children); kill what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


# ------------------------------------------------------------------ key results per stage
def _load_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def key_build(recs: list, out: str) -> tuple[dict, str, bool]:
    ops = (_load_json(os.path.join(out, "build_cuda_ops.json")) or {}).get("cuda_kernels")
    info = read_lines(os.path.join(out, "build_info.log")) if recs[-1].get("rc") == 0 else []
    if info:
        print("\n".join(info), flush=True)
    if not ops:
        return dict(info=info), "no op check (see build_*.log)", False
    missing = [op for op, ok in ops.items() if not ok]
    text = f"{len(ops) - len(missing)}/{len(ops)} CUDA ops" + (f"; missing {', '.join(missing)}" if missing else "")
    return dict(cuda_kernels=ops, info=info), text, not missing


def key_test(recs: list, out: str) -> tuple[dict, str, bool]:
    try:
        root = ET.parse(os.path.join(out, "pytest.xml")).getroot()
    except (OSError, ET.ParseError):
        return {}, "no junit XML (see test_pytest.log)", False
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped")
    return dict(counts, failed_tests=failed), text, not failed


def key_sanitize(recs: list, out: str) -> tuple[dict, str, bool]:
    key, parts, clean, plain = {}, [], True, "plain run: not run"
    for rec in recs:
        lines = read_lines(os.path.join(out, rec["log"]))
        cases = next((ln for ln in reversed(lines) if ln.endswith("cases ok")), None)   # the driver's last line
        if rec["name"] == "plain":
            key["plain"] = dict(rc=rec.get("rc"), cases=cases)
            plain = f"plain run: {cases or 'no result'}"
            clean &= rec.get("rc") == 0
            continue
        counts = re.findall(r"ERROR SUMMARY: (\d+) error", "\n".join(lines))
        errors = int(counts[-1]) if counts else None
        first = [ln for ln in lines if ln.startswith("=========") and not re.match(
            r"=+ (COMPUTE-SANITIZER|ERROR SUMMARY)", ln)][:15]
        key[rec["name"]] = dict(rc=rec.get("rc"), errors=errors, cases=cases, first_errors=first, tail=lines[-15:])
        parts.append(f"{rec['name']} {'?' if errors is None else errors}")
        clean &= errors == 0 and rec.get("rc") == 0
    return key, f"{plain}; errors: {', '.join(parts)}", clean


def key_report(recs: list, out: str) -> tuple[dict, str, bool]:
    report = _load_json(os.path.join(out, "gpu_report.json"))
    if not report:
        return {}, "no gpu_report.json (see report.log)", False
    rows = report["results"]
    errors = [r for r in rows if "error" in r]
    first = rows[0]["precision"] if rows else None
    s1 = {r["peer"]: r["median_s"] * 1e3 for r in rows if r["shape"] == "S1" and r["what"] == "qsattn_global"
          and r["backward"] and "median_s" in r and (r["peer"] != "triton" or r["precision"] == first)}
    key = dict(rows=len(rows), errors=len(errors), error_rows=[f"{r['shape']} {r['peer']} {r['precision']} "
                                                               f"{r['what']}: {r['error']}" for r in errors][:30],
               s1_qsattn_global_fwd_bwd_ms=s1)
    text = f"{len(rows)} rows, {len(errors)} errors; S1 global step fwd+bwd ms: " + \
        ", ".join(f"{p} {ms:.2f}" for p, ms in s1.items())
    return key, text, True


def key_step(recs: list, out: str) -> tuple[dict, str, bool]:
    key, parts = {}, []
    for rec in recs:
        data = _load_json(os.path.join(out, f"train_step_{rec['name']}.json"))
        if not data:
            parts.append(f"{rec['name']}: no JSON")
            continue
        rows = {("cut" if r["model"] == "cut" else f"qs {r['layers']} {r['mode']}"): r
                for r in data["rows"] if r["what"] == "step"}
        key[rec["name"]] = {name: dict(median_ms=r["median_ms"], vs_cut=r["vs_cut"], error=r.get("error"),
                                       peak_extra_bytes=r.get("peak_extra_bytes")) for name, r in rows.items()}
        cut = rows.get("cut", {}).get("median_ms", float("nan"))
        parts.append(f"{rec['name']}x{rec['name']}: cut {cut:.1f} ms, " + ", ".join(
            f"{name} {r['vs_cut']:.2f}x"
            + (f" {r['peak_extra_bytes'] / 2**30:.2f} GiB" if r.get("peak_extra_bytes") else "")
            for name, r in rows.items() if name != "cut"))
    return key, "; ".join(parts), len(key) == len(recs)


KEYS = {"build": key_build, "test": key_test, "sanitize": key_sanitize, "report": key_report, "step": key_step}


# ------------------------------------------------------------------ environment
def query(argv: list, timeout: float = 60, cwd: str = ROOT) -> str | None:
    """stdout of a read-only query command, or None when it is absent or fails."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit() -> str:
    """HEAD's commit (with "-dirty" for local changes to tracked files) by git, else from .git by hand."""
    commit = query(["git", "rev-parse", "HEAD"], 30)
    if commit:
        dirty = query(["git", "status", "--porcelain", "--untracked-files=no"], 30)
        return commit + ("-dirty" if dirty else "")
    head = os.path.join(ROOT, ".git", "HEAD")
    try:
        with open(head) as fh:
            ref = fh.read().strip()
        if not ref.startswith("ref: "):
            return ref
        ref = ref[5:]
        path = os.path.join(ROOT, ".git", ref)
        if os.path.exists(path):
            with open(path) as fh:
                return fh.read().strip()
        with open(os.path.join(ROOT, ".git", "packed-refs")) as fh:
            return next(ln.split()[0] for ln in fh if ln.rstrip().endswith(" " + ref))
    except (OSError, StopIteration):
        return "unknown"


def environment() -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               commit=git_commit(), cpus=os.cpu_count())
    probe = query([PY, "-c", PROBE], 120, cwd=HERE)
    env.update(json.loads(probe.splitlines()[-1]) if probe else dict(probe="failed: torch not importable?"))
    smi = find_tool("nvidia-smi")
    if smi:
        env["nvidia_smi"] = query([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    for tool in ("nvcc", "compute-sanitizer"):
        path = find_tool(tool)
        version = query([path, "--version"]) if path else None
        lines = (version or "").splitlines()
        env[tool] = next((ln for ln in lines if "release" in ln.lower()), lines[-1]) if lines else "not found"
    return env


# ------------------------------------------------------------------ main
def parse_timeouts(items: list) -> dict:
    timeouts = dict(TIMEOUTS)
    for item in items:
        name, sep, secs = item.partition("=")
        if not sep or name not in TIMEOUTS:
            raise SystemExit(f"--timeout: expected NAME=SECONDS with NAME one of {', '.join(TIMEOUTS)}, got {item!r}")
        try:
            timeouts[name] = float(secs)
        except ValueError:
            raise SystemExit(f"--timeout: {secs!r} is not a number of seconds") from None
    return timeouts


def table(stages: dict) -> str:
    rows = [("stage", "status", "seconds", "key result")] + [
        (name, s["status"], f"{s['seconds']:.1f}", s["result"]) for name, s in stages.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" | ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3]])
                     for r in rows)


def dry_run(stages: list, out: str, timeouts: dict, budget: float, tools=TOOLS) -> int:
    """Prints the plan: every command with its environment, timeout and log, and when each would start
    if every earlier one used its whole timeout (commands past the budget would be skipped)."""
    print(f"dry run: nothing is executed; output folder {out} (summary.json, logs)")
    print(f"budget {budget:.0f} s for this invocation" if budget else "no overall budget")
    print("would first probe: python (torch, triton, CUDA versions; device), nvidia-smi --query-gpu=name,"
          f"driver_version,memory.total, nvcc --version, compute-sanitizer --version; commit {git_commit()}")
    clock, cut = 0.0, []
    for stage in stages:
        print(f"\n== {stage}")
        for cmd in plan(stage, out, timeouts, tools):
            late = budget and clock + MIN_STEP_S > budget
            print(f"  {cmd.name}: {cmd.show()}")
            print(f"    env: {' '.join(f'{k}={v}' for k, v in cmd.env.items()) or '(inherited)'}; "
                  f"timeout {cmd.timeout:.0f} s; starts by {clock:.0f} s at the latest; "
                  f"log {os.path.join(out, cmd.log)}"
                  + (f"\n    not run, recorded as failed: {cmd.blocked}" if cmd.blocked else "")
                  + ("\n    past the budget if everything before it runs to its timeout" if late else ""))
            if late and stage not in cut:
                cut.append(stage)
            clock += cmd.timeout
    print(f"\nevery timeout used: {clock:.0f} s" + (f" against a budget of {budget:.0f} s" if budget else ""))
    if cut:
        print(f"then run the rest: python benchmarks/gpu_check.py --stage {' '.join(cut)} --out {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--stage", nargs="+", choices=STAGES + ("all",), default=["all"])
    ap.add_argument("--all", action="store_true", help="every stage, in priority order (the same as --stage all)")
    ap.add_argument("--tools", nargs="+", choices=ALL_TOOLS, default=list(TOOLS), help="compute-sanitizer tools")
    ap.add_argument("--out", help="output folder (default $OUT, else benchmarks/results/gpu-check-<UTC date>)")
    ap.add_argument("--timeout", action="append", default=[], metavar="NAME=SECONDS",
                    help=f"a per-command timeout (defaults {TIMEOUTS})")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for this whole invocation; 0: no limit")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, env, timeouts and paths; run nothing")
    args = ap.parse_args(argv)
    stages = list(STAGES) if args.all or "all" in args.stage else [s for s in STAGES if s in args.stage]
    timeouts = parse_timeouts(args.timeout)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = os.path.abspath(args.out or os.environ.get("OUT") or os.path.join(HERE, "results", f"gpu-check-{date}"))
    if args.dry_run:
        return dry_run(stages, out, timeouts, args.budget, args.tools)

    t0 = time.monotonic()
    deadline = t0 + args.budget if args.budget else None
    os.makedirs(out, exist_ok=True)
    summary_path = os.path.join(out, "summary.json")
    summary = _load_json(summary_path) or {}
    summary["environment"] = env = environment()
    progress(t0, f"{env.get('device') or 'no CUDA device'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
                 f"triton {env.get('triton')}; commit {env['commit'][:12]}; output {out}")
    if "build" not in stages and "not importable" in str(env.get("qsattn_fast_at_start", "not importable")):
        progress(t0, "warning: qsattn_fast is not installed here; on a fresh machine put the build first "
                     "(--stage build ...)")
    done = {}
    for stage in stages:
        start = time.monotonic()
        recs = [execute(cmd, out, deadline, t0, stage) for cmd in plan(stage, out, timeouts, args.tools)]
        key, result, good = KEYS[stage](recs, out)
        statuses = {r["status"] for r in recs}
        status = ("skipped" if statuses == {"skipped"} else "timeout" if "timeout" in statuses
                  else "ok" if statuses == {"ok"} and good else "failed")
        reasons = sorted({r["reason"] for r in recs if r.get("reason") and r["status"] == "failed"})
        done[stage] = dict(status=status, seconds=round(time.monotonic() - start, 1),
                           result="; ".join(reasons + [result]), commands=recs, key=key)
        summary.setdefault("stages", {})[stage] = done[stage]
        with open(summary_path, "w") as fh:               # after every stage: a later timeout loses nothing
            json.dump(summary, fh, indent=1)
    print("\n" + table(done))
    rest = [stage for stage, d in done.items() if any(c["status"] in ("skipped", "timeout") for c in d["commands"])]
    if rest:
        print(f"\ncut by the budget or a timeout; run the rest with: python benchmarks/gpu_check.py --stage "
              f"{' '.join(rest)} --out {out}")
    print(f"\nwrote {summary_path}")
    return 0 if all(s["status"] == "ok" for s in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
