"""The synthetic-task study: CUT, FastCUT, QS-Attn variants and CycleGAN over seeds, at one step budget.

    python benchmarks/study_synthetic.py     # 8 configurations x 4 seeds x 1 100 steps (about 40 min on 2 cores)
    python benchmarks/study_synthetic.py --configs cut qs_global --seeds 0 --epochs 2   # a quick look

Every run is ``qsattn-train --demo`` (the demo's task, data, networks, learning rate and, by default,
budget; ``--epochs N`` for another) with the configuration's model flags and one seed, evaluated
on the 100 held-out synthetic pairs after every epoch (``--eval_freq 1``, metrics SWD and the task's
measures, :data:`MEASURES`). Runs live in ``--runs`` (one trainer folder each) and ``--jobs`` of
them train at once, each on one thread. Killing the study loses little: a finished run (its eval log
holds the last epoch) is read back, an interrupted one continues from its latest state with
``--continue_train`` (the trainer resumes exactly).

Per configuration the summary gives mean and standard deviation over seeds of every measure at the last
epoch and at each run's best epoch (lowest SWD, the trainer's primary number on this task), Welch's t
test of each measure at the last epoch against the first configuration (``cut``), and the
median step time, measured after training in one process with the configurations' steps interleaved
round by round (``--timing_rounds``), so that the machine's drift touches them alike (the training logs'
step times, also kept per run, depend on what else ran at the time). Output: ``--out`` JSON (settings,
versions, commit, every run's eval log and step times, the summary) and a PNG of the three measures per
configuration (dots: seeds, bars: means).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import torch

from qsattn_fast.plots import figure, redraw, save_figure
from qsattn_fast.train import options
from qsattn_fast.train.data import synthetic_pair
from qsattn_fast.train.models import create_model

from bench_train_step import interleaved_times
from harness import environment

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "cut": ["--model", "cut"],
    "fastcut": ["--model", "fastcut"],
    "qs_global": ["--model", "qs", "--qs_mode", "global"],
    "qs_global_all": ["--model", "qs", "--qs_mode", "global", "--qs_layers", "all"],
    "qs_local": ["--model", "qs", "--qs_mode", "local"],
    "qs_local_global": ["--model", "qs", "--qs_mode", "local_global"],
    "qs_global_detached": ["--model", "qs", "--qs_mode", "global", "--qs_detach_attention"],
    "cycle_gan": ["--model", "cycle_gan"],
}
MEASURES = (("shape_iou", "higher is better; orders runs"), ("conformity", "higher is better"),
            ("detail_error", "lower is better"), ("background_error", "lower is better"),
            ("changed_iou", "higher is better"), ("image_error", "lower is better"), ("swd", "lower is better"))


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_argv(config, seed, args):
    """The trainer's argv for one run (``--continue_train`` added by the caller when resuming)."""
    argv = ["--demo", *CONFIGS[config], "--seed", str(seed), "--checkpoints_dir", args.runs,
            "--name", f"{config}-s{seed}", "--eval_freq", "1", "--eval_metrics", "swd,synthetic",
            "--torch_threads", "1", "--print_freq", "1", *shlex.split(args.trainer_args)]
    if args.epochs:
        argv += ["--n_epochs", str(args.epochs - args.epochs // 2), "--n_epochs_decay", str(args.epochs // 2)]
    return argv


def run_dir(config, seed, args):
    return os.path.join(args.runs, f"{config}-s{seed}")


def finished(config, seed, args) -> bool:
    """True when the run's eval log holds its last epoch."""
    folder = run_dir(config, seed, args)
    opt_path = os.path.join(folder, "opt.json")
    if not os.path.exists(opt_path):
        return False
    with open(opt_path) as f:
        opt = json.load(f)
    last = opt["n_epochs"] + opt["n_epochs_decay"]
    return any(r["epoch"] == last for r in read_jsonl(os.path.join(folder, "eval_log.jsonl")))


def start(config, seed, args):
    argv = run_argv(config, seed, args)
    if os.path.exists(os.path.join(run_dir(config, seed, args), "latest_state.pth")):
        argv.append("--continue_train")
    os.makedirs(args.runs, exist_ok=True)
    log = open(os.path.join(args.runs, f"{config}-s{seed}.log"), "a")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "qsattn_fast.train.trainer", *argv], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def train_all(todo, args):
    """Run the unfinished (config, seed) pairs, ``args.jobs`` at a time, printing progress."""
    pending = [t for t in todo if not finished(*t, args)]
    done = len(todo) - len(pending)
    print(f"study: {len(todo)} runs, {done} already finished, {len(pending)} to train ({args.jobs} at a time); "
          f"logs in {args.runs}", flush=True)
    running, durations, t0 = {}, [], time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            t = pending.pop(0)
            running[t] = (start(*t, args), time.time())
        time.sleep(2)
        for t, (proc, began) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[t]
            if proc.returncode != 0 or not finished(*t, args):
                for other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"study: run {t[0]} seed {t[1]} stopped before its last epoch (exit "
                                 f"{proc.returncode}); see "
                                 f"{args.runs}/{t[0]}-s{t[1]}.log; run the study again to resume it")
            done += 1
            durations.append(time.time() - began)
            left = statistics.fmean(durations) * (len(pending) + len(running)) / args.jobs
            print(f"study: {done}/{len(todo)} done ({t[0]} seed {t[1]}, {durations[-1] / 60:.1f} min), "
                  f"{(time.time() - t0) / 60:.1f} min so far, about {left / 60:.0f} min left", flush=True)


