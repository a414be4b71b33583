"""What the op tests share: the common shapes, error measures, random maps and indices, the oracles (stable
selection, reference entropies, the selection check) and the ways they call the ops (one op of one
backend; a routing with the gradients of a random loss)."""
import torch

import qsattn_fast as q

#: (B, C, H, W) of the tests that sweep shapes: N = 63, 66, 25 (odd, never a multiple of a block), B = 1..3.
SHAPES = [(1, 8, 7, 9), (2, 5, 6, 11), (3, 3, 5, 5)]


def op(name: str, backend: str):
    """``torch.ops.qsattn.<name>.<backend>``: ``backend``'s implementation of the contract's op ``name``
    (qsattn_fast/ops.py), its kernels loaded (Triton's on first use)."""
    return q.backends()[backend].kernel(name)


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


def stable(e, k):
    """(B, N) -> (B, k): the contract's selection, argsort(e, stable=True)[:, :k]."""
    return torch.argsort(e, dim=1, stable=True)[:, :k]


def ref_entropy(x, mode="global", window=7):
    """x (B, C, H, W) -> (B, H*W): the reference backend's float64 entropies, on the CPU."""
    return q.entropy(x.double().cpu(), mode, window, backend="reference")


def run(backend, x, idx, values, mode="global", window=5, precision=None):
    """``route`` on ``backend``: the routed outputs and the gradients, w.r.t. x and every value map (None
    stands for x itself), of a linear loss with fixed random weights (the same on every backend)."""
    x = x.detach().requires_grad_()
    values = [x if v is None else v.detach().requires_grad_() for v in values]
    outs = q.route(x, idx, values, mode, window, backend=backend, precision=precision)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs)
    return outs, torch.autograd.grad(loss, [x] + [v for v in values if v is not x])


def compare(backend, device, x, idx, values, dtype, mode="global", window=5, precision=None, tol=None) -> float:
    """:func:`run` on ``backend`` with the inputs on ``device`` against the float64 reference: outputs and
    gradients of ``dtype`` and the reference's shapes, within ``tol`` (default ROUTE_TOL[dtype]); returns
    the largest output error."""
    out_tol, grad_tol = tol or ROUTE_TOL[dtype]
    got_o, got_g = run(backend, x.to(device), idx.to(device), [None if v is None else v.to(device) for v in values],
                       mode, window, precision)
    ref_o, ref_g = run("reference", x.double(), idx, [None if v is None else v.double() for v in values], mode,
                       window)
    for g, r in zip(got_o, ref_o):
        assert g.dtype == dtype and g.shape == r.shape
        assert rel_err(g.cpu(), r) < out_tol
    for g, r in zip(got_g, ref_g):
        assert g.dtype == dtype and g.shape == r.shape
        assert rel_err(g.cpu(), r) < grad_tol
    return max(rel_err(g.cpu(), r) for g, r in zip(got_o, ref_o))
