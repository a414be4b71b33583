"""qsattn::entropy_global (csrc/entropy_global_cpu.cpp) against the reference: fp32 to 2e-4 and fp64
to 1e-12 relative, peaked rows, several query/key tiles with ragged edges, thread-count independence."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import native

from conftest import features, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))

SHAPES = [(1, 8, 7, 9), (2, 5, 6, 11), (3, 3, 5, 5), (1, 3, 23, 29)]   # N = 667: 3 query x 2 key tiles, ragged


@pytest.mark.parametrize("B,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_against_reference(B, C, H, W, dtype, tol, scale):
    x = features(B, C, H, W, dtype, scale=scale)
    got = q.attention_entropy(x, "global", backend="native")
    ref = q.attention_entropy(x.double(), "global", backend="reference")
    assert got.dtype == dtype and got.shape == (B, H * W)
    assert rel_err(got, ref) < tol


def test_peaked_rows_keep_fp32_accuracy():
    """256-channel features: logits in the hundreds, entropies far below 1 (DESIGN §2)."""
    x = features(1, 256, 9, 7, torch.float32, scale=0.3)
    got = q.attention_entropy(x, "global", backend="native")
    ref = q.attention_entropy(x.double(), "global", backend="reference")
    assert float(ref.max()) < 1e-3 and rel_err(got, ref) < 2e-4


def test_constant_rows_give_log_n():
    f = torch.zeros(2, 37, 4)
    assert torch.allclose(torch.ops.qsattn.entropy_global(f), torch.full((2, 37), float(torch.log(torch.tensor(37.)))))


def test_transposed_view_equals_contiguous_rows():
    x = features(2, 6, 5, 7)
    f = x.flatten(2).transpose(1, 2)
    assert not f.is_contiguous()
    assert torch.equal(torch.ops.qsattn.entropy_global(f), torch.ops.qsattn.entropy_global(f.contiguous()))


def test_result_does_not_depend_on_thread_count():
    f = features(1, 5, 20, 31).flatten(2).transpose(1, 2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.qsattn.entropy_global(f)
        torch.set_num_threads(max(2, old))
        many = torch.ops.qsattn.entropy_global(f)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype):
    x = features(2, 8, 5, 6, dtype)
    got = q.attention_entropy(x, "global", backend="native")
    assert got.dtype == torch.float32
    assert rel_err(got, q.attention_entropy(x.double(), "global", backend="reference")) < 2e-4


@pytest.mark.parametrize("f,match", [
    (torch.randn(3, 4), "f: expected a 3-D tensor"),
    (torch.randn(1, 3, 4).half(), "f: expected float32 or float64"),
    (torch.ones(1, 3, 4, dtype=torch.int32), "f: expected float32 or float64"),
])
def test_bad_inputs(f, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.qsattn.entropy_global(f)


def test_opcheck():
    torch.library.opcheck(torch.ops.qsattn.entropy_global.default, (torch.randn(2, 13, 5),))
    torch.library.opcheck(torch.ops.qsattn.entropy_global.default, (torch.randn(1, 9, 3, dtype=torch.float64),))
