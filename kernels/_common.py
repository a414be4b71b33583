"""Pieces shared by the Triton kernels: the precision-aware dot, window neighbourhoods, launch helpers.

Importing this module imports Triton and fixes, once, whether the kernels are compiled for the GPU or
run by the Triton interpreter (``TRITON_INTERPRET=1`` when the kernels are first imported; docs/design.md §9).

Layout: the ops take rows f (B, N, C) of the contract (qsattn_fast/ops.py); every kernel reads their
transpose (B, C, N) through strides (batch, channel, position), position n = h*W + w, so the rows(.)
views of NCHW maps are read in place. Gradient maps are written (B, C, N) and returned as rows views.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qsattn_fast._checks import PRECISIONS
from qsattn_fast.ops import acc_dtype, as_grad, implement  # noqa: F401  (the kernels register as the triton implementations)

#: True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors).
INTERPRET = bool(triton.knobs.runtime.interpret)
#: The dispatch keys of the Triton implementations: CUDA, and CPU under the interpreter.
TRITON_DEVICES = ("CUDA", "CPU") if INTERPRET else ("CUDA",)

#: tl.dot ``input_precision`` per public precision name (fp32 inputs). "bf16" rounds the operands to
#: bfloat16 and accumulates in fp32. The default (None) is the fp32-faithful "tf32x3" on GPUs.
_DOT_PRECISION = {None: "tf32x3", **{p: p for p in PRECISIONS}}


def dot_precision(dtype: torch.dtype, precision: str | None) -> str:
    """The kernel's DOT_PREC constexpr: the fp32 precision mode, or "native" for other dtypes."""
    if dtype != torch.float32:
        return "native"
    return _DOT_PRECISION[precision]


def block(n: int, lo: int, hi: int) -> int:
    """A power-of-two block size for an extent n, clamped to [lo, hi]."""
    return max(lo, min(hi, triton.next_power_of_2(n)))


def fill_sms(bm: int, programs, device) -> int:
    """Halve the row block bm (down to 16) until ``programs(bm)`` programs cover every SM of the GPU
    once (small k or N would otherwise leave SMs idle; e.g. S1's 4096 rows in blocks of 64 are 64
    programs for 132 SMs). Unchanged under the interpreter."""
    if INTERPRET:
        return bm
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    while bm > 16 and programs(bm) < sms:
        bm //= 2
    return bm


@triton.jit
def mm(a, b, acc, DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    """acc + a @ b with fp32 (float64 for float64) accumulation at the requested precision.

    DOT_PREC: "native" (operands as loaded: fp16/bf16/fp64), or for fp32 operands "ieee", "tf32x3",
    "tf32", "bf16" (operands rounded to bfloat16). The interpreter ignores input_precision and
    multiplies bf16/fp16 operands wrongly, so there the rounded operands are widened to fp32 first
    (exact: products of bf16/fp16 values are exact in fp32)."""
    if DOT_PREC == "bf16":
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
    # out_dtype=acc.dtype: before Triton 3.8 tl.dot's out_dtype defaults to float32 and must equal the
    # accumulator's, so the float64 kernels did not compile on 3.5-3.7.
    if INTERP:
        if a.dtype != tl.float64:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        out = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
    elif DOT_PREC == "native" or DOT_PREC == "bf16":
        out = tl.dot(a, b, acc, out_dtype=acc.dtype)
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PREC, out_dtype=acc.dtype)
    return out


@triton.jit
def neighbours(pos, H, W, WINDOW: tl.constexpr, W2P: tl.constexpr):
    """pos (BP,) flat positions -> (BP, W2P) flat neighbour positions (row-major offsets dy, dx of the
    WINDOW x WINDOW window), whether each lies in the map, and whether the offset exists (< WINDOW^2).
    Out-of-map neighbours are the zero padding: they get position 0 and must be masked on loads."""
    R: tl.constexpr = WINDOW // 2
    o = tl.arange(0, W2P)
    real = o < WINDOW * WINDOW
    h = pos[:, None] // W + (o // WINDOW)[None, :] - R
    w = pos[:, None] % W + (o % WINDOW)[None, :] - R
    inside = (h >= 0) & (h < H) & (w >= 0) & (w < W) & real[None, :]
    return tl.where(inside, h * W + w, 0), inside, real


@triton.jit
def log1p(x):
    """log(1 + x) for x >= 0, accurate also when x is below the epsilon (Goldberg's trick: the rounding
    of u = 1 + x cancels in log(u) * x / (u - 1)). Triton has no log1p that the interpreter runs."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def selected_rows(idx_ptr, b, pid, K, BM: tl.constexpr):
    """Block pid of the (B, k) selection, image b: row numbers rm, whether each is < k, the positions."""
    rm = pid * BM + tl.arange(0, BM)
    live = rm < K
    return rm, live, tl.load(idx_ptr + b * K + rm, mask=live, other=0)


@triton.jit
def selected_neighbourhoods(idx_ptr, b, pid, K, H, W, WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    """selected_rows plus each selected position's window (see ``neighbours``; ``inside`` also
    excludes rows past k)."""
    rm, live, pos = selected_rows(idx_ptr, b, pid, K, BP)
    nb, inside, real = neighbours(pos, H, W, WINDOW, W2P)
    return rm, live, pos, nb, inside & live[:, None], real
