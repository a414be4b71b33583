"""The CUDA kernels of csrc/*.cu executed on the CPU (csrc/emulation: every CUDA thread a std::thread),
forward and backward, against the native CPU kernels, in three builds of the standalone binary
qsattn-cuda-emu: ``plain``, ``asan`` (AddressSanitizer: out-of-bounds global and __shared__ accesses) and
``tsan`` (ThreadSanitizer: shared-memory races between barriers). Test ids name the op and the build
(``-k tsan``). Tolerances: the float32 contract of every backend (docs/design.md §8) against the native
float64 result: rel_err < 2e-4 for entropies, routed outputs and lse, 1e-4 for gradients; ``select``
must be equal to the native one. The shapes have several key tiles and channel steps (a
single tile hides races), odd sizes, B >= 2, k = N and windows larger than the map."""
import os
import shutil
import subprocess
from functools import partial

import numpy as np
import pytest
import torch

from qsattn_fast import OP_MODES
from qsattn_fast.backends import native
from qsattn_fast.ops import SCHEMAS

from support import ROOT
from support.numerics import ROUTE_TOL, op, random_idx, rel_err

pytestmark = [pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR)),
              pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")]

CSRC = ROOT / "csrc"
BUILDS = ("plain", "asan", "tsan")
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
                 "TSAN_OPTIONS": "halt_on_error=1:exitcode=66"}


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """emulator(build, csrc=CSRC, main=None) -> the qsattn-cuda-emu binary of that build of the .cu files
    in ``csrc`` (``main``: another driver source), built once per session."""
    built = {}

    def get(build, csrc=CSRC, main=None):
        key = (build, str(csrc), str(main))
        if key not in built:
            out = tmp_path_factory.mktemp(f"emu-{build}") / "qsattn-cuda-emu"
            cmd = ["bash", str(CSRC / "emulation" / "build.sh"), build, str(out), str(csrc)]
            cmd += [str(main)] if main else []
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            built[key] = out
        return built[key]

    return get


def run(binary, op_name, sizes, inputs, tmp_path, timeout_env=None):
    """Runs the binary on ``inputs`` ({name: tensor}); returns (returncode, stderr)."""
    for name, t in inputs.items():
        t.contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    env = dict(os.environ, **SANITIZER_ENV, **(timeout_env or {}))
    r = subprocess.run([str(binary), op_name, str(tmp_path), *map(str, sizes)], capture_output=True, text=True,
                       env=env, timeout=600)
    return r.returncode, r.stderr


def emulated(binary, op_name, sizes, inputs, outputs, tmp_path):
    """The outputs ({name: shape}, int64 for select, else float32) of a run that must succeed cleanly."""
    rc, err = run(binary, op_name, sizes, inputs, tmp_path)
    assert rc == 0 and "Sanitizer" not in err, err[-4000:]
    dtype = np.int64 if op_name == "select" else np.float32
    return {name: torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=dtype)).view(shape)
            for name, shape in outputs.items()}


OUT_TOL, GRAD_TOL = ROUTE_TOL[torch.float32]   # entropies: the routed outputs' 2e-4 too


def rows(B, N, C, scale=0.5):
    return torch.randn(B, N, C) * scale


