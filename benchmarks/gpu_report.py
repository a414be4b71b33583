"""GPU report: every backend that runs on CUDA (triton, native, torch, reference) and the strongest
composition of PyTorch's own fused attention ("sdpa"), at S1..S5, on one CUDA device in one run; the
quantities, inputs, FLOPs and timing are harness.py's.

    python benchmarks/gpu_report.py                         # S1..S5, every peer, JSON + markdown table
    python benchmarks/gpu_report.py --shapes S1 --precisions ieee tf32x3 --repeats 20

Shapes (C, side, B), N = side^2, k = 256: S1 (256, 64, 1) the paper's setting; S2 (256, 128, 1);
S3 (256, 64, 4); S4 (128, 256, 1); S5 (3, 262, 1). For each shape, precision and peer it measures
(CUDA events, median) every quantity of ``harness.WHATS``: the global and local entropy, the selection,
the global and local routing of [x, t] forward and forward+backward, and the whole step
(``qsattn``) in the global, local and local_global modes forward and forward+backward;
extra peak memory (``max_memory_allocated`` over the level once the inputs exist); TFLOP/s from the
matrix-product FLOPs; and the fraction of the dense matmul rate of the same precision measured in the
same run (fp32 ieee: TF32 off; tf32; tf32x3 = a third of the tf32 rate, three tf32 products per fp32
product; bf16). Precisions other than the first are run by triton only.

The "sdpa" peer (global modes only): entropy H = lse - q . SDPA(q, K, V=K) with scale 1, selection by
``argsort(stable=True)``, routing by SDPA over the concatenated values (autograd through SDPA's
backward). Its entropy is the textbook formula that cancels for peaked rows; the report records each
peer's global entropy error against the float64 entropy on a 32x32 map of the shape's C.
``reference`` materialises N x N: where it runs out of memory the JSON records the error and the bytes
one N x N matrix needs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import harness
from harness import SUITE_SHAPES, WHATS

SHAPES = SUITE_SHAPES["cuda"]
PRECISIONS = ("tf32x3", "ieee", "tf32", "bf16")


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_report.py needs a CUDA device (torch.cuda.is_available() is False); "
                         "benchmarks/report.py is the CPU/generic report")


def dense_rates(repeats: int = 10) -> dict:
    """Dense matmul TFLOP/s per precision, measured now (8192^3)."""
    rates = {}
    old = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (("ieee", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        rates[name] = harness.matmul_gflops("cuda", repeats, dtype) / 1e3
    torch.backends.cuda.matmul.allow_tf32 = old
    rates["tf32x3"] = rates["tf32"] / 3
    return rates


def entropy_errors(C: int, peers, precision) -> dict:
    """Relative entropy error of each peer against float64 on a 32 x 32 map with C channels (or the
    error a peer raised)."""
    x, _ = harness.inputs("entropy_global", C, 32, 1, "cuda")
    ref = harness.workload("reference", "entropy_global")(x.double(), None)
    errors = {}
    for p in peers:
        try:
            got = harness.workload(p, "entropy_global", precision=precision)(x, None).double()
            errors[p] = float((got - ref).norm() / ref.norm())
        except Exception as exc:  # a peer that fails here is recorded, the report goes on
            errors[p] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return errors


def run(shapes, peers, precisions, repeats: int) -> dict:
    env = harness.environment("cuda")
    env["dense_tflops"] = rates = dense_rates()
    rows = []
    for sname in shapes:
        C, side, B = harness.SHAPES[sname]
        N = side * side
        for precision in precisions:
            for peer in peers:
                if peer != "triton" and precision != precisions[0]:
                    continue                                    # peers have one (their default) precision
                for what in WHATS:
                    fn = harness.workload(peer, what, precision=precision)
                    if fn is None:
                        continue
                    for backward in ((False, True) if what.startswith(("route", "qsattn")) else (False,)):
                        row = dict(shape=sname, C=C, N=N, B=B, peer=peer, what=what, backward=backward,
                                   precision=precision if peer == "triton" else "default")
                        print(f"{sname} {peer} {row['precision']} {what} {'fwd+bwd' if backward else 'fwd'}",
                              file=sys.stderr, flush=True)
                        x = t = None
                        try:
                            x, t = harness.inputs(what, C, side, B, "cuda", backward)
                            row.update(harness.measure(harness.runner(fn, x, t, backward), "cuda", repeats))
                            fl = harness.flops(what, C, N, B, backward)
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
        env.setdefault("entropy_rel_err", {})[sname] = entropy_errors(C, peers, precisions[0])
    return dict(environment=env, results=rows)


def table(report: dict) -> str:
    """Markdown: one line per (shape, quantity, pass) with every peer's time, triton's speed-ups over
    sdpa, native and reference, peaks and triton's rate."""
    rows = report["results"]
    lines = ["| shape | quantity | pass | triton ms | native ms | sdpa ms | reference ms | triton / sdpa | "
             "triton / native | triton / ref | triton peak MiB | ref peak MiB | triton TFLOP/s | of dense |",
             "|" + "---|" * 14]
    key = {(r["shape"], r["what"], r["backward"], r["peer"]): r for r in rows
           if r["peer"] != "triton" or r["precision"] == rows[0]["precision"]}
    for (s, w, bwd, p), r in key.items():
        if p != "triton":
            continue
        at = {peer: key.get((s, w, bwd, peer), {}) for peer in ("triton", "native", "sdpa", "reference")}
        frac = r.get("fraction_of_dense")
        lines.append(f"| {s} | {w} | {'fwd+bwd' if bwd else 'fwd'} | {_ms(at['triton'])} | {_ms(at['native'])} | "
                     f"{_ms(at['sdpa'])} | {_ms(at['reference'])} | {_ratio(at['sdpa'], r)} | "
                     f"{_ratio(at['native'], r)} | {_ratio(at['reference'], r)} | {_mib(at['triton'])} | "
                     f"{_mib(at['reference'])} | {r.get('tflops', 0):.1f} | {f'{frac:.0%}' if frac else '—'} |")
    return "\n".join(lines)


def _ms(row: dict) -> str:
    """A peer's median time in ms, or a dash."""
    return f"{row['median_s'] * 1e3:.3f}" if row.get("median_s") else "—"


def _ratio(row: dict, triton: dict) -> str:
    """How many times triton's time a peer's time is, or a dash."""
    return f"{row['median_s'] / triton['median_s']:.1f}x" if row.get("median_s") and triton.get("median_s") else "—"


def _mib(row: dict) -> str:
    """A peer's peak extra memory in MiB, or a dash."""
    return f"{row['peak_extra_bytes'] / 2**20:.1f}" if row.get("peak_extra_bytes") is not None else "—"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=SHAPES, choices=SHAPES)
    ap.add_argument("--peers", nargs="+", help="default: every backend that runs on CUDA, and sdpa")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                    help="triton precisions; the first is the one compared with the peers")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", help="JSON path (default benchmarks/results/gpu-<device>-<date>.json)")
    args = ap.parse_args(argv)
    require_cuda()
    report = run(args.shapes, args.peers or harness.peers("cuda"), args.precisions, args.repeats)
    env = report["environment"]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"gpu-{env['device_name'].replace(' ', '_')}-{env['date'][:10]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(table(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
