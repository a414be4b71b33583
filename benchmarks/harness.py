"""The one benchmark harness: what is measured and how, shared by report.py (CPU or CUDA, one process per
measurement, time over the floor), gpu_report.py (the GPU report, every peer and precision) and the
pytest-benchmark suite bench_ops.py (every quantity on every peer, as tests/ops/test_conformance.py tests
every op on every backend).

A measured quantity ``what`` is an op in a mode: ``entropy_global``, ``entropy_local``, ``select``,
``route_global``, ``route_local``, and ``qsattn_<mode>`` (``qsattn``: entropy,
selection and routing, for ``global``, ``local``, ``local_global``). A peer is a backend of
``qsattn_fast.backends()`` or, on CUDA, ``sdpa``: the strongest composition of PyTorch's own fused
attention (entropy from the memory-efficient kernel's lse, ``argsort`` selection, routing by SDPA).
Inputs are a source map x (B, C, side, side), scaled by 0.5 so rows are peaked as in CUT's 256-channel
features, and a target map t; routes take a fixed random selection of k = min(256, N) rows and route
[x, t]; backward passes backpropagate a weighted sum of the outputs to x and t. FLOPs and floors come
from flop_model.py (values [x, t]: C_v = 2C; window 7).
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from qsattn_fast._checks import OP_MODES

from flop_model import entropy_floor, entropy_flops, qsattn_floor, qsattn_flops, route_flops

# name: (C, side, B), N = side^2. The small ones are the CPU suites'; S1..S5 the GPU report's: S1 the
# paper's layers at 256^2 input, S4 and S5 CUT's layers 4 and 0 (the reflection-padded input).
SHAPES = {"C64-N32x32": (64, 32, 1), "C256-N32x32": (256, 32, 1), "C64-N48x48": (64, 48, 1),
          "S1": (256, 64, 1), "S2": (256, 128, 1), "S3": (256, 64, 4), "S4": (128, 256, 1), "S5": (3, 262, 1)}
SUITE_SHAPES = {"cpu": ["C64-N32x32", "C256-N32x32", "C64-N48x48"], "cuda": ["S1", "S2", "S3", "S4", "S5"]}
#: The measured quantities: each op of the API in each of its modes (qsattn_fast._checks.OP_MODES).
WHATS = tuple(f"{op}_{mode}" if mode else op for op, modes in OP_MODES.items() for mode in modes or (None,))
K = 256


def split(what: str) -> tuple[str, str | None]:
    """("entropy", "global") for "entropy_global"; ("select", None)."""
    if what not in WHATS:
        raise ValueError(f"what: expected one of {', '.join(WHATS)}, got {what!r}")
    kind, _, mode = what.partition("_")
    return kind, mode or None


def peers(device: str) -> list[str]:
    """The backends that run float32 calls on ``device`` (the Triton interpreter on CPU is not a
    benchmark), then ``sdpa`` on CUDA."""
    import qsattn_fast as q
    from qsattn_fast.backends.base import Request
    names = [n for n, be in q.backends().items()
             if not be.why_not(Request("qsattn", device, torch.float32, "global"))
             and not (n == "triton" and device != "cuda")]
    return names + (["sdpa"] if device == "cuda" else [])


# ------------------------------------------------------------------ inputs
def inputs(what: str, C: int, side: int, B: int, device: str, backward: bool = False, seed: int = 0):
    """(x, t) for one measurement; for ``select`` x is a (B, N) entropy table and t None."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if what == "select":
        return torch.rand(B, side * side, device=device, generator=gen), None
    x = torch.randn(B, C, side, side, device=device, generator=gen) * 0.5
    t = torch.randn(B, C, side, side, device=device, generator=gen)
    return x.requires_grad_(backward), t.requires_grad_(backward)


_SELECTIONS: dict = {}


def selection(B: int, N: int, k: int, device: str) -> torch.Tensor:
    """A fixed random (B, k) selection per (B, N, k, device), made once outside the timed region."""
    key = (B, N, k, device)
    if key not in _SELECTIONS:
        gen = torch.Generator().manual_seed(1)
        _SELECTIONS[key] = torch.stack([torch.randperm(N, generator=gen)[:k] for _ in range(B)]).to(device)
    return _SELECTIONS[key]


# ------------------------------------------------------------------ the SDPA composition peer
def _heads(x):
    """(B, C, H, W) -> (B, 1, N, C8): rows, channels zero-padded to a multiple of 8 (kernel alignment)."""
    r = x.flatten(2).transpose(1, 2).unsqueeze(1)
    pad = -r.shape[-1] % 8
    return F.pad(r, (0, pad)) if pad else r