# Shapes per op and build: "tsan" the several tiles and steps that races need, "asan" also the edges
# (k = N, a window larger than the map), "plain" every shape; sized so that the sanitizer builds (about 3x
# and 5x slower) take seconds.
# (B, N, C, scale): 3 key tiles x 3 channel steps; peaked (one-hot) rows; a tiny map.
ENTROPY_GLOBAL = [(2, 137, 37, 0.5), (2, 70, 20, 2.0), (3, 5, 3, 1.0)]
# (B, H, W, C, window): 2 x 2 tiles of 16 x 16 with 2 channel steps; a window larger than the map; 1 x 1.
ENTROPY_LOCAL = [(2, 19, 21, 11, 5), (2, 5, 6, 3, 15), (3, 3, 2, 9, 1)]
# (B, N, C, k, Cv): 2 key tiles, 2 channel steps, 2 value tiles; a tiny map with k = N; two chunks of
# QC = 128 queries with k = N.
ROUTE_GLOBAL = [(2, 70, 20, 9, 70), (3, 6, 5, 6, 3), (2, 150, 20, 150, 70)]
# (B, H, W, C, k, Cv, window): 2 lane steps of channels with k = N; a window larger than the map; window 3.
ROUTE_LOCAL = [(2, 5, 7, 40, 35, 37, 5), (2, 4, 5, 3, 7, 2, 15), (3, 9, 11, 7, 20, 5, 3)]
CASES = {"tsan": slice(0, 1), "asan": slice(0, 2), "plain": slice(0, None)}


def cases(table, build):
    return table[CASES[build]]


def check_entropy_global(binary, build, tmp_path):
    for B, N, C, scale in cases(ENTROPY_GLOBAL, build):
        f = rows(B, N, C, scale)
        got = emulated(binary, "entropy_global", (B, N, C), {"f": f}, {"out": (B, N)}, tmp_path)
        assert rel_err(got["out"], op("entropy_global", "native")(f.double(), None)) < OUT_TOL


def check_entropy_local(binary, build, tmp_path):
    for B, H, W, C, window in cases(ENTROPY_LOCAL, build):
        f = rows(B, H * W, C, 0.7)
        got = emulated(binary, "entropy_local", (B, H, W, C, window), {"f": f}, {"out": (B, H * W)},
                       tmp_path)
        assert rel_err(got["out"], op("entropy_local", "native")(f.double(), H, W, window)) < OUT_TOL


def select_inputs():
    """(entropies, k): two 1024-wide chunks with ties, NaN, -0, +-inf; k = N; k = 1 of one value; the
    whole of the first chunk."""
    e = torch.randint(0, 50, (2, 1500)).float() / 7 - 3
    e[0, ::97] = float("nan")
    e[1, ::5] = -0.0
    e[1, 1::5] = 0.0
    e[0, 7::211] = -float("inf")
    e[1, 3::301] = float("inf")
    return [(e, 700), (torch.randn(3, 37), 37), (torch.zeros(2, 5), 1), (e, 1024)]


def check_select(binary, build, tmp_path):
    for e, k in cases(select_inputs(), build):
        B, N = e.shape
        got = emulated(binary, "select", (B, N, k), {"e": e}, {"out": (B, k)}, tmp_path)
        assert torch.equal(got["out"], op("select", "native")(e, k))


def route_case(shape, mode):
    """(sizes, inputs, native's (f, idx, [v], *tail)) of a routing case."""
    if mode == "global":
        B, N, C, k, Cv = shape
        tail, sizes = (None,), shape
    else:
        B, H, W, C, k, Cv, window = shape
        N, tail, sizes = H * W, (H, W, window), shape
    f, v, idx = rows(B, N, C), torch.randn(B, N, Cv), random_idx(B, N, k)
    return sizes, {"f": f, "idx": idx, "v": v}, tail


def check_route(binary, build, tmp_path, mode):
    for shape in cases(ROUTE_GLOBAL if mode == "global" else ROUTE_LOCAL, build):
        sizes, x, tail = route_case(shape, mode)
        B, k, Cv = x["idx"].shape + x["v"].shape[2:]
        got = emulated(binary, f"route_{mode}", sizes, x, {"out": (B, k, Cv), "lse": (B, k)}, tmp_path)
        (out,), lse = op(f"route_{mode}", "native")(x["f"].double(), x["idx"], [x["v"].double()], *tail)
        assert rel_err(got["out"], out) < OUT_TOL and rel_err(got["lse"], lse) < OUT_TOL


