"""Where a QS-Attn training step's time goes: torch.profiler's CPU totals of the ``qsattn`` ops (entropy,
routing and their backwards, by input shape) over one ``optimize()`` step after a warm-up step.

    python benchmarks/profile_train_step.py --size 256 --qs_layers all        # every layer at 256x256

Writes JSON (the environment, the step's seconds, every qsattn op's count, total seconds and input
shapes) and prints the ops by total time. The input shapes tell the layers apart: (B, N, C) rows.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from qsattn_fast import OP_MODES
from qsattn_fast.train import options
from qsattn_fast.train.data import synthetic_pair
from qsattn_fast.train.models import create_model

from harness import environment


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--qs_layers", default="all")
    p.add_argument("--qs_mode", default="global", choices=OP_MODES["qsattn"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/profile-qs-...json)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    opt = options.parse(["--dataset_mode", "synthetic", "--model", "qs", "--qs_layers", a.qs_layers,
                         "--qs_mode", a.qs_mode, "--gpu_ids", "-1", "--crop_size", str(a.size),
                         "--load_size", str(a.size)])
    torch.manual_seed(0)
    model = create_model(opt, "cpu")
    pair = synthetic_pair(0, 0, a.size)
    data = {"A": pair[0][None], "B": pair[1][None]}
    model.optimize(data)                                       # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        model.optimize(data)
        step_s = time.perf_counter() - t
    ops = sorted((e for e in prof.key_averages(group_by_input_shape=True) if "qsattn" in e.key),
                 key=lambda e: -e.cpu_time_total)
    env = environment("cpu")
    out = {"what": f"one optimize() step, --model qs --qs_layers {a.qs_layers} --qs_mode {a.qs_mode}, "
                   f"{a.size}x{a.size}, B=1, default networks, auto backend, {torch.get_num_threads()} threads, "
                   "after a warm-up step; torch.profiler CPU totals (self + children) of the qsattn ops",
           "environment": env, "step_s": step_s,
           "ops": [{"op": e.key, "count": e.count, "cpu_total_s": e.cpu_time_total / 1e6,
                    "input_shapes": str(e.input_shapes)} for e in ops]}
    path = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 f"profile-qs-{a.qs_layers.replace(',', '-')}-{a.qs_mode}-cpu-{a.size}-"
                                 f"{env['date'][:10]}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"step {step_s:.1f} s on {env['device_name']}, {torch.get_num_threads()} threads")
    for e in ops:
        print(f"{e.key:58s} x{e.count:<3d} {e.cpu_time_total / 1e6:8.2f} s  {str(e.input_shapes)[:60]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
