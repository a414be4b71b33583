"""Global row entropy kernel (kernels/entropy_global.py) against the float64 reference."""
import pytest
import torch

from qsattn_fast import entropy
from qsattn_fast._common import rows

from support.numerics import features, op, ref_entropy, rel_err
from support.triton_env import DEVICE, INTERPRET


def entropy_global(x, precision=None):
    """The Triton op on the rows of x (B, C, H, W), as the backend calls it."""
    return op("entropy_global", "triton")(rows(x), precision)


@pytest.mark.parametrize("B,C,H,W", [(1, 3, 7, 9), (2, 19, 9, 11), (3, 40, 5, 13), (1, 130, 12, 12)])
def test_fp32_matches_reference(B, C, H, W):
    x = features(B, C, H, W).to(DEVICE)
    h = entropy_global(x)
    assert h.shape == (B, H * W) and h.dtype == torch.float32
    assert rel_err(h.cpu(), ref_entropy(x)) < 2e-4


def test_peaked_rows_no_cancellation():
    """256 channels make the rows peaked (all entropies < 1e-3, many below fp32's epsilon); the kernel's
    log1p(R) - T/(1 + R) keeps them to fp32 accuracy where log Z - T/Z (Z rounded to 1) would not."""
    x = features(1, 256, 6, 7, scale=0.3).to(DEVICE)
    ref = ref_entropy(x)
    assert float(ref.max()) < 1e-3 and float(ref.min()) < 1.2e-7       # some below fp32 epsilon
    assert rel_err(entropy_global(x).cpu(), ref) < 2e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-4), (torch.float64, 1e-10)])
def test_other_dtypes(dtype, tol):
    x = features(2, 21, 6, 5, dtype=dtype).to(DEVICE)
    h = entropy_global(x)
    assert h.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(h.cpu(), ref_entropy(x)) < tol


@pytest.mark.parametrize("precision,tol", [("ieee", 2e-4), ("tf32x3", 2e-4), ("tf32", 2e-2), ("bf16", 5e-2)])
def test_precisions(precision, tol):
    """Accuracy per precision, and the path taken: tf32 and bf16 operands leave visible rounding, the
    three-pass tf32x3 removes most of tf32's (bf16 is emulated exactly under the interpreter, tf32 not)."""
    if INTERPRET and precision in ("tf32", "tf32x3"):
        pytest.skip("the Triton interpreter ignores input_precision: this case would run ieee")
    x = features(2, 24, 5, 7, scale=0.3).to(DEVICE)
    ref = ref_entropy(x)

    def err(p):
        return rel_err(entropy(x, "global", backend="triton", precision=p).cpu(), ref)

    e = err(precision)
    assert e < tol
    if precision in ("tf32", "bf16"):
        assert e > 1e-6
    if precision == "tf32x3":
        assert e < 0.1 * err("tf32")


@pytest.mark.skipif(not INTERPRET, reason="checks the interpreter's own layout handling")
def test_channels_last_input():
    x = features(2, 6, 5, 7).to(memory_format=torch.channels_last)
    assert rel_err(entropy_global(x), ref_entropy(x)) < 2e-4
