"""GPU report: the ``triton`` backend against ``reference`` and the strongest composition of PyTorch's own
fused attention ("sdpa"), at the issue's shapes, on one CUDA device in one run.

    python benchmarks/gpu_report.py                         # S1..S5, every peer, JSON + markdown table
    python benchmarks/gpu_report.py --shapes S1 --precisions ieee tf32x3 --repeats 20

Shapes (C, side, B), N = side^2, k = 256: S1 (256, 64, 1) the paper's setting; S2 (256, 128, 1);
S3 (256, 64, 4); S4 (128, 256, 1); S5 (3, 262, 1). For each shape, precision and peer it measures
(CUDA events, median) the global and local entropy, the selection, the global and local routing of two
value maps forward and forward+backward, and the whole global and local steps (entropy + selection +
routing of [x, t]) forward and forward+backward; extra peak memory (``max_memory_allocated`` over the level
once the inputs exist); TFLOP/s from the matrix-product FLOPs; and the fraction of the dense matmul rate
of the same precision measured in the same run (fp32 ieee: TF32 off; tf32; tf32x3 = a third of the tf32
rate, three tf32 products per fp32 product; bf16).

The "sdpa" peer: entropy H = lse - q . SDPA(q, K, V=K) with scale 1 (lse from the memory-efficient
kernel, ``aten._scaled_dot_product_efficient_attention``), selection by ``argsort(stable=True)``,
routing by SDPA over the concatenated values (autograd through SDPA's backward). Its entropy is the
textbook formula that cancels for peaked rows; the report records each peer's entropy error against the
float64 entropy on a 32x32 crop of the shape. ``reference`` materialises N x N: where it runs out of
memory the JSON records the error and the bytes its attention matrices alone would need.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

from flop_model import entropy_flops, qsattn_flops, route_flops

SHAPES = {"S1": (256, 64, 1), "S2": (256, 128, 1), "S3": (256, 64, 4), "S4": (128, 256, 1), "S5": (3, 262, 1)}
PEERS = ("triton", "sdpa", "reference")
PRECISIONS = ("tf32x3", "ieee", "tf32", "bf16")
K_SEL = 256


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_report.py needs a CUDA device (torch.cuda.is_available() is False); "
                         "benchmarks/report.py is the CPU/generic report")


def inputs(C: int, side: int, B: int, grad: bool = False, dtype=torch.float32):
    """Source x (scaled so rows are peaked as in CUT's 256-channel features) and target t, on CUDA."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, C, side, side, device="cuda", generator=gen, dtype=dtype) * 0.5
    t = torch.randn(B, C, side, side, device="cuda", generator=gen, dtype=dtype)
    return x.requires_grad_(grad), t.requires_grad_(grad)


# ------------------------------------------------------------------ the SDPA composition peer
def _heads(x):
    """(B, C, H, W) -> (B, 1, N, C8): rows, channels zero-padded to a multiple of 8 (kernel alignment)."""
    r = x.flatten(2).transpose(1, 2).unsqueeze(1)
    pad = -r.shape[-1] % 8
    return F.pad(r, (0, pad)) if pad else r


def sdpa_entropy(x):
    """H = lse - sum_j p_j s_j = lse - q . (softmax(q K^T) K), both from the memory-efficient kernel."""
    f = _heads(x)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(f, f, f, None, True, scale=1.0)[:2]
    return (lse[:, 0, :f.shape[2]] - (f * out).sum(-1)[:, 0]).float()


def sdpa_route(x, idx, values):
    f = _heads(x)
    q = f.gather(2, idx[:, None, :, None].expand(-1, 1, -1, f.shape[-1]))
    v = _heads(torch.cat(values, 1))
    out = F.scaled_dot_product_attention(q, f, v, scale=1.0)[:, 0, :, :sum(t.shape[1] for t in values)]
    return tuple(out.split([t.shape[1] for t in values], -1))


# ------------------------------------------------------------------ the measured steps
_SELECTIONS: dict = {}


def selection(B: int, N: int):
    """A fixed random (B, 256) selection per (B, N), made once outside the timed region."""
    if (B, N) not in _SELECTIONS:
        gen = torch.Generator().manual_seed(1)
        _SELECTIONS[B, N] = torch.stack([torch.randperm(N, generator=gen)[:K_SEL] for _ in range(B)]).cuda()
    return _SELECTIONS[B, N]


def step_fn(peer: str, what: str, precision):
    """A callable (x, t) -> tensors for one peer and one measured quantity (None: the peer has none)."""
    import qsattn_fast as q
    kind, _, mode = what.partition("_")
    be = dict(backend=peer, precision=precision if peer == "triton" else None, check_finite=False)
    if peer == "sdpa" and mode == "local":
        return None
    if kind == "entropy":
        return (lambda x, t: sdpa_entropy(x)) if peer == "sdpa" else (lambda x, t: q.attention_entropy(x, mode, **be))
    if kind == "select":
        if peer == "sdpa":
            return lambda x, t: torch.argsort(x.flatten(1), dim=1, stable=True)[:, :K_SEL]
        return lambda x, t: q.select_queries(x.flatten(1), K_SEL, backend=peer)
    if kind == "route":
        def route(x, t):
            idx = selection(x.shape[0], x.shape[2] * x.shape[3])
            return sdpa_route(x, idx, [x, t]) if peer == "sdpa" else q.route(x, idx, [x, t], mode, **be)
        return route
    if peer == "sdpa":
        def step(x, t):
            with torch.no_grad():
                idx = torch.argsort(sdpa_entropy(x), dim=1, stable=True)[:, :K_SEL]
            return sdpa_route(x, idx, [x, t])
        return step
    return lambda x, t: q.query_selected_attention(x, [x, t], k=K_SEL, mode=mode, **be)[1]


def flops(what: str, C: int, N: int, B: int, backward: bool) -> int:
    """benchmarks/flop_model.py's count of one quantity (values [x, t]: C_v = 2C; k = min(256, N); window 7)."""
    k, cv = min(K_SEL, N), 2 * C
    kind, _, mode = what.partition("_")
    if kind == "select":
        return 0
    if kind == "entropy":
        return entropy_flops(mode, C, N, B)
    return (route_flops if kind == "route" else qsattn_flops)(mode, C, N, k, cv, B, backward=backward)


def cases(whats, passes=(False,)):
    """The parametrization of a benchmarks/bench_*.py function: shape x peer x quantity x pass, all
    skipped without CUDA (the Triton interpreter on CPU is not a benchmark)."""
    import pytest
    grid = [(s, p, w, b) for s in SHAPES for p in PEERS for w in whats for b in passes]

    def mark(fn):
        fn = pytest.mark.parametrize("shape,peer,what,backward", grid)(fn)
        return pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs CUDA")(fn)
    return mark


def bench(benchmark, what: str, shape: str, peer: str, backward: bool = False, precision=None):
    """pytest-benchmark body shared by benchmarks/bench_*.py: one quantity, one shape, one peer."""
    import pytest
    require_cuda()
    fn = step_fn(peer, what, precision)
    if fn is None:
        pytest.skip(f"{peer} has no {what}")
    C, side, B = SHAPES[shape]
    N = side * side
    if peer == "reference" and B * N * N * 4 * 4 > torch.cuda.get_device_properties(0).total_memory:
        pytest.skip(f"reference needs about {B * N * N * 16 / 2**30:.0f} GiB (four fp32 N x N matrices) at {shape}")
    x, t = inputs(C, side, B, grad=backward)
    if what == "select":
        x = torch.rand(B, 1, N, device="cuda")
    run = runner(fn, x, t, backward)
    run()
    benchmark.extra_info["flops"] = flops(what, C, N, B, backward)
    benchmark(lambda: (run(), torch.cuda.synchronize()))


def runner(fn, x, t, backward: bool):
    """fn(x, t), and with ``backward`` the backward of a weighted sum of its outputs (grads cleared)."""
    def run():
        out = fn(x, t)
        if backward:
            outs = out if isinstance(out, tuple) else (out,)
            sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs)).backward()
            x.grad = t.grad = None
    return run


