"""Error measures, random feature maps and the selection check shared by the op tests."""
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in out never passes)."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def features(B, C, H, W, dtype=torch.float32, scale=0.5, requires_grad=False):
    """Random NCHW features; ``scale`` sets how peaked the attention rows are (logits ~ scale^2 * C)."""
    x = (torch.randn(B, C, H, W, dtype=torch.float64) * scale).to(dtype)
    return x.requires_grad_(requires_grad)


def assert_valid_selection(idx, ref_entropy, k, tol):
    """docs/design.md §8: k distinct indices per image whose reference entropy is <= the reference k-th
    smallest + tol (near-ties may legitimately swap)."""
    assert idx.shape == (ref_entropy.shape[0], k) and idx.dtype == torch.int64
    kth = ref_entropy.sort(dim=1).values[:, k - 1:k]
    for b in range(idx.shape[0]):
        assert idx[b].unique().numel() == k, "selected indices are not distinct"
    picked = ref_entropy.gather(1, idx)
    excess = float((picked - kth).max())
    assert bool((picked <= kth + tol).all()), f"selected entropies exceed the k-th smallest by {excess}"


#: dtype -> (output, gradient) relative tolerances of a routing against the float64 reference (docs/design.md §8).
ROUTE_TOL = {torch.float64: (1e-8, 1e-8), torch.float32: (2e-4, 1e-4), torch.float16: (2e-3, 5e-3),
             torch.bfloat16: (1e-2, 2e-2)}


def random_idx(B, N, k):
    """(B, k) int64: k distinct random rows of N per image."""
    return torch.stack([torch.randperm(N)[:k] for _ in range(B)]) if B else torch.empty(0, k, dtype=torch.int64)