def step_times(folder):
    """Seconds between consecutive logged steps of one process (a resumed process restarts its clock)."""
    recs = read_jsonl(os.path.join(folder, "loss_log.jsonl"))
    return [b["time"] - a["time"] for a, b in zip(recs, recs[1:])
            if b["step"] == a["step"] + 1 and b["time"] > a["time"]]


def timed_steps(configs, args) -> dict:
    """Median seconds of one optimize() step per configuration (the runs' settings, batch of the demo's
    size, one thread), the configurations interleaved in each of ``args.timing_rounds`` rounds."""
    torch.set_num_threads(1)
    fns = {}
    for c in configs:
        opt = options.parse(run_argv(c, 0, args))
        torch.manual_seed(0)
        model = create_model(opt, "cpu")
        pairs = [synthetic_pair(0, i, opt.crop_size, opt.synthetic_task) for i in range(opt.batch_size)]
        data = {"A": torch.stack([p[0] for p in pairs]), "B": torch.stack([p[1] for p in pairs])}
        fns[c] = lambda model=model, data=data: model.optimize(data)
    times, errors = interleaved_times(fns, torch.device("cpu"), steps=args.timing_rounds, warmup=1)
    if errors:
        raise SystemExit(f"study: timing failed: {errors}")
    return {c: statistics.median(t) for c, t in times.items()}


def mean_std(xs):
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def welch(xs, ys) -> dict:
    """Welch's t test of two samples' means: t, the Welch-Satterthwaite degrees of freedom and the
    two-sided p-value (the t distribution's tail, integrated numerically); NaN where a sample has no spread."""
    import math
    (mx, vx, nx), (my, vy, ny) = ((statistics.fmean(s), statistics.variance(s), len(s)) for s in (xs, ys))
    se2 = vx / nx + vy / ny
    if se2 == 0:
        return {"t": math.nan, "df": math.nan, "p": math.nan}
    t = (mx - my) / math.sqrt(se2)
    df = se2 ** 2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1))
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # P(|T| > |t|) = 2 * integral over u in (0, 1] of f(|t| / u) |t| / u^2 du (substitution x = |t| / u).
    n, a = 2000, abs(t)
    if a == 0:
        return {"t": t, "df": df, "p": 1.0}
    f = [0.0] + [math.exp(log_c - (df + 1) / 2 * math.log1p((a / u) ** 2 / df)) * a / u ** 2
                 for u in (k / n for k in range(1, n + 1))]
    simpson = (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2])) / (3 * n)
    return {"t": t, "df": df, "p": min(1.0, 2 * simpson)}


def summarise(configs, seeds, args):
    runs, summary = {}, {}
    for c in configs:
        per_seed = []
        for s in seeds:
            folder = run_dir(c, s, args)
            evals = read_jsonl(os.path.join(folder, "eval_log.jsonl"))
            best = min(evals, key=lambda r: r["metrics"]["swd"])
            rec = {"config": c, "seed": s, "evals": [{"epoch": r["epoch"], "step": r["step"], **{
                m: r["metrics"][m] for m, _ in MEASURES}} for r in evals],
                "best_epoch": best["epoch"], "log_median_step_s": statistics.median(step_times(folder)),
                "selection": read_jsonl(os.path.join(folder, "selection_log.jsonl"))}
            runs[f"{c}-s{s}"] = rec
            per_seed.append(rec)
        summary[c] = {"last": {m: mean_std([r["evals"][-1][m] for r in per_seed]) for m, _ in MEASURES},
                      "best": {m: mean_std([next(e[m] for e in r["evals"] if e["epoch"] == r["best_epoch"])
                                            for r in per_seed]) for m, _ in MEASURES},
                      "steps": per_seed[0]["evals"][-1]["step"]}
    if len(seeds) > 1:
        base = configs[0]
        for c in configs[1:]:
            summary[c]["welch_vs_" + base] = {m: welch([runs[f"{c}-s{s}"]["evals"][-1][m] for s in seeds],
                                                       [runs[f"{base}-s{s}"]["evals"][-1][m] for s in seeds])
                                              for m, _ in MEASURES}
    return runs, summary


