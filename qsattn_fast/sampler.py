"""``QSPatchSampler``: the drop-in replacement for CUT's ``PatchSampleF`` with QS-Attn on chosen layers.

Calling convention (CUT's, plus the QS-Attn state)::

    pooled_src, ids, state = sampler(feats_src, num_patches)            # source call: selects
    pooled_tgt, _, _ = sampler(feats_tgt, num_patches, ids, state)      # target call: same rows
    pooled_src, pooled_tgt, ids = sampler.paired(feats_src, feats_tgt, num_patches)  # one pass

``feats`` is a list of (B, C_l, H_l, W_l) maps, one per NCE layer. Ordinary layers take
``num_patches`` random positions shared across the batch (as CUT). QS layers (``qs_layers``, default
the last two) select ``num_patches`` queries per image by the entropy of the source attention and route
the features with those attention rows; ``state`` keeps the source maps and indices so that the target
call routes with the source attention. Each pooled list entry is (B * num_patches, nc), passed through
the layer's MLP head (Linear-ReLU-Linear, created lazily from the first features, or by
``create_mlp``) and L2-normalised. ``num_patches=0`` returns whole maps (B, nc, H, W), as CUT does.
The MLP parameter names (``mlp_<layer>.0.weight``, ...) equal CUT's, so ``netF`` checkpoints move both ways.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import rows
from .api import qsattn, route
from .ops import split_mode

#: CUT's weight initialisations by ``--init_type``: (weight, gain) -> None, in place.
_INITS = {"normal": lambda w, gain: nn.init.normal_(w, 0.0, gain),
          "xavier": lambda w, gain: nn.init.xavier_normal_(w, gain=gain),
          "kaiming": lambda w, gain: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
          "orthogonal": lambda w, gain: nn.init.orthogonal_(w, gain=gain)}
INIT_TYPES = tuple(_INITS)


def init_weights(net: nn.Module, init_type="xavier", init_gain=0.02) -> nn.Module:
    """CUT's ``init_weights``: Conv*/Linear weights by ``init_type`` (normal | xavier | kaiming |
    orthogonal, scale ``init_gain``), their biases 0; BatchNorm weights N(1, gain), biases 0. Defined
    here, in the core, for the sampler's heads; the trainer's networks (``qsattn_fast.train``) use it too."""
    if init_type not in _INITS:
        raise ValueError(f"init_type: expected one of {', '.join(INIT_TYPES)}, got {init_type!r}")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            _INITS[init_type](m.weight.data, init_gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias.data)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight.data, 1.0, init_gain)
            nn.init.zeros_(m.bias.data)
    return net


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """CUT's ``Normalize(2)``: x / (||x||_2 + 1e-7) along dim 1. The norm's gradient at a zero row is
    taken as 0 (``vector_norm``), so such a row gets the true Jacobian I / 1e-7; CUT's ``pow(0.5)`` gives
    NaN there (0 * inf), which then poisons the MLP's weights: a patch whose features are all zero
    (a dead ReLU region) is enough."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-7)