def sdpa_entropy(x):
    """H = lse - sum_j p_j s_j = lse - q . (softmax(q K^T) K), both from the memory-efficient kernel
    (the textbook formula: it cancels for peaked rows)."""
    f = _heads(x)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(f, f, f, None, True, scale=1.0)[:2]
    return (lse[:, 0, :f.shape[2]] - (f * out).sum(-1)[:, 0]).float()


def sdpa_route(x, idx, values):
    f = _heads(x)
    q = f.gather(2, idx[:, None, :, None].expand(-1, 1, -1, f.shape[-1]))
    v = _heads(torch.cat(values, 1))
    out = F.scaled_dot_product_attention(q, f, v, scale=1.0)[:, 0, :, :sum(t.shape[1] for t in values)]
    return tuple(out.split([t.shape[1] for t in values], -1))


# ------------------------------------------------------------------ the measured callables
def sdpa_select(ent, k: int):
    """The sdpa peer's selection: the first min(k, N) of a stable argsort of (B, N) entropies."""
    return torch.argsort(ent, dim=1, stable=True)[:, :min(k, ent.shape[1])]


def workload(peer: str, what: str, k: int = K, precision: str | None = None):
    """A callable (x, t) -> output(s) of one quantity for one peer, or None where the peer has none
    (sdpa: no local mode). ``precision`` goes to the triton backend only (the others have one); every
    selection takes min(k, N) rows."""
    import qsattn_fast as q
    kind, mode = split(what)
    if peer == "sdpa" and mode in ("local", "local_global"):
        return None
    be = dict(backend=peer, precision=precision if peer == "triton" else None, check_finite=False)
    n_of = lambda x: x.shape[2] * x.shape[3]                    # noqa: E731  N of a (B, C, H, W) map
    if kind == "entropy":
        return (lambda x, t: sdpa_entropy(x)) if peer == "sdpa" else (lambda x, t: q.entropy(x, mode, **be))
    if kind == "select":
        if peer == "sdpa":
            return lambda x, t: sdpa_select(x, k)
        return lambda x, t: q.select(x, min(k, x.shape[1]), backend=peer)
    if kind == "route":
        def route(x, t):
            idx = selection(x.shape[0], n_of(x), min(k, n_of(x)), x.device.type)
            return sdpa_route(x, idx, [x, t]) if peer == "sdpa" else q.route(x, idx, [x, t], mode, **be)
        return route
    if peer == "sdpa":
        def step(x, t):
            with torch.no_grad():
                idx = sdpa_select(sdpa_entropy(x), k)
            return sdpa_route(x, idx, [x, t])
        return step
    return lambda x, t: q.qsattn(x, [x, t], k=min(k, n_of(x)), mode=mode, **be)[1]


def runner(fn, x, t, backward: bool):
    """A no-argument call of fn(x, t), with ``backward`` followed by the backward of a weighted sum of
    its outputs (grads cleared)."""
    def run():
        out = fn(x, t)
        if backward:
            outs = out if isinstance(out, tuple) else (out,)
            sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs)).backward()
            x.grad = t.grad = None
        return out
    return run


def flops(what: str, C: int, N: int, B: int, backward: bool, k: int = K) -> int:
    """flop_model.py's count of one quantity (0 for select)."""
    kind, mode = split(what)
    k = min(k, N)
    if kind == "select":
        return 0
    if kind == "entropy":
        return entropy_flops(mode, C, N, B)
    return (route_flops if kind == "route" else qsattn_flops)(mode, C, N, k, 2 * C, B, backward=backward)


def floor(what: str, C: int, N: int, B: int, backward: bool, k: int = K) -> tuple[int, int]:
    """flop_model.py's floor of an entropy or qsattn quantity: (product FLOPs, exponentials)."""
    kind, mode = split(what)
    if kind == "entropy":
        return entropy_floor(mode, C, N, B)
    if kind != "qsattn":
        raise ValueError(f"what: the floor is modelled for entropy and qsattn, not {what!r}")
    return qsattn_floor(mode, C, N, min(k, N), 2 * C, B, backward=backward)