def table(summary) -> str:
    """Markdown table: mean ± std over seeds at the last epoch (best epoch by SWD in brackets; p: Welch's
    t test against the first configuration)."""
    arrows = {"higher": "↑", "lower": "↓"}
    names = ["configuration", *(f"{m} {arrows[h.split()[0]]}" for m, h in MEASURES), "median step s"]
    head = "| " + " | ".join(names) + " |\n" + "|---" * len(names) + "|\n"
    rows = []
    for c, s in summary.items():
        welch_p = {m: w["p"] for m, w in next((v for k, v in s.items() if k.startswith("welch_vs_")), {}).items()}
        cells = [f"{s['last'][m]['mean']:.3g} ± {s['last'][m]['std']:.2g} ({s['best'][m]['mean']:.3g})"
                 + (f", p {welch_p[m]:.2g}" if m in welch_p else "") for m, _ in MEASURES]
        rows.append(f"| {c} | " + " | ".join(cells) + f" | {s['median_step_s']:.2f} |")
    return head + "\n".join(rows)


def plot(runs, summary, path):
    """One panel per measure at the last epoch: each configuration's mean over seeds as a bar, its seeds
    as dots; written to ``path`` as PNG (matplotlib)."""
    configs = list(summary)
    fig, axes = figure(1, len(MEASURES), panel=(3.2, 3.4))
    for ax, (m, hint) in zip(axes[0], MEASURES):
        ax.bar(range(len(configs)), [summary[c]["last"][m]["mean"] for c in configs], color="C0", alpha=0.35)
        for i, c in enumerate(configs):
            seeds = [r["evals"][-1][m] for r in runs.values() if r["config"] == c]
            ax.plot([i] * len(seeds), seeds, "o", color="C0", markersize=4)
        ax.set_xticks(range(len(configs)), configs, rotation=60, ha="right", fontsize="small")
        ax.set_title(f"{m}\n({hint})", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("at the last epoch: bars the mean over seeds, dots the seeds")
    save_figure(fig, path)


def parse(argv=None):
    date = datetime.date.today().isoformat()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--epochs", type=int, default=0, help="epochs per run, half of them decaying (0: the demo's)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    p.add_argument("--trainer_args", default="", help="more qsattn-train flags for every run (quoted)")
    p.add_argument("--timing_rounds", type=int, default=5, help="interleaved rounds of the step-time measurement")
    p.add_argument("--runs", default=os.path.join(HERE, "study-runs"), help="folder of the runs")
    p.add_argument("--out", default=os.path.join(HERE, "results", f"study-synthetic-cpu-{date}.json"))
    p.add_argument("--replot", metavar="JSON", help="only redraw the PNG beside a study's JSON")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.replot:
        print(f"study: wrote {redraw(args.replot, lambda data, png: plot(data['runs'], data['summary'], png))}")
        return None
    date = datetime.date.today().isoformat()
    if len(args.seeds) < 2:
        print("study: one seed gives no spread; use several for conclusions", file=sys.stderr)
    t0 = time.time()
    train_all([(c, s) for c in args.configs for s in args.seeds], args)
    runs, summary = summarise(args.configs, args.seeds, args)
    print("study: timing one step of each configuration, interleaved", flush=True)
    for c, t in timed_steps(args.configs, args).items():
        summary[c]["median_step_s"] = t
    with open(os.path.join(run_dir(args.configs[0], args.seeds[0], args), "opt.json")) as f:
        settings = json.load(f)
    env = environment("cpu")
    result = {"date": date, "device": env["device_name"], "cpus": os.cpu_count(), "torch": torch.__version__,
              "commit": env["commit"], "dirty": env["dirty"], "argv": sys.argv[1:],
              "trainer_argv": {c: run_argv(c, "<seed>", args) for c in args.configs},
              "settings_of_first_run": settings,
              "wall_minutes": round((time.time() - t0) / 60, 1), "summary": summary, "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(runs, summary, png)
    print(table(summary))
    print(f"study: wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
