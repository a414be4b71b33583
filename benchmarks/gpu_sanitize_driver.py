"""Every native CUDA kernel and every Triton kernel of qsattn_fast, forward and backward, on small odd
sizes: the workload that ``benchmarks/gpu_check.py --stage sanitize`` runs under compute-sanitizer.

    python benchmarks/gpu_sanitize_driver.py                      # every case, on CUDA
    python benchmarks/gpu_sanitize_driver.py --list               # the cases (no GPU needed)
    python benchmarks/gpu_sanitize_driver.py --backends native --ops route_local
    python benchmarks/gpu_sanitize_driver.py --device cpu --backends native   # the driver itself, no GPU

The cases are data (``CASES``): backend x op x dtype x size x precision, each through the public API
(``entropy``, ``select``, ``route``, ``qsattn``) with a forced
backend; routing cases also run backward. Sizes are chosen to miss the kernels' block sizes: N = 35 and
667, B = 1 and 2, C = 3 and 37 (value maps of C and 5 channels), window 7 (wider than the 5 x 7 map),
k = N and an odd k; fp32 (Triton's global products in every precision) and bf16. A dispatch mode
records the registered operators each case reaches; a case that misses one of its ``kernels`` (a silent
fallback to another path) fails. Exit status 0 when every case ran, 1 otherwise.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 7
VALUE_CHANNELS = 5          # the second value map's channels (the first is the source map itself)
SIZES = (((1, 3, 5, 7), 35), ((2, 37, 23, 29), 77))          # ((B, C, H, W), k)
DTYPES = ("float32", "bfloat16")
TRITON_PRECISIONS = (None, "ieee", "tf32", "bf16")           # None: the default, tf32x3

#: The contract's ops (qsattn_fast/ops.py) each basic op reaches (routing: forward and backward); every
#: backend implements them as the overload qsattn::<op>.<backend>.
BASIC = {"entropy_global": ("entropy_global",), "entropy_local": ("entropy_local",), "select": ("select",),
         "route_global": ("route_global", "route_global_backward"),
         "route_local": ("route_local", "route_local_backward")}
KERNELS = {backend: {op: tuple(f"qsattn::{name}.{backend}" for name in names) for op, names in BASIC.items()}
           for backend in ("native", "triton")}
#: qsattn per mode: (entropy, routing) ops, as Backend.qsattn composes them.
STEPS = {"qsattn_global": ("entropy_global", "route_global"), "qsattn_local": ("entropy_local", "route_local"),
         "qsattn_local_global": ("entropy_local", "route_global")}
OPS = tuple(KERNELS["native"]) + tuple(STEPS)


@dataclass(frozen=True)
class Case:
    backend: str
    op: str                      # one of OPS
    dtype: str                   # one of DTYPES
    shape: tuple                 # (B, C, H, W)
    k: int
    precision: str | None = None

    @property
    def name(self) -> str:
        B, C, H, W = self.shape
        prec = f"/{self.precision}" if self.precision else ""
        return f"{self.backend}:{self.op} {self.dtype}{prec} B{B} C{C} {H}x{W} k{self.k}"

    @property
    def kernels(self) -> tuple[str, ...]:
        """The registered operators this case must reach."""
        table = KERNELS[self.backend]
        if self.op in STEPS:
            entropy, routing = STEPS[self.op]
            return table[entropy] + table["select"] + table[routing]
        return table[self.op]


def _cases() -> list[Case]:
    cases = []
    for backend in KERNELS:
        for op in OPS:
            for shape, k in SIZES:
                for dtype in DTYPES:
                    # Triton's global products have one kernel variant per fp32 precision.
                    sweep = backend == "triton" and dtype == "float32" and op in ("entropy_global", "route_global")
                    for precision in TRITON_PRECISIONS if sweep else (None,):
                        cases.append(Case(backend, op, dtype, shape, k, precision))
    return cases


CASES = _cases()


def registered_ops(root: str = ROOT) -> list[str]:
    """Every operator implementation the sources register, ``qsattn::<op>.native`` (``m.impl`` in
    csrc/*.cpp) and ``qsattn::<op>.triton`` (``@implement`` in kernels/*.py), so that coverage is checked
    against the code, not against a copy of its list."""
    found = set()
    for pattern, regex in (("csrc/*.cpp", r'm\.impl\("(\w+)\.native"'),
                           ("kernels/*.py", r'@implement\("(\w+)", "triton"')):
        backend = "native" if pattern.startswith("csrc") else "triton"
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            with open(path) as fh:
                found.update(f"qsattn::{name}.{backend}" for name in re.findall(regex, fh.read()))
    return sorted(found)


def run_case(case: Case, device: str) -> set[str]:
    """Run one case (forward, and backward of a weighted sum for routing); the qsattn operators reached."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import qsattn_fast as q

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "qsattn":
                self.seen.add(func.name())                 # qsattn::<op>.<backend>
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(0)            # CPU draws: the same data on every device
    B, C, H, W = case.shape
    dtype = getattr(torch, case.dtype)

    def draw(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    api = dict(backend=case.backend, precision=case.precision)
    kind, _, mode = case.op.partition("_")
    with Recorder() as rec:
        if kind == "entropy":
            outs = (q.entropy(draw(B, C, H, W, scale=0.5), mode, WINDOW, **api),)
        elif kind == "select":
            outs = (q.select(draw(B, H * W), case.k, backend=case.backend),)
        else:
            x = draw(B, C, H, W, scale=0.5).requires_grad_()
            t = draw(B, VALUE_CHANNELS, H, W).requires_grad_()
            if kind == "route":
                idx = torch.stack([torch.randperm(H * W, generator=gen)[:case.k] for _ in range(B)]).to(device)
                routed = q.route(x, idx, [x, t], mode, WINDOW, **api)
            else:
                _, routed = q.qsattn(x, [x, t], case.k, mode, WINDOW, **api)
            sum((o.float() * (i + 1)).sum() for i, o in enumerate(routed)).backward()
            outs = (*routed, x.grad, t.grad)
    if device == "cuda":
        torch.cuda.synchronize()
    for i, o in enumerate(outs):
        if o.is_floating_point() and not bool(torch.isfinite(o).all()):
            raise AssertionError(f"output {i} has non-finite values")
    return rec.seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--backends", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: native C++ kernels and the Triton interpreter, to check the driver without a GPU")
    ap.add_argument("--smallest", action="store_true", help=f"only the smallest size, {SIZES[0]}")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if c.backend in args.backends and c.op in args.ops and c.dtype in args.dtypes
             and (not args.smallest or c.shape == SIZES[0][0])]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if args.device == "cpu" and "triton" in args.backends:
        os.environ["TRITON_INTERPRET"] = "1"        # must be set before Triton and the kernels are imported
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_sanitize_driver.py needs a CUDA device (torch.cuda.is_available() is False); "
                         "--list shows its cases, --device cpu checks the driver on the CPU")
    failed = []
    for case in cases:
        t0 = time.perf_counter()
        try:
            missing = set(case.kernels) - run_case(case, args.device)
            if missing:
                raise AssertionError(f"did not reach {', '.join(sorted(missing))}")
        except Exception as exc:  # record and go on: the sanitizer should see every other kernel too
            failed.append(case.name)
            print(f"FAIL {case.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)
        else:
            print(f"ok   {case.name} ({time.perf_counter() - t0:.2f} s)", flush=True)
    print(f"{len(cases) - len(failed)}/{len(cases)} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
