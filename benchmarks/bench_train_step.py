"""One CUT training step: ``--model cut`` against ``--model qs`` (each available QS-Attn backend).

The issue's target (H100/H200, 256x256, batch 1, median over >= 50 steps after warm-up): qs with the
fastest fused backend in global mode costs at most 1.05x cut; reference is reported beside them.

    python benchmarks/bench_train_step.py --gpu_ids 0                      # the full-size GPU report
    python benchmarks/bench_train_step.py --gpu_ids -1 --size 32 --ngf 8 --steps 5 --warmup 1   # CPU smoke
    python -m pytest benchmarks/bench_train_step.py                         # pytest-benchmark, tiny, CPU

A step is ``CUTModel.optimize`` on a batch already on the device (D step, then G and netF step; data
loading excluded), timed with a device synchronisation around it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import pytest
import torch

import qsattn_fast as q
from qsattn_fast.registry import Request
from qsattn_fast.train import options
from qsattn_fast.train.data import synthetic_pair
from qsattn_fast.train.model import CUTModel
from qsattn_fast.train.trainer import pick_device


def available_backends(device: torch.device, mode="global") -> list[str]:
    """Registered QS-Attn backends that can run a float32 ``mode`` route on ``device``."""
    req = Request("route", device.type, torch.float32, mode)
    return [name for name, be in q.backends().items() if not be.why_not(req)]


def make_step(model_name, backend, size=256, ngf=64, batch=1, mode="global", gpu_ids="-1", bf16=False, extra=()):
    """(model, batch) for one configuration; ``model.optimize(batch)`` is the step."""
    argv = ["--dataset_mode", "synthetic", "--model", model_name, "--crop_size", str(size), "--load_size", str(size),
            "--ngf", str(ngf), "--ndf", str(ngf), "--batch_size", str(batch), "--gpu_ids", gpu_ids,
            "--qs_mode", mode, "--qs_backend", backend, *(["--bf16"] if bf16 else []), *extra]
    opt = options.parse(argv)
    device = pick_device(gpu_ids)
    torch.manual_seed(0)
    model = CUTModel(opt, device)
    pairs = [synthetic_pair(0, i, size) for i in range(batch)]
    data = {"A": torch.stack([p[0] for p in pairs]).to(device), "B": torch.stack([p[1] for p in pairs]).to(device)}
    return model, data


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_time(model, data, steps=50, warmup=10) -> float:
    """Median seconds of ``steps`` timed steps after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        _sync(model.device)
        t = time.perf_counter()
        model.optimize(data)
        _sync(model.device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(size=256, ngf=64, batch=1, mode="global", gpu_ids="0", steps=50, warmup=10, backends=None, bf16=False):
    """Median step times of cut and of qs per backend; returns rows with the ratio to cut."""
    device = pick_device(gpu_ids)
    backends = backends or available_backends(device, mode)
    rows = []
    for model_name, backend in [("cut", "auto")] + [("qs", b) for b in backends]:
        row = {"model": model_name, "backend": backend if model_name == "qs" else "-", "mode": mode}
        try:
            model, data = make_step(model_name, backend, size, ngf, batch, mode, gpu_ids, bf16)
            row["median_ms"] = median_step_time(model, data, steps, warmup) * 1e3
            del model, data
        except (RuntimeError, ValueError) as e:  # one failing backend (e.g. out of memory) leaves the rest
            row["median_ms"], row["error"] = float("nan"), str(e).splitlines()[0][:200]
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        r["vs_cut"] = r["median_ms"] / rows[0]["median_ms"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu_ids", default="0", help="GPU id or -1 for CPU")
    p.add_argument("--size", type=int, default=256, help="crop size (square)")
    p.add_argument("--ngf", type=int, default=64, help="ngf and ndf")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--mode", default="global", choices=["global", "local", "local_global"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--backends", nargs="*", default=None, help="QS backends (default: every available one)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--json", default=None, help="also write the rows and the device to this file")
    a = p.parse_args(argv)
    rows = report(a.size, a.ngf, a.batch_size, a.mode, a.gpu_ids, a.steps, a.warmup, a.backends, a.bf16)
    device = pick_device(a.gpu_ids)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; {a.size}x{a.size}, batch {a.batch_size}, ngf {a.ngf}, median of {a.steps} steps")
    print(f"{'model':6} {'backend':10} {'mode':13} {'median ms':>10} {'x cut':>7}")
    for r in rows:
        print(f"{r['model']:6} {r['backend']:10} {r['mode']:13} {r['median_ms']:10.2f} {r['vs_cut']:7.3f}"
              + (f"  ({r['error']})" if "error" in r else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "args": vars(a), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return rows


@pytest.mark.parametrize("config", ["cut", "qs-reference", "qs-torch"])
def bench_train_step_tiny_cpu(benchmark, config):
    model_name, _, backend = config.partition("-")
    model, data = make_step(model_name, backend or "auto", size=32, ngf=8, extra=["--netG", "resnet_6blocks",
                                                                               "--num_patches", "16", "--netF_nc", "16"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark(model.optimize, data)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
