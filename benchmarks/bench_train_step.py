"""One CUT training step: ``--model cut`` against ``--model qs`` (each available QS-Attn backend), and with
``--breakdown`` where a QS step's extra time goes; QS on several layer sets and modes side by side.

The target (H100/H200, 256x256, batch 1, median over >= 50 steps after warm-up): qs with the
fastest fused backend in global mode costs at most 1.05x cut; reference is reported beside them.

    python benchmarks/bench_train_step.py --gpu_ids 0                      # the full-size GPU report
    python benchmarks/bench_train_step.py --gpu_ids -1 --size 128 --steps 3 --warmup 1 --backends auto --breakdown
    python benchmarks/bench_train_step.py --gpu_ids -1 --size 32 --ngf 8 --steps 5 --warmup 1   # CPU smoke
    python -m pytest benchmarks/bench_train_step_tiny.py                    # pytest-benchmark, tiny, CPU
    python benchmarks/bench_train_step.py --gpu_ids -1 --backends auto --qs_layers default all \
        --mode global local --breakdown --memory --steps 3 --warmup 1   # every layer, 256x256

A step is ``CUTModel.optimize`` on a batch already on the device (D step, then G and netF step; data
loading excluded), timed with a device synchronisation around it. Every configuration is built first,
then timed in interleaved rounds (one call of each per round), so that a shared machine's drift touches
them alike. Rows (``what``): ``step`` for cut and for qs per backend; with ``--breakdown``, per backend
also ``step, detached attention`` (qs with ``--qs_detach_attention``: the source encoder is not
backpropagated through the attention rows) and the QS-Attn ops alone, ``ops fwd`` and ``ops fwd+bwd``:
the ``qsattn`` calls of one qs step (per QS layer, one for the NCE loss and one for the
identity loss, each routing source and target), recorded in a step and replayed on the same inputs,
summed per step. Every qs row is repeated for each ``--qs_layers`` set (``default``: the last two NCE
layers) and each ``--mode``. With ``--memory`` each step row also gets the extra peak memory of its first
timed step (``qsattn_fast._memory.PeakMemory``: on CPU the rise of the resident-set high-water mark), and
with ``--breakdown`` each qs step row the memory the released code would need at least for the same
calls (``released_attention_bytes``). Needs no pytest.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time
from unittest import mock

import torch

import qsattn_fast as q
from qsattn_fast import sampler
from qsattn_fast._memory import PeakMemory
from qsattn_fast.backends.base import Request
from qsattn_fast.registry import resolve
from qsattn_fast.train import options
from qsattn_fast.train.data import synthetic_pair
from qsattn_fast.train.models import create_model
from qsattn_fast.train.trainer import training_device

from harness import environment


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
    device = training_device(gpu_ids)
    torch.manual_seed(0)
    model = create_model(opt, device)
    pairs = [synthetic_pair(0, i, size) for i in range(batch)]
    data = {"A": torch.stack([p[0] for p in pairs]).to(device), "B": torch.stack([p[1] for p in pairs]).to(device)}
    return model, data


def qsattn_calls(model, data) -> list:
    """The QS-Attn calls of one step of ``model`` on ``data`` (the step is run to record them): a list of
    (feat_src, values, kwargs), the inputs detached into leaves that need a gradient where the step's did
    (a map passed twice, as the source is, stays one leaf)."""
    with mock.patch.object(sampler, "qsattn", wraps=sampler.qsattn) as spy:
        model.optimize(data)
    leaves = {}

    def leaf(t):
        if id(t) not in leaves:
            leaves[id(t)] = t.detach().requires_grad_(t.requires_grad)
        return leaves[id(t)]
    return [(leaf(c.args[0]), [leaf(v) for v in c.args[1]], c.kwargs) for c in spy.call_args_list]


def run_ops(calls, backward=False, autocast=None):
    """Run the recorded ``calls`` once (under the ``autocast`` context, as the step does; None: none); with
    ``backward``, also the gradient of every routed output (ones) w.r.t. the inputs that need one."""
    with autocast if autocast is not None else contextlib.nullcontext():
        outs = [o for f, values, kw in calls for o in q.qsattn(f, values, **kw)[1]]
    if backward:   # outputs without a graph (e.g. layer 0's routed source, the image itself) add nothing
        outs = [o for o in outs if o.requires_grad]
        inputs = list({id(t): t for f, values, _ in calls for t in (f, *values) if t.requires_grad}.values())
        torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])


def released_attention_bytes(f, kw) -> int:
    """What the released code keeps for the backward of one call on source features ``f`` (B, C, H, W),
    fp32, at least: the B x N x N attention in the global modes (``attn = dots.softmax(2)``, N = H W; the
    local_global mode forms it too), the unfolded window^2 C x N keys in the local mode."""
    B, C, H, W = f.shape
    if kw.get("mode", "global") == "local":
        return 4 * B * kw.get("window", 7) ** 2 * C * H * W
    return 4 * B * (H * W) ** 2


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict, device, steps=50, warmup=10, peaks: dict | None = None) -> tuple[dict, dict]:
    """Seconds of each of ``fns`` in ``steps`` rounds after ``warmup`` untimed ones; a round calls every fn
    once, in turn, so that drifts in the machine's speed (a shared CPU) touch them alike. Returns (times,
    errors): a fn that raises (e.g. out of memory) leaves the rounds with its error message. With ``peaks``
    (a dict), ``peaks[k]`` is set to the extra peak bytes of fn k's first timed call."""
    times, errors = {k: [] for k in fns}, {}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            if k in errors:
                continue
            mem = PeakMemory(device) if peaks is not None and i == warmup else contextlib.nullcontext()
            _sync(device)
            t = time.perf_counter()
            try:
                with mem:
                    fn()
            except (RuntimeError, ValueError) as e:
                errors[k] = str(e).splitlines()[0][:200]
                continue
            _sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
            if isinstance(mem, PeakMemory):
                peaks[k] = mem.extra_bytes
    return {k: v for k, v in times.items() if k not in errors}, errors


