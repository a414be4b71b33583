"""Measure every available backend across shapes: forward and forward+backward time, extra peak memory,
achieved GFLOP/s, and the time over the step's floor: the matrix products it must form at the dense fp32
matmul rate plus its exponentials at the register-resident exp rate (``harness.exp_gexps``; on one core
both share the FMA units, so the floor is their sum), both measured in the same run
(``flop_model.qsattn_floor``). Writes JSON (device, versions, commit, raw numbers, and the streaming rate
of ``torch.exp`` for comparison) and prints a table.

The floor ratio is reported two ways, because this machine's speed drifts by up to 1.7x within minutes:
"paired", the median over the timed steps of (step time / floor at the rates measured right after that
step, in the same process), and in brackets against the best rates of the whole run (best of 9 before and
after all runs), the conservative reading.

    python benchmarks/report.py                     # the default CPU list (minutes)
    python benchmarks/report.py --quick             # two small shapes, a smoke run
    python benchmarks/report.py --shapes global:64:4096:1 local:256:4096:1 --backends torch reference
    python benchmarks/report.py --op entropy --shapes global:3:68644:1 global:128:65536:1 --backends native

Each (shape, backend, pass) runs in a fresh subprocess; its extra peak memory is that of the first step
once the inputs exist (``qsattn_fast._memory.PeakMemory``: on CPU the rise of the reset resident-set
high-water mark, on CUDA of ``max_memory_allocated``). The work measured is harness.py's
``qsattn_<mode>``, one QS-Attn step as CUT+QS-Attn runs it: ``qsattn(x, [x, t], k)``
(select on the source, route source and target), and for forward+backward a weighted sum of both routed
outputs backpropagated to x and t. With ``--op entropy`` it is ``entropy_<mode>``, the selection's
entropies of x alone (forward only): the floor is then the entropy's own, and "G exp/s" its
exponentials over its time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import harness

DEFAULT_SHAPES = [f"global:64:{s * s}:1" for s in (32, 48, 64, 96, 128)] + ["global:256:4096:1",
                                                                             "local:256:4096:1"]
QUICK_SHAPES = ["global:16:256:2", "local:16:256:2"]


def parse_shape(text: str) -> dict:
    mode, c, n, b = text.split(":")
    side = int(round(int(n) ** 0.5))
    if side * side != int(n):
        raise argparse.ArgumentTypeError(f"--shapes: N={n} must be a square (N = H*W with H = W)")
    return dict(mode=mode, C=int(c), N=int(n), B=int(b), H=side, W=side)


# ---------------------------------------------------------------- worker (one measurement per process)
def worker(cfg: dict) -> dict:
    """harness.workload(backend, "<op>_<mode>") timed step by step, each step followed by the matmul and
    exp rates measured right after it."""
    what, dev = f"{cfg['op']}_{cfg['mode']}", cfg["device"]
    set_cpu_level(cfg.get("cpu_level"))
    fn = harness.workload(cfg["backend"], what, k=cfg["k"])
    # initialisation
    harness.runner(fn, *harness.inputs(what, cfg["C"], 8, cfg["B"], dev, cfg["backward"]), cfg["backward"])()
    run = harness.runner(fn, *harness.inputs(what, cfg["C"], cfg["H"], cfg["B"], dev, cfg["backward"]),
                         cfg["backward"])
    peak = harness.peak_extra_bytes(run, dev)
    times, rates, exp_rates = [], [], []
    deadline = time.perf_counter() + cfg["budget_s"]
    while len(times) < cfg["repeats"] and (len(times) < 2 or time.perf_counter() < deadline):
        times.append(harness.seconds(run, dev))
        rates.append(harness.matmul_gflops(dev, repeats=1))   # the rates right after this step
        exp_rates.append(harness.exp_gexps(dev, repeats=1))
    return dict(peak_extra_bytes=peak, times_s=times, matmul_gflops_paired=rates, exp_gexps_paired=exp_rates)


def set_cpu_level(level):
    """Runs the native CPU loops (and the exp probe) at instruction-set level ``level`` (0 x86-64, 1 -v3,
    2 -v4; None: the detected one)."""
    if level is not None:
        from qsattn_fast import _C
        if _C.set_cpu_level(level) != level:
            raise SystemExit(f"--cpu-level {level}: this CPU runs at most level {_C.set_cpu_level(-1)}")


# ---------------------------------------------------------------- driver
def floor_s(res: dict, gflops: float, gexps: float) -> float:
    """The step's floor in seconds at these rates: its products plus its exponentials."""
    return res["floor_products_flop"] / (gflops * 1e9) + res["floor_exps"] / (gexps * 1e9)