class QSPatchSampler(nn.Module):
    """CUT's patch sampler with QS-Attn on ``qs_layers`` (indices into the feature list; negative ones
    count from the end; ``None`` = the last two; ``()`` = plain CUT). ``mode``, ``window``,
    ``backend``, ``precision``, ``variant`` and ``check_finite`` are passed to
    :func:`qsattn_fast.qsattn`.

    ``detach_attention=True`` builds the attention (entropy, selection, the rows Q = F[idx], K = F) from
    the detached source maps; the routed values (source and target) keep their gradients. The paper and
    the released code (the default, False) let the loss reach the source features through the attention
    rows, so the source encoder is backpropagated too. CUT's PatchNCE detaches the pooled source (the
    keys), so with True the source encoder gets no gradient from the QS layers; the routing ops still hand
    a zero gradient to a value whose output got none, so to skip the source encoder's backward encode the
    source without a graph, as the trainer does (see docs/performance.md, "What a QS step costs")."""

    def __init__(self, use_mlp=True, nc=256, qs_layers=None, mode="global", window=7, backend="auto",
                 precision=None, variant="paper", init_type="xavier", init_gain=0.02, check_finite=True,
                 detach_attention=False):
        super().__init__()
        self.use_mlp, self.nc = use_mlp, nc
        self.qs_layers, self.detach_attention = qs_layers, detach_attention
        self.qs_kwargs = dict(mode=mode, window=window, backend=backend, precision=precision,
                              variant=variant, check_finite=check_finite)
        self.init_type, self.init_gain = init_type, init_gain
        self.mlp_init = False

    def create_mlp(self, feats) -> None:
        """Create the per-layer heads ``mlp_<i>`` for these features (CUT's ``create_mlp``): float32
        parameters on the features' device; call it (or a first forward) before building the optimizer."""
        for i, feat in enumerate(feats):
            mlp = nn.Sequential(nn.Linear(feat.shape[1], self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
            setattr(self, f"mlp_{i}", mlp.to(feat.device))
        init_weights(self, self.init_type, self.init_gain)
        self.mlp_init = True

    def qs_positions(self, n_layers: int) -> set[int]:
        """Positions (0 .. n_layers-1) of the QS layers among ``n_layers`` feature maps."""
        layers = (n_layers - 2, n_layers - 1) if self.qs_layers is None else self.qs_layers
        out = set()
        for i in layers:
            if not -n_layers <= i < n_layers:
                raise ValueError(f"qs_layers: index {i} is out of range for {n_layers} feature maps")
            out.add(i % n_layers)
        return out

    def forward(self, feats, num_patches=256, patch_ids=None, state=None):
        """Source call (``state=None``) or target call (``patch_ids`` and ``state`` of the source call).
        Returns (pooled per layer, patch_ids per layer, state)."""
        groups = [(f,) for f in feats]
        pooled, ids, new_state = self._sample(groups, num_patches, patch_ids, state)
        return [p[0] for p in pooled], ids, new_state

    def paired(self, feats_src, feats_tgt, num_patches=256):
        """Pool source and target maps at the same positions; QS layers route both values in one pass
        with the source attention. Returns (pooled_src, pooled_tgt, patch_ids)."""
        if len(feats_src) != len(feats_tgt):
            raise ValueError(f"feats_tgt: {len(feats_tgt)} maps but feats_src has {len(feats_src)}")
        pooled, ids, _ = self._sample(list(zip(feats_src, feats_tgt)), num_patches, None, None)
        return [p[0] for p in pooled], [p[1] for p in pooled], ids

    def _sample(self, groups, num_patches, patch_ids, state):
        if self.use_mlp and not self.mlp_init:
            self.create_mlp([g[0] for g in groups])
        qs = self.qs_positions(len(groups))
        if state is not None and set(state) != qs & set(range(len(groups))) and num_patches > 0:
            raise ValueError("state: does not come from a source call with the same QS layers")
        all_pooled, all_ids, new_state = [], [], {}
        for i, group in enumerate(groups):
            B, _, H, W = group[0].shape
            if num_patches == 0:
                taken, pid = [rows(f) for f in group], []
            elif i in qs:
                taken, pid, new_state[i] = self._query_selected(group, num_patches, state and state[i])
            else:
                pid = patch_ids[i] if patch_ids is not None else \
                    torch.randperm(H * W, device=group[0].device)[:min(num_patches, H * W)]
                taken = [rows(f)[:, pid] for f in group]
            outs = []
            for x in taken:
                x = x.flatten(0, 1)
                if self.use_mlp:
                    x = getattr(self, f"mlp_{i}")(x)
                x = l2_normalize(x)
                outs.append(x.view(B, H, W, -1).permute(0, 3, 1, 2) if num_patches == 0 else x)
            all_pooled.append(outs)
            all_ids.append(pid)
        return all_pooled, all_ids, new_state

    def _query_selected(self, group, num_patches, src_state):
        if src_state is None:
            src = group[0].detach() if self.detach_attention else group[0]   # the maps the attention is built from
            k = min(num_patches, src.shape[2] * src.shape[3])
            idx, routed = qsattn(src, list(group), k=k, **self.qs_kwargs)
            return list(routed), idx, (src, idx)
        src, idx = src_state
        routed = route(src, idx, list(group), **{**self.qs_kwargs, "mode": split_mode(self.qs_kwargs["mode"])[1]})
        return list(routed), idx, src_state