def check_route_backward(binary, build, tmp_path, mode):
    for shape in cases(ROUTE_GLOBAL if mode == "global" else ROUTE_LOCAL, build):
        sizes, x, tail = route_case(shape, mode)
        f, idx, v = x["f"], x["idx"], x["v"]
        fwd, bwd = op(f"route_{mode}", "native"), op(f"route_{mode}_backward", "native")
        (out,), lse = fwd(f, idx, [v], *tail)
        g = torch.randn_like(out)
        got = emulated(binary, f"route_{mode}_backward", sizes,
                       dict(x, out=out, lse=lse, grad_out=g), {"df": f.shape, "dv": v.shape}, tmp_path)
        df, (dv,) = bwd(f.double(), idx, [v.double()], [out.double()], lse.double(), [g.double()], *tail)
        assert rel_err(got["df"], df) < GRAD_TOL and rel_err(got["dv"], dv) < GRAD_TOL


#: Every launcher of csrc/qsattn_cuda.h (the ops of qsattn_fast/ops.py) and its check against the native kernels.
CHECKS = {"entropy_global": check_entropy_global, "entropy_local": check_entropy_local, "select": check_select,
          "route_global": partial(check_route, mode="global"),
          "route_global_backward": partial(check_route_backward, mode="global"),
          "route_local": partial(check_route, mode="local"),
          "route_local_backward": partial(check_route_backward, mode="local")}


def test_every_op_of_the_contract_is_checked():
    assert list(CHECKS) == list(SCHEMAS)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("op_name", CHECKS)
def test_kernel_against_native(emulator, op_name, build, tmp_path):
    """The op's CUDA kernels in the build agree with the native CPU kernels on its shapes (above)."""
    CHECKS[op_name](emulator(build), build, tmp_path)


# Routing shapes (global, local) with an empty size: k = 0, C_v = 0, C = 0, B = 0 (as the CPU kernels take
# them; route_global's launches had empty grids, which a GPU refuses).
EMPTY = [((2, 10, 3, 0, 4), (2, 2, 5, 3, 0, 4, 3)), ((2, 10, 3, 4, 0), (2, 2, 5, 3, 4, 0, 3)),
         ((2, 10, 0, 4, 3), (2, 2, 5, 0, 4, 3, 3)), ((0, 10, 3, 4, 3), (0, 2, 5, 3, 4, 3, 3))]


@pytest.mark.parametrize("mode", OP_MODES["route"])
@pytest.mark.parametrize("shapes", EMPTY, ids=["k0", "Cv0", "C0", "B0"])
def test_empty_sizes_launch_nothing(emulator, mode, shapes, tmp_path):
    """Forward and backward with an empty size run (no empty grid launched) and equal the native kernels."""
    sizes, x, tail = route_case(shapes[mode == "local"], mode)
    f, idx, v = x["f"], x["idx"], x["v"]
    (out,), lse = op(f"route_{mode}", "native")(f, idx, [v], *tail)
    g = torch.randn_like(out)
    df, (dv,) = op(f"route_{mode}_backward", "native")(f, idx, [v], [out], lse, [g], *tail)
    fwd = emulated(emulator("plain"), f"route_{mode}", sizes, x, {"out": out.shape, "lse": lse.shape}, tmp_path)
    bwd = emulated(emulator("plain"), f"route_{mode}_backward", sizes, dict(x, out=out, lse=lse, grad_out=g),
                   {"df": df.shape, "dv": dv.shape}, tmp_path)
    for got, want in ((fwd["out"], out), (fwd["lse"], lse), (bwd["df"], df), (bwd["dv"], dv)):
        assert rel_err(got, want) < OUT_TOL


def mutated(tmp_path, file, old, new):
    """A copy of csrc/ whose ``file`` has its first ``old`` replaced by ``new``."""
    src = tmp_path / "csrc"
    shutil.copytree(CSRC, src)
    text = (src / file).read_text()
    assert old in text
    (src / file).write_text(text.replace(old, new, 1))
    return src


