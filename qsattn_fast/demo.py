"""``python -m qsattn_fast.demo``: QS-Attn on an example feature map, with both pure-PyTorch backends.

The example is a synthetic 'image' (a disc and a square on a smooth textured background) passed through a
fixed, seeded random convolutional encoder, so that positions differ in how distinctive they are. The
script selects the k lowest-entropy queries with the streaming ``torch`` backend and the materialising
``reference`` backend, checks that both pick the same queries, prints where they lie, and reports the
time and the extra peak memory of one forward+backward step of each. The training demo,
``qsattn-train --demo``, is another thing: its settings are in ``qsattn_fast.train.demo``.
"""
from __future__ import annotations

import argparse
import time

import torch

import qsattn_fast as q
from qsattn_fast._memory import PeakMemory


def example_features(side: int, channels: int, seed: int = 0) -> torch.Tensor:
    """(1, channels, side, side) features of a synthetic scene from a seeded random encoder."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    texture = 0.2 * torch.sin(7 * xx + 3 * yy) * torch.cos(5 * yy)
    disc = ((xx + 0.35) ** 2 + (yy + 0.2) ** 2 < 0.12).float()
    square = ((xx - 0.45).abs() < 0.25) & ((yy - 0.35).abs() < 0.25)
    img = torch.stack([texture + disc, texture + square.float(), texture - 0.5 * disc]).unsqueeze(0)
    w1 = torch.randn(32, 3, 3, 3, generator=g) * 0.5
    w2 = torch.randn(channels, 32, 3, 3, generator=g) * (2.0 / (32 * 9)) ** 0.5
    h = torch.relu(torch.nn.functional.conv2d(img, w1, padding=1))
    return torch.nn.functional.conv2d(h, w2, padding=1)


def step(feat, target, k, mode, backend):
    """One forward+backward QS-Attn step; returns the selected indices and the seconds it took."""
    x, t = feat.detach().requires_grad_(), target.detach().requires_grad_()
    t0 = time.perf_counter()
    idx, (a, b) = q.qsattn(x, [x, t], k=k, mode=mode, backend=backend)
    (a.sum() + b.sum()).backward()
    return idx, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=64, help="feature map height = width (N = side^2)")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("-k", type=int, default=256, help="queries to select")
    ap.add_argument("--mode", default="global", choices=q.OP_MODES["qsattn"])
    args = ap.parse_args(argv)

    feat = example_features(args.side, args.channels)
    target = feat + 0.3 * torch.randn(feat.shape, generator=torch.Generator().manual_seed(1))
    n = args.side ** 2
    print(f"QS-Attn ({args.mode}) on a 1x{args.channels}x{args.side}x{args.side} feature map: N={n}, k={args.k}; "
          f"an N x N float32 attention matrix would take {n * n * 4 / 2**20:.0f} MiB")
    step(example_features(8, args.channels), example_features(8, args.channels), 16, args.mode, "torch")  # warm-up
    results = {}
    for backend in ("torch", "reference"):
        with PeakMemory(feat.device) as mem:
            idx, seconds = step(feat, target, args.k, args.mode, backend)
        results[backend] = (idx, seconds, mem.extra_bytes)
    idx = results["torch"][0][0]
    same = torch.equal(results["torch"][0], results["reference"][0])
    print(f"selected queries (row, col) of the lowest entropies: "
          f"{[divmod(int(i), args.side) for i in idx[:12]]} ...")
    print(f"both backends select the same {args.k} queries: {same}")
    grid = torch.zeros(n, dtype=torch.bool)
    grid[idx] = True
    grid = grid.view(args.side, args.side)
    cell = max(1, args.side // 32)                   # one character per cell x cell block: '#' if any selected
    for r in range(0, args.side, cell):
        print("  " + "".join("#" if grid[r:r + cell, c:c + cell].any() else "." for c in range(0, args.side, cell)))
    print(f"{'backend':10s} {'fwd+bwd s':>10s} {'extra peak MiB':>15s}")
    for backend, (_, seconds, peak) in results.items():
        print(f"{backend:10s} {seconds:10.3f} {peak / 2**20:15.1f}")


if __name__ == "__main__":
    main()
