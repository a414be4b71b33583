"""train/diagnostics.py: the released code's float32 entropy that the selection log compares with (the log
itself: tests/train/test_trainer.py)."""
import pytest
import torch

from qsattn_fast import OP_MODES
from qsattn_fast.backends.reference import global_attention, local_attention  # the dense oracle
from qsattn_fast.train.diagnostics import textbook_entropy


@pytest.mark.parametrize("mode", OP_MODES["entropy"])
def test_textbook_entropy_is_the_released_codes(mode):
    """The released code's float32 entropy, blockwise (global) or per window (local), equals the
    reference backend's dense -sum p log p; one-hot rows give exactly 0."""
    feat = torch.randn(2, 5, 7, 9) * torch.tensor([0.2, 8.0]).view(2, 1, 1, 1)  # mild and one-hot rows
    p = global_attention(feat) if mode == "global" else local_attention(feat, 3, "paper")
    want = -torch.special.xlogy(p, p).sum(-1)
    got = textbook_entropy(feat, mode, 3, block=10)
    # The two form the logits s_ij (up to ~1000 here) in different float32 orders, which moves an entropy by
    # a fraction of the largest logit's ulp (dH/ds_j = -p_j (log p_j + H)): at most 0.09 eps s_max in 6000
    # draws. Image 1's scale makes some rows one-hot in float32 in every draw measured.
    s_max = float(feat.flatten(2).norm(dim=1).max() ** 2)
    assert got.shape == (2, 63) and torch.allclose(got, want, rtol=1e-5, atol=0.5 * torch.finfo().eps * s_max)
    assert bool((got[0] > 0).all())
    assert torch.equal(got[1] == 0, want[1] == 0) and bool((got[1] == 0).any())