def run_one(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", type=parse_shape, help="mode:C:N:B entries (N a square)")
    ap.add_argument("--quick", action="store_true", help="two small shapes, for a smoke run")
    ap.add_argument("--backends", nargs="+", help="default: every registered backend available here")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--op", default="qsattn", choices=["qsattn", "entropy"],
                    help="the whole QS-Attn step (default) or the selection's entropies alone")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per measurement after 2 repeats")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/report-<device>-<date>.json)")
    ap.add_argument("--cpu-level", type=int, choices=[0, 1, 2],
                    help="run the native CPU loops at x86-64 (0), -v3 = AVX2 (1) or -v4 = AVX-512 (2) "
                         "instead of the detected level, to compare them on one machine")
    ap.add_argument("--plot", metavar="JSON",
                    help="only draw the time/memory figure of a report's JSON (beside it, .png)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def summarise(res: dict, cfg: dict, op: str) -> None:
    """Adds to a worker's result ``res`` the floor's products and exps, the median time, GFLOP/s, and the
    paired floor ratio and exp fraction (each timed step against the rates measured right after it)."""
    dims = (f"{op}_{cfg['mode']}", cfg["C"], cfg["N"], cfg["B"], cfg["backward"], cfg["k"])
    res["floor_products_flop"], res["floor_exps"] = harness.floor(*dims)
    res["median_s"] = statistics.median(res["times_s"])
    res["gflops"] = harness.flops(*dims) / res["median_s"] / 1e9
    paired = list(zip(res["times_s"], res["matmul_gflops_paired"], res["exp_gexps_paired"]))
    res["floor_ratio_paired"] = statistics.median(t / floor_s(res, r, e) for t, r, e in paired)
    res["exp_fraction_paired"] = statistics.median(res["floor_exps"] / t / 1e9 / e for t, _, e in paired)


def measure(args, device: str) -> list[dict]:
    """One subprocess per (shape, backend, pass) that the backend runs; the rows of the report."""
    shapes = args.shapes or [parse_shape(s) for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)]
    names = args.backends or harness.peers(device)
    passes = (False,) if args.op == "entropy" else (False, True)
    todo = [(shape, name, backward) for shape in shapes for name in names for backward in passes
            if harness.workload(name, f"{args.op}_{shape['mode']}") is not None]
    rows = []
    for shape, name, backward in todo:
        cfg = dict(shape, op=args.op, backend=name, device=device, backward=backward,
                   k=min(args.k, shape["N"]), repeats=args.repeats, budget_s=args.budget,
                   cpu_level=args.cpu_level)
        print(f"[{len(rows) + 1}/{len(todo)}] {shape['mode']} C={shape['C']} N={shape['N']} B={shape['B']} "
              f"{name} {'fwd+bwd' if backward else 'fwd'}", file=sys.stderr, flush=True)
        res = run_one(cfg)
        if "times_s" in res:
            summarise(res, cfg, args.op)
        rows.append(dict(cfg, **res))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.plot:
        from qsattn_fast.plots import redraw
        print(f"wrote {redraw(args.plot, lambda data, png: plot(data['results'], data['environment'], png))}")
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_cpu_level(args.cpu_level)
    env = harness.environment(device)
    rate_before, exp_before = harness.matmul_gflops(device), harness.exp_gexps(device)
    rows = measure(args, device)
    env["matmul_fp32_gflops"] = max(rate_before, harness.matmul_gflops(device))   # measured before and after
    env["exp_fp32_gexps"] = max(exp_before, harness.exp_gexps(device))
    env["stream_exp_fp32_gexps"] = harness.stream_exp_gexps(device)   # torch.exp over a large array, for comparison
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"report-{device}-{env['date'][:10]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(environment=env, results=rows), fh, indent=1)
    print(table(rows, env))
    png = os.path.splitext(out)[0] + ".png"
    plot(rows, env, png)
    print(f"\nwrote {out} and {png}")
    return 0