# ------------------------------------------------------------------ timing and memory
def seconds(run, device: str) -> float:
    """The time of one call of ``run``: CUDA events on CUDA, perf_counter elsewhere."""
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def best_seconds(run, device: str, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls after one warm-up."""
    run()
    return min(seconds(run, device) for _ in range(repeats))


def peak_extra_bytes(run, device: str) -> int:
    """The extra peak memory of one call once its inputs exist (``qsattn_fast._memory.PeakMemory``)."""
    from qsattn_fast._memory import PeakMemory
    with PeakMemory(device) as mem:
        run()
    return mem.extra_bytes


def measure(run, device: str, repeats: int) -> dict:
    """One warm-up call (compile, autotune, caches), the extra peak of the next, then ``repeats`` timed
    calls: median_s, times_s, peak_extra_bytes."""
    run()
    peak = peak_extra_bytes(run, device)
    times = [seconds(run, device) for _ in range(repeats)]
    return dict(median_s=statistics.median(times), times_s=times, peak_extra_bytes=peak)


def matmul_gflops(device: str, repeats: int = 9, dtype=torch.float32) -> float:
    """The dense matrix-product rate of this device in ``dtype``, measured now (GFLOP/s, best of
    ``repeats`` products of n x n matrices, n = 2048 on CPU, 8192 on CUDA)."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, device, repeats) / 1e9


def exp_gexps(device: str, repeats: int = 9) -> float:
    """The fp32 exponential rate of the unit that limits the entropy's epilogue, measured now (G exp/s):
    on CPU the register-resident vectorised exp of the native extension's probe
    (``qsattn_fast._C.exp_probe_gexps``: an L1-resident block per thread, the instruction-set clone the
    kernels dispatch to, on torch's thread count; best of ``repeats`` runs of 20 ms), else, without the
    extension and on CUDA, :func:`stream_exp_gexps`."""
    if device == "cpu":
        try:
            from qsattn_fast import _C
        except ImportError:
            return stream_exp_gexps(device, repeats)
        return max(_C.exp_probe_gexps(torch.get_num_threads(), 0.02) for _ in range(repeats))
    return stream_exp_gexps(device, repeats)


def stream_exp_gexps(device: str, repeats: int = 9) -> float:
    """The fp32 exponential rate of ``torch.exp`` over a large array on this device, measured now (G exp/s,
    best of ``repeats`` over 2^24 elements on CPU, 2^28 on CUDA, written in place of a second buffer);
    memory-bound on CPU, so not the floor's rate there."""
    n = 2 ** 28 if device == "cuda" else 2 ** 24
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    return n / best_seconds(lambda: torch.exp(x, out=y), device, repeats) / 1e9


# ------------------------------------------------------------------ pytest-benchmark
def suite_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cases(whats=WHATS):
    """The parametrization of bench_ops.py's quantities on this machine's device (CUDA when present):
    shape x peer x quantity x pass, with a forward+backward pass for the differentiable routings."""
    import pytest
    device = suite_device()
    grid = [(s, p, w, b) for s in SUITE_SHAPES[device] for p in peers(device) for w in whats
            for b in ((False, True) if split(w)[0] in ("route", "qsattn") else (False,))]
    return pytest.mark.parametrize("shape,peer,what,backward", grid)


def bench(benchmark, what: str, shape: str, peer: str, backward: bool = False, precision=None):
    """pytest-benchmark body of bench_ops.py's quantities: one quantity, one shape, one peer; the row's
    ``extra_info["flops"]`` from flop_model.py."""
    import pytest
    device = suite_device()
    fn = workload(peer, what, precision=precision)
    if fn is None:
        pytest.skip(f"{peer} has no {what}")
    C, side, B = SHAPES[shape]
    N = side * side
    if device == "cuda" and peer == "reference" and B * N * N * 16 > torch.cuda.get_device_properties(0).total_memory:
        pytest.skip(f"reference needs about {B * N * N * 16 / 2**30:.0f} GiB (four fp32 N x N matrices) at {shape}")
    x, t = inputs(what, C, side, B, device, backward)
    run = runner(fn, x, t, backward)
    run()
    benchmark.extra_info["flops"] = flops(what, C, N, B, backward)
    benchmark(lambda: (run(), torch.cuda.synchronize() if device == "cuda" else None))


# ------------------------------------------------------------------ the record of a run
def environment(device: str) -> dict:
    """Device, versions and commit, for every JSON under benchmarks/results/."""
    import numpy

    import qsattn_fast
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here).stdout.strip() != ""
    except OSError:
        commit, dirty = "unknown", False
    env = dict(device=device, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               python=platform.python_version(), torch=torch.__version__, numpy=numpy.__version__,
               qsattn_fast=qsattn_fast.__version__, commit=commit, dirty=dirty,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if device == "cuda":
        env.update(device_name=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   cuda=torch.version.cuda)
    else:
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as fh:
                env["device_name"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                                          platform.processor())
        else:
            env["device_name"] = platform.processor()
        try:
            from qsattn_fast import _C
            env["cpu_isa"] = _C.cpu_isa()
        except ImportError:
            env["cpu_isa"] = None
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env