def test_tsan_reports_a_deleted_syncthreads(emulator, tmp_path):
    """entropy_global without the barrier between staging a tile and reading it: ThreadSanitizer reports
    the race (the unmutated kernel passes test_kernel_against_native[entropy_global-tsan])."""
    csrc = mutated(tmp_path, "entropy_global.cu", "__syncthreads();", "")
    B, N, C, _ = ENTROPY_GLOBAL[0]
    rc, err = run(emulator("tsan", csrc), "entropy_global", (B, N, C), {"f": rows(B, N, C)}, tmp_path)
    assert rc != 0 and "ThreadSanitizer: data race" in err and "entropy_global.cu" in err, err[-3000:]


def test_asan_reports_a_widened_bound(emulator, tmp_path):
    """entropy_global staging the row one past the last: AddressSanitizer reports the read past f."""
    csrc = mutated(tmp_path, "entropy_global.cu", "qa < N", "qa <= N")
    B, N, C, _ = ENTROPY_GLOBAL[0]
    rc, err = run(emulator("asan", csrc), "entropy_global", (B, N, C), {"f": rows(B, N, C)}, tmp_path)
    assert rc != 0 and "heap-buffer-overflow" in err and "entropy_global.cu" in err, err[-3000:]


def test_asan_reports_a_shrunk_shared_array(emulator, tmp_path):
    """entropy_global with a __shared__ tile one row short: AddressSanitizer covers the shared section."""
    csrc = mutated(tmp_path, "entropy_global.cu", "As[BK][BM + 4];", "As[BK - 1][BM + 4];")
    B, N, C, _ = ENTROPY_GLOBAL[0]
    rc, err = run(emulator("asan", csrc), "entropy_global", (B, N, C), {"f": rows(B, N, C)}, tmp_path)
    assert rc != 0 and "global-buffer-overflow" in err and "entropy_global.cu" in err, err[-3000:]


# emulation_faults.cpp's cases: (exit code, launcher error, words of the message).
FAULTS = {
    "too_many_threads": (0, 9, "block (1025,1,1) has 1025 threads"),
    "grid_out_of_range": (0, 9, "grid (1,65536,1) out of range"),
    "too_much_shared": (0, 1, "49156 bytes of dynamic shared memory"),
    "barrier_never_reached": (70, None, "a barrier that some threads never reach"),
    "divergent_barrier": (70, None, "wait at different barriers"),
    "partial_mask": (70, None, "with mask 0x0000ffff"),
    "shuffle_after_return": (70, None, "returned from the kernel"),
}


@pytest.mark.parametrize("case", FAULTS)
def test_what_a_gpu_refuses_or_hangs_on_is_reported(emulator, case):
    """A clear message naming the kernel (and the block), the launch refused with the GPU's error code or
    the process ended (70), never a hang: the watchdog is set to 1 s."""
    binary = emulator("plain", main=ROOT / "tests" / "csrc" / "emulation_faults.cpp")
    r = subprocess.run([str(binary), case], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, QSATTN_EMU_TIMEOUT_S="1"))
    rc, code, words = FAULTS[case]
    assert r.returncode == rc and words in r.stderr and "cuda emulation:" in r.stderr, r.stderr
    kernel = "sum_ids" if code is not None else case
    assert kernel in r.stderr
    if code is not None:
        assert r.stdout.startswith(f"error {code} ")
    else:
        assert "block (0,0,0)" in r.stderr


def test_shared_memory_is_nan_until_written(emulator):
    """Shared memory holds NaN before a block writes it (block 1 too: not block 0's values); a correct
    kernel with dynamic shared memory and a barrier runs."""
    binary = emulator("plain", main=ROOT / "tests" / "csrc" / "emulation_faults.cpp")
    bad = subprocess.run([str(binary), "read_before_write"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 0 and bad.stdout.split() == ["error", "0", "out", "nan", "nan"], bad.stdout + bad.stderr
    ok = subprocess.run([str(binary), "ok"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.split() == ["error", "0", "out", "4560", "4560"], ok.stdout + ok.stderr