def measure(fn, x, t, backward: bool, repeats: int) -> dict:
    """Median time (CUDA events) and extra peak memory of fn(x, t) (+ backward of a weighted sum)."""
    run = runner(fn, x, t, backward)
    run()                                                       # compile / autotune / warm caches
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return dict(median_s=statistics.median(times), times_s=times, peak_extra_bytes=peak)


def dense_rates(n: int = 8192, repeats: int = 10) -> dict:
    """Dense matmul TFLOP/s per precision, measured now (n x n x n)."""
    rates = {}
    old = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (("ieee", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        rates[name] = 2 * n ** 3 / measure(lambda x, t: x @ t, a, b, False, repeats)["median_s"] / 1e12
    torch.backends.cuda.matmul.allow_tf32 = old
    rates["tf32x3"] = rates["tf32"] / 3
    return rates


def entropy_errors(C: int, precision) -> dict:
    """Relative entropy error of each peer against float64 on a 32 x 32 map with C channels."""
    import qsattn_fast as q
    x, _ = inputs(C, 32, 1)
    ref = q.attention_entropy(x.double(), backend="reference")
    got = {"triton": q.attention_entropy(x, backend="triton", precision=precision), "sdpa": sdpa_entropy(x),
           "reference": q.attention_entropy(x, backend="reference")}
    return {k: float((v.double() - ref).norm() / ref.norm()) for k, v in got.items()}


def environment() -> dict:
    import triton

    import qsattn_fast
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
    except OSError:
        commit = "unknown"
    return dict(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton.__version__, qsattn_fast=qsattn_fast.__version__, commit=commit,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


WHATS = ("entropy_global", "entropy_local", "select", "route_global", "route_local", "step_global", "step_local")


def run(shapes, peers, precisions, repeats: int) -> dict:
    env = environment()
    env["dense_tflops"] = rates = dense_rates()
    rows = []
    for sname in shapes:
        C, side, B = SHAPES[sname]
        N = side * side
        for precision in precisions:
            for peer in peers:
                if peer != "triton" and precision != precisions[0]:
                    continue                                    # peers have one (their default) precision
                for what in WHATS:
                    fn = step_fn(peer, what, precision)
                    if fn is None:
                        continue
                    for backward in ((False, True) if what.startswith(("route", "step")) else (False,)):
                        row = dict(shape=sname, C=C, N=N, B=B, peer=peer, what=what, backward=backward,
                                   precision=precision if peer == "triton" else "default")
                        print(f"{sname} {peer} {row['precision']} {what} {'fwd+bwd' if backward else 'fwd'}",
                              file=sys.stderr, flush=True)
                        try:
                            x, t = inputs(C, side, B, grad=backward)
                            if what == "select":
                                x = torch.rand(B, 1, N, device="cuda")
                            elif what.startswith("route"):
                                selection(B, N)
                            row.update(measure(fn, x, t, backward, repeats))
                            fl = flops(what, C, N, B, backward)
                            row["tflops"] = fl / row["median_s"] / 1e12
                            rate = rates.get(row["precision"] if peer == "triton" else "ieee")
                            row["fraction_of_dense"] = row["tflops"] / rate if fl and rate else None
                        except torch.cuda.OutOfMemoryError as exc:
                            row["error"] = f"OutOfMemoryError: {str(exc).splitlines()[0]}"
                            row["nxn_bytes"] = B * N * N * 4         # one fp32 N x N matrix
                        except Exception as exc:  # a peer that cannot run a shape: record why
                            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        finally:
                            x = t = None
                            torch.cuda.empty_cache()
                        rows.append(row)
        env.setdefault("entropy_rel_err", {})[sname] = entropy_errors(C, precisions[0])
    return dict(environment=env, results=rows)


def table(report: dict) -> str:
    """Markdown: one line per (shape, quantity, pass) with every peer's time, peak and speed-ups."""
    rows = report["results"]
    lines = ["| shape | quantity | pass | triton ms | sdpa ms | reference ms | triton / sdpa | triton / ref | "
             "triton peak MiB | ref peak MiB | triton TFLOP/s | of dense |", "|" + "---|" * 12]
    key = {(r["shape"], r["what"], r["backward"], r["peer"]): r for r in rows
           if r["peer"] != "triton" or r["precision"] == rows[0]["precision"]}
    for (s, w, bwd, p), r in key.items():
        if p != "triton":
            continue
        get = lambda peer, f: key.get((s, w, bwd, peer), {}).get(f)
        ms = lambda peer: f"{get(peer, 'median_s') * 1e3:.3f}" if get(peer, "median_s") else "—"
        ratio = lambda peer: (f"{get(peer, 'median_s') / r['median_s']:.1f}x"
                              if get(peer, "median_s") and r.get("median_s") else "—")
        mib = lambda peer: f"{get(peer, 'peak_extra_bytes') / 2**20:.1f}" if get(peer, "peak_extra_bytes") is not None else "—"
        frac = r.get("fraction_of_dense")
        lines.append(f"| {s} | {w} | {'fwd+bwd' if bwd else 'fwd'} | {ms('triton')} | {ms('sdpa')} | {ms('reference')} | "
                     f"{ratio('sdpa')} | {ratio('reference')} | {mib('triton')} | {mib('reference')} | "
                     f"{r.get('tflops', 0):.1f} | {f'{frac:.0%}' if frac else '—'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                    help="triton precisions; the first is the one compared with the peers")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", help="JSON path (default benchmarks/results/gpu-<device>-<date>.json)")
    args = ap.parse_args(argv)
    require_cuda()
    report = run(args.shapes, args.peers, args.precisions, args.repeats)
    env = report["environment"]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"gpu-{env['device'].replace(' ', '_')}-{env['date'][:10]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(table(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