def plot(rows: list[dict], env: dict, path: str) -> None:
    """Time and extra peak memory against N, log-log, one line per backend, mode, C and B (fwd+bwd where
    measured, else fwd): the reference is the released code's footprint. Written to ``path`` as PNG."""
    from qsattn_fast.plots import figure, save_figure
    lines: dict[tuple, list] = {}
    for r in rows:
        if "median_s" in r:
            lines.setdefault((r["backend"], r["mode"], r["C"], r["B"]), {})[(r["N"], r["backward"])] = r
    fig, axes = figure(1, 2, panel=(5.2, 4.0))
    styles = {}
    for (name, mode, C, B), pts in sorted(lines.items()):
        back = any(bw for _, bw in pts)
        ns = sorted(n for n, bw in pts if bw == back)
        style = styles.setdefault(name, f"C{len(styles)}")
        single = len(ns) == 1    # one shape of this kind: a marker of its own, no line
        marker = {"global": "D", "local": "s", "local_global": "^"}[mode] if single else "o"
        kw = dict(color=style, marker=marker, markersize=7 if single else 3.5, linestyle="none" if single else "-",
                  label=f"{name}, {mode}, C={C}" + (f", B={B}" if B > 1 else ""))
        axes[0, 0].plot(ns, [pts[n, back]["median_s"] * 1e3 for n in ns], **kw)
        axes[0, 1].plot(ns, [max(pts[n, back]["peak_extra_bytes"], 1) / 2**20 for n in ns], **kw)
    what = "fwd+bwd" if any(r.get("backward") for r in rows) else "fwd"
    for ax, label in zip(axes[0], (f"{what} time (ms)", "extra peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N = H x W positions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize="x-small")
    fig.suptitle(f"{env['device_name']} ({env['torch_threads']} threads), torch {env['torch']}: "
                 f"{rows[0]['op'] if rows else ''}", fontsize="medium")
    save_figure(fig, path)


def table(rows: list[dict], env: dict) -> str:
    """Markdown table: one line per (shape, backend) with fwd and fwd+bwd time, peak, rates, floor and
    speed-up; the columns after the times describe fwd+bwd (fwd alone with ``--op entropy``)."""
    ref = {(r["mode"], r["C"], r["N"], r["B"], r["backward"]): r for r in rows if r["backend"] == "reference"}
    mm, ex = env["matmul_fp32_gflops"], env["exp_fp32_gexps"]
    lines = [f"{env['device_name']} ({env['torch_threads']} threads, {env.get('cpu_isa') or env['device']}), "
             f"torch {env['torch']}, fp32 matmul {mm:.0f} GFLOP/s, register-resident exp {ex:.2f} G/s "
             f"(torch.exp over a large array {env['stream_exp_fp32_gexps']:.2f} G/s), commit {env['commit'][:10]}",
             "",
             "| mode | C | N | B | backend | fwd ms | fwd+bwd ms | extra peak MB | GFLOP/s | G exp/s "
             "(of the exp rate, paired) | floor ms: products + exps | time / floor: paired (best) "
             "| vs reference (time, memory) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["mode"], r["C"], r["N"], r["B"], r["backend"]), {})[r["backward"]] = r
    for (mode, C, N, B, name), pair in by_key.items():
        fwd, main = pair.get(False, {}), pair.get(True, pair.get(False, {}))
        if "error" in main or "error" in fwd:
            lines.append(f"| {mode} | {C} | {N} | {B} | {name} | error: {main.get('error') or fwd.get('error')} |")
            continue
        base = ref.get((mode, C, N, B, main["backward"]))
        vs = ""
        if base and name != "reference" and "median_s" in base:
            vs = f"speed-up {base['median_s'] / main['median_s']:.1f}x"
            if base["peak_extra_bytes"] >= 2**20:                 # below 1 MiB the RSS reading is noise
                vs += f", memory {main['peak_extra_bytes'] / base['peak_extra_bytes']:.3f}x"
        both = f"{main['median_s'] * 1e3:.1f}" if main["backward"] else "-"
        lines.append(f"| {mode} | {C} | {N} | {B} | {name} | {fwd['median_s'] * 1e3:.1f} | {both} "
                     f"| {main['peak_extra_bytes'] / 2**20:.1f} | {main['gflops']:.1f} "
                     f"| {main['floor_exps'] / main['median_s'] / 1e9:.2f} ({main['exp_fraction_paired']:.0%}) "
                     f"| {main['floor_products_flop'] / mm / 1e6:.2f} + {main['floor_exps'] / ex / 1e6:.2f} "
                     f"| {main['floor_ratio_paired']:.2f} ({main['median_s'] / floor_s(main, mm, ex):.2f}) | {vs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