def report(size=256, ngf=64, batch=1, modes=("global",), gpu_ids="0", steps=50, warmup=10, backends=None, bf16=False,
           breakdown=False, extra=(), layer_sets=("default",), memory=False):
    """Median times of the cut step and, per QS layer set, mode and backend, of the qs step (and with
    ``breakdown`` of the qs step with detached attention and of its QS-Attn ops alone), measured in
    interleaved rounds; rows with the ratio of the medians to the cut step's (``vs_cut``) and the median of
    the per-round ratios (``vs_cut_paired``, the one to read on a noisy machine). With ``memory`` the step
    rows get ``peak_extra_bytes``. A configuration that fails (e.g. out of memory) gets its error in its
    row, and the others still run."""
    device = training_device(gpu_ids)
    configs = [("cut", "auto", "default", modes[0], "step", ())]
    for layers in layer_sets:
        for mode in modes:
            for b in backends or available_backends(device, mode):
                configs.append(("qs", b, layers, mode, "step", ()))
                if breakdown:
                    configs.append(("qs", b, layers, mode, "step, detached attention", ("--qs_detach_attention",)))
    rows, fns = [], {}
    for model_name, backend, layers, mode, what, flags in configs:
        row = {"model": model_name, "backend": backend if model_name == "qs" else "-",
               "layers": layers if model_name == "qs" else "-", "mode": mode if model_name == "qs" else "-",
               "what": what}
        if model_name == "qs" and backend == "auto":
            req = Request("qsattn", device.type, torch.bfloat16 if bf16 else torch.float32, mode)
            row["resolved"] = resolve("auto", req).name
        rows.append(row)
        try:
            layer_flags = () if layers == "default" else ("--qs_layers", layers)
            model, data = make_step(model_name, backend, size, ngf, batch, mode, gpu_ids, bf16,
                                    (*extra, *layer_flags, *flags))
            fns[len(rows) - 1] = functools.partial(model.optimize, data)
            if breakdown and model_name == "qs" and not flags:
                calls = qsattn_calls(model, data)
                row["released_attention_bytes"] = sum(released_attention_bytes(f, kw) for f, _, kw in calls)
                for what_ops, backward in (("ops fwd", False), ("ops fwd+bwd", True)):
                    rows.append(dict(row, what=what_ops, calls=len(calls)))
                    fns[len(rows) - 1] = functools.partial(run_ops, calls, backward, model.autocast)
        except (RuntimeError, ValueError) as e:
            rows[-1]["error"] = str(e).splitlines()[0][:200]
    peaks = {} if memory else None
    times, errors = interleaved_times(fns, device, steps, warmup, peaks)
    for i, r in enumerate(rows):
        if i in errors:
            r["error"] = errors[i]
        r["times_ms"] = [t * 1e3 for t in times.get(i, [])]
        r["median_ms"] = statistics.median(r["times_ms"]) if r["times_ms"] else float("nan")
        if peaks is not None and i in peaks and r["what"].startswith("step"):
            r["peak_extra_bytes"] = peaks[i]
    for r in rows:  # paired: the median over rounds of the ratio to the cut step of the same round
        r["vs_cut"] = r["median_ms"] / rows[0]["median_ms"]
        paired = [t / c for t, c in zip(r["times_ms"], rows[0]["times_ms"])]
        r["vs_cut_paired"] = statistics.median(paired) if paired else float("nan")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu_ids", default="0", help="GPU id or -1 for CPU")
    p.add_argument("--size", type=int, default=256, help="crop size (square)")
    p.add_argument("--ngf", type=int, default=64, help="ngf and ndf")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--mode", nargs="+", default=["global"], choices=q.OP_MODES["qsattn"],
                   help="QS modes, each measured")
    p.add_argument("--qs_layers", nargs="+", default=["default"],
                   help="QS layer sets, each measured: default (the last two), all, or a list such as 8,12,16")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--backends", nargs="*", default=None,
                   help="QS backends (default: every available one; auto: the one the trainer picks)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--breakdown", action="store_true",
                   help="per backend also the qs step with --qs_detach_attention and the QS-Attn ops alone")
    p.add_argument("--memory", action="store_true", help="extra peak memory of each step configuration")
    p.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows, the device, versions and commit to this file")
    a = p.parse_args(argv)
    if a.torch_threads > 0:
        torch.set_num_threads(a.torch_threads)
    try:
        training_device(a.gpu_ids)
    except ValueError as e:
        p.error(str(e))
    rows = report(a.size, a.ngf, a.batch_size, a.mode, a.gpu_ids, a.steps, a.warmup, a.backends, a.bf16, a.breakdown,
                  layer_sets=a.qs_layers, memory=a.memory)
    device = training_device(a.gpu_ids)
    env = environment(device.type)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else env["device_name"]
    print(f"device: {name}, {torch.get_num_threads()} threads, torch {torch.__version__}; {a.size}x{a.size}, "
          f"batch {a.batch_size}, ngf {a.ngf}, median of {a.steps} steps")
    print(f"{'model':6} {'backend':12} {'layers':8} {'mode':13} {'what':26} {'median ms':>10} {'x cut':>7} "
          f"{'paired':>7} {'peak MB':>8} {'released MB':>11}")
    for r in rows:
        backend = r["backend"] + (f"={r['resolved']}" if "resolved" in r else "")
        peak = f"{r['peak_extra_bytes'] / 2**20:8.0f}" if "peak_extra_bytes" in r else " " * 8
        released = (f"{r['released_attention_bytes'] / 2**20:11.0f}"
                    if "released_attention_bytes" in r and r["what"] == "step" else " " * 11)
        print(f"{r['model']:6} {backend:12} {r['layers']:8} {r['mode']:13} {r['what']:26} {r['median_ms']:10.2f} "
              f"{r['vs_cut']:7.3f} {r['vs_cut_paired']:7.3f} {peak} {released}"
              + (f"  ({r['error']})" if "error" in r else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(env, device=name, args=vars(a), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
