"""qsattn::entropy_global.native (csrc/entropy_global_cpu.cpp) against the reference: fp32 to 2e-4 and
fp64 to 1e-12 relative, peaked rows, thread-count independence, precision None or "ieee" only. The
kernel forms only the TS x TS tiles I <= J of the symmetric logits and serves the rows of J from the
columns of S_IJ: the shapes cover one ragged tile (N < TS), N not a multiple of TS, N exactly 2 and 3
tiles, several images, and N > 32 tiles (superblocks of 2 x 2 tiles). Up to SMALL_C channels the tiles
come from small_logits, beyond from sgemm: both paths are covered over several tiles. Tests taking the
cpu_level fixture run at every instruction-set level this CPU has; at x86-64-v4 a tile whose maxima lie
within kReuseSpan = 32 of each other serves its column terms from its row terms' exps, others take two."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast.backends import native

from support.numerics import SHAPES as COMMON_SHAPES, features, op, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))

# The kernel's tile edge and its largest channel count for small_logits instead of sgemm (csrc/cpu_common.h),
# as the extension reports them (1, 1 where it is not loaded: the module is skipped then).
_CONSTANTS = native.constants()
TS, SMALL_C = _CONSTANTS.get("entropy_global_tile", 1), _CONSTANTS.get("entropy_global_small_c", 1)

SHAPES = [*COMMON_SHAPES,
          (1, 3, 23, 29),   # N = 667: 2 tiles, the second ragged
          (2, 4, 24, 32),   # N = 768: exactly 2 tiles, 2 images
          (1, 5, 32, 36),   # N = 1152: exactly 3 tiles
          (3, 2, 27, 41),   # N = 1107: 3 tiles, 3 images
          (2, 12, 23, 29),  # N = 667, C > SMALL_C: sgemm tiles
          (1, 9, 32, 36)]   # N = 1152, C = SMALL_C + 1


@pytest.mark.parametrize("B,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_against_reference(B, C, H, W, dtype, tol, scale, cpu_level):
    x = features(B, C, H, W, dtype, scale=scale)
    got = q.entropy(x, "global", backend="native")
    ref = q.entropy(x.double(), "global", backend="reference")
    assert got.dtype == dtype and got.shape == (B, H * W)
    assert rel_err(got, ref) < tol


@pytest.mark.parametrize("C", range(1, SMALL_C + 2))
def test_every_channel_count_of_small_logits(C):
    """small_logits has one unrolled body per channel count up to SMALL_C (N = 437: 2 tiles)."""
    x = features(1, C, 19, 23, torch.float64)
    assert rel_err(q.entropy(x, "global", backend="native"),
                   q.entropy(x, "global", backend="reference")) < 1e-12


def test_peaked_rows_keep_fp32_accuracy():
    """256-channel features: logits in the hundreds, entropies far below 1 (docs/design.md §2)."""
    x = features(1, 256, 9, 7, torch.float32, scale=0.3)
    got = q.entropy(x, "global", backend="native")
    ref = q.entropy(x.double(), "global", backend="reference")
    assert float(ref.max()) < 1e-3 and rel_err(got, ref) < 2e-4


def test_peaked_rows_across_tiles_keep_fp32_accuracy(cpu_level):
    """Peaked rows over 3 tiles: most of each row's tiny sum r comes from column-served tiles, whose
    partial states are rescaled by e^(their max - the row max) when merged (docs/design.md §2, merge rule)."""
    x = features(1, 256, 33, 34, torch.float32, scale=0.3)
    got = q.entropy(x, "global", backend="native")
    ref = q.entropy(x.double(), "global", backend="reference")
    assert float(ref.max()) < 1e-2 and rel_err(got, ref) < 2e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_row_maxima_in_column_served_tiles(dtype, tol, cpu_level):
    """Row norms falling along the rows (N = 1300, 4 tiles): the largest logit of a late row lies in an
    early column, i.e. in a tile that serves that row through its columns."""
    f = torch.randn(2, 1300, 6, dtype=torch.float64) * torch.linspace(3.0, 0.2, 1300, dtype=torch.float64)[:, None]
    ref = q.entropy(f.transpose(1, 2).reshape(2, 6, 26, 50), "global", backend="reference")
    rows_max_at = (f @ f.transpose(1, 2)).argmax(-1)
    assert bool((rows_max_at[:, 2 * TS:] < TS).any())   # the case this test is about does occur
    assert rel_err(op("entropy_global", "native")(f.to(dtype), None), ref) < tol


def test_superblocks_beyond_32_tiles(cpu_level):
    """N = 113^2 = 12769 > 32 tiles: tasks are pairs of 2-tile superblocks (the last one ragged), 17
    partial states per row. Checked against float64 entropies of 1200 random rows and the last 100."""
    N = 12769
    assert N > 32 * TS
    f = torch.randn(N, 3, dtype=torch.float64) * 0.7
    rows = torch.cat([torch.randperm(N - 100)[:1200], torch.arange(N - 100, N)])
    logp = torch.log_softmax(f[rows] @ f.T, -1)
    ref = -(logp.exp() * logp).sum(-1)
    assert rel_err(op("entropy_global", "native")(f[None].float(), None)[0, rows], ref) < 2e-4


def test_tiles_with_close_and_far_apart_maxima(cpu_level):
    """Two tiles of small logits (their maxima within 32 of each other: at x86-64-v4 one exp per logit)
    and two of logits in the hundreds (maxima far apart: two exps), and the tiles between them."""
    f = torch.randn(1, 4 * TS, 4, dtype=torch.float64) * 0.5
    f[:, 2 * TS:] *= 12.0
    logits = f[0, 2 * TS:] @ f[0, 2 * TS:].T
    assert float(logits[:TS, TS:].amax(0).max() - logits[:TS, TS:].amax(0).min()) > 32   # far apart there
    assert float((f[0, :2 * TS] @ f[0, :2 * TS].T).abs().max()) < 16                      # close here
    ref = op("entropy_global", "native")(f, None)
    assert rel_err(ref, q.entropy(f.transpose(1, 2).reshape(1, 4, 32, 48), "global", backend="reference")) < 1e-12
    assert rel_err(op("entropy_global", "native")(f.float(), None), ref) < 2e-4


def test_peaked_columns_through_one_exp_per_logit(cpu_level):
    """Column terms 64..86 below their column's max, in a tile whose maxima P_j (110..125) are close, so
    that at x86-64-v4 they come from the row terms' exps times e^(m_i - M) e^(M - m_j): rows j of the
    second tile hold logits P_j and P_j - g_j against the first tile and none above P_j - 107 elsewhere
    (flushed by the kernel; all of them together below 1e-7 of the row's entropy in float64), so their
    entropies (1 + g) e^-g ~ 1e-26..1e-36 consist of exactly those terms; each within 1e-4."""
    n, a = TS, 80.0
    P = torch.empty(n, dtype=torch.float64).uniform_(110.0, 125.0)
    g = torch.empty(n, dtype=torch.float64).uniform_(64.0, 86.0)
    f = torch.zeros(2 * n, n, dtype=torch.float64)
    f[:n] = a * torch.eye(n, dtype=torch.float64)                     # rows i: a e_i (self-logit 6400)
    j = torch.arange(n)
    f[n + j, j] = P / a                                                # rows j: logit P_j with row j ...
    f[n + j, (j + 1) % n] = (P - g) / a                                # ... and P_j - g_j with row j + 1
    f32 = f.float()
    want = q.entropy(f32.double().T.reshape(1, n, 2 * n, 1), "global", backend="torch")[0, n:]
    got = op("entropy_global", "native")(f32[None], None)[0, n:]
    assert bool(((want > 1e-38) & (want < 1e-24)).all())
    assert float(((got.double() - want) / want).abs().max()) < 1e-4


def test_constant_rows_give_log_n():
    f = torch.zeros(2, 37, 4)
    assert torch.allclose(op("entropy_global", "native")(f, None),
                          torch.full((2, 37), float(torch.log(torch.tensor(37.)))))


def test_transposed_view_equals_contiguous_rows():
    x = features(2, 6, 5, 7)
    f = x.flatten(2).transpose(1, 2)
    assert not f.is_contiguous()
    assert torch.equal(op("entropy_global", "native")(f, None),
                       op("entropy_global", "native")(f.contiguous(), None))


@pytest.mark.parametrize("C", [5, SMALL_C + 4])
def test_result_does_not_depend_on_thread_count(C, cpu_level):
    """Each row's partial states are merged in a fixed order, whatever thread formed them (N = 1100:
    3 tiles, 6 tasks per image), with tiles from small_logits and from sgemm."""
    f = features(2, C, 25, 44).flatten(2).transpose(1, 2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op("entropy_global", "native")(f, None)
        torch.set_num_threads(max(2, old))
        many = op("entropy_global", "native")(f, None)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype):
    x = features(2, 8, 5, 6, dtype)
    got = q.entropy(x, "global", backend="native")
    assert got.dtype == torch.float32
    assert rel_err(got, q.entropy(x.double(), "global", backend="reference")) < 2e-4


@pytest.mark.parametrize("f,match", [
    (torch.randn(3, 4), "f: expected a 3-D tensor"),
    (torch.randn(1, 3, 4).half(), "f: expected float32 or float64"),
    (torch.ones(1, 3, 4, dtype=torch.int32), "f: expected float32 or float64"),
])
def test_bad_inputs(f, match):
    with pytest.raises(RuntimeError, match=match):
        op("entropy_global", "native")(f, None)


def test_precision_ieee_only():
    """precision None or "ieee" (the same plain arithmetic); the native kernels have no other."""
    f = torch.randn(2, 13, 5)
    assert torch.equal(op("entropy_global", "native")(f, "ieee"),
                       op("entropy_global", "native")(f, None))
    for precision in ("tf32", "tf32x3", "bf16"):
        with pytest.raises(RuntimeError, match="precision: .*ieee.*got \"" + precision):
            op("entropy_global", "native")(f, precision)


def test_peaked_rows_down_to_the_smallest_normal_floats():
    """A row whose only off-maximum logits lie 65..86 below its maximum has an entropy of ~1e-28..1e-36:
    normal floats, which the kernel keeps (it once flushed every e^d below e^-64, tying such rows at 0
    and so losing QS-Attn's selection order on peaked layers); fp32 within 1e-4 of float64."""
    gaps = torch.empty(6).uniform_(65.0, 86.0)
    a = 20.0
    x = torch.zeros(1, len(gaps), 1, 2 * len(gaps), dtype=torch.float64)
    for i, g in enumerate(gaps):  # pair i on channel i: row 2i has the gap g to row 2i+1, 400 to all others
        x[0, i, 0, 2 * i] = a
        x[0, i, 0, 2 * i + 1] = (a * a - float(g)) / a
    want = q.entropy(x, "global", backend="torch")[0, 0::2]
    got = q.entropy(x.float(), "global", backend="native")[0, 0::2]
    assert bool((want < 1e-26).all()) and bool((got > 0).all()) and rel_err(got, want) < 1e-4


@pytest.mark.parametrize("lo", [-87.0, -64.0])   # the entropy's flush (kEntropyExpMin), the routing's
def test_fast_exp_against_a_float64_exp_over_its_range(lo, cpu_level):
    """The kernels' vectorised exp (csrc/cpu_common.h fast_exp, and v4::exp_where at x86-64-v4) over
    every logit gap it is used on, d in [lo, 0], and across the flush: within 1.5 ulp of the float64 exp
    above lo, exactly 0 below it; fresh random points as well as a dense grid."""
    import numpy as np

    from qsattn_fast import _C
    grid = np.linspace(lo - 2, 0, 400_001, dtype=np.float32)
    fresh = (np.random.default_rng(int(torch.randint(0, 2**31, ()))).random(200_000) * (lo - 2)).astype(np.float32)
    edge = np.nextafter(np.float32(lo), np.float32([-np.inf, np.inf])).astype(np.float32)
    x = np.concatenate([grid, fresh, edge, np.float32([lo, 0.0])])
    y = np.frombuffer(_C.fast_exp_f32(x.tobytes(), lo), dtype=np.float32)
    kept = x >= lo
    ref = np.exp(x[kept].astype(np.float64))
    ulp = np.abs(y[kept] - ref) / np.spacing(ref.astype(np.float32))
    assert ulp.max() < 1.5 and (y[~kept] == 0).all() and y[x == 0][0] == 1.0
    assert (y[kept] > 0).all()                                   # no subnormal or zero above the flush
