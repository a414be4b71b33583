"""QS-Attn's selection diagnostics for ``--model qs`` runs (``selection_log.jsonl``), on the public API only.

How many attention rows tie at entropy 0 in float32 (docs/known-issues.md, "Selection ties"): the released
code's entropy -sum p log p ties every row whose attention is one-hot in float32 and then picks among
them arbitrarily; ours (cancellation-free, docs/design.md §2) ties fewer, in index order.
"""
from __future__ import annotations

import torch

import qsattn_fast as qs
from qsattn_fast.ops import split_mode


def textbook_entropy(feat: torch.Tensor, mode="global", window=7, block=256) -> torch.Tensor:
    """(B, C, H, W) -> (B, N) float32: the released code's row entropy -sum p log p (log 0 -> 0) of
    softmax(F F^T) (global; ``block`` rows at a time, nothing N x N) or of each zero-padded window
    (local: the ``reference`` backend, which forms exactly that), in float32 as the released code computes
    it: rows whose attention is one-hot in float32 give exactly 0 and tie in its sort."""
    f = feat.detach().float()
    if mode != "global":
        return qs.entropy(f, mode, window, backend="reference", check_finite=False)
    r = f.flatten(2).transpose(1, 2)   # (B, N, C) rows, row n = h*W + w
    out = []
    for i in range(0, r.shape[1], block):
        p = torch.softmax(r[:, i:i + block] @ r.transpose(1, 2), -1)
        out.append(-torch.special.xlogy(p, p).sum(-1))
    return torch.cat(out, 1)


def layer_selection_stats(feat: torch.Tensor, opt) -> dict:
    """The selection of ``--num_patches`` queries on one QS layer's float32 source features ``feat``
    (``opt``'s mode, window, backend, precision), compared with the released code's ties; the fields are
    those of :func:`selection_stats`."""
    sel_mode = split_mode(opt.qs_mode)[0]
    ent = qs.entropy(feat, mode=sel_mode, window=opt.qs_window, backend=opt.qs_backend,
                               precision=opt.qs_precision, check_finite=False)
    idx = qs.select(ent, min(opt.num_patches, ent.shape[1]), backend=opt.qs_backend)
    text = textbook_entropy(feat, sel_mode, opt.qs_window)
    picked = ent.gather(1, idx).double().flatten()
    q = torch.quantile(picked, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64, device=picked.device))
    return {"textbook_zero_rows": float((text == 0).double().mean()),
            "selected_textbook_zero": float((text.gather(1, idx) == 0).double().mean()),
            "selected_zero": float((picked == 0).double().mean()),
            "selected_entropy": {"p5": float(q[0]), "p50": float(q[1]), "p95": float(q[2]),
                                 "max": float(picked.max())}}


@torch.no_grad()
def selection_stats(model) -> dict:
    """QS-Attn's selection on a :class:`.model.QSAttnModel`'s last source images (``real_A``), per QS layer
    (keyed by NCE layer id). ``textbook_zero_rows``: the fraction of all rows
    whose released-code entropy (:func:`textbook_entropy`) is exactly 0 (above num_patches / N, the
    released code picks among tied rows arbitrarily); ``selected_textbook_zero``: that fraction among the
    rows we select; ``selected_entropy`` {p5, p50, p95, max}: our entropies of the selected rows;
    ``selected_zero``: the fraction of those that are exactly 0 even so (every off-maximum term underflows
    in float32, or, on the native CPU kernel, falls below its e^-87 flush: such rows tie for us too and are
    taken in index order; docs/design.md §2). Costs one encoder pass and one entropy pass per QS layer."""
    opt = model.opt
    with model.autocast:
        feats = model.netG(model.real_A, opt.nce_layers_list, encode_only=True)
    return {str(opt.nce_layers_list[i]): layer_selection_stats(feats[i].float(), opt)
            for i in sorted(model.netF.qs_positions(len(feats)))}
