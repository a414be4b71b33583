"""The ``Backend`` base class, the ``Request`` it is asked to run, and the NCHW -> rows adapter.

A backend declares the devices, dtypes, precisions and variants it supports and its size limits per
device (``limits``: window, channels, N); ``why_not`` returns the reasons it cannot take a request
(empty when it can). Its op methods take NCHW maps and call its implementations of the contract
(qsattn_fast/ops.py) on ``rows(.)`` views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .._common import rows

#: Every floating dtype; the backends that take them all declare ``dtypes = FLOAT_DTYPES``.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Request:
    """What a call needs from a backend: the op, where its data lives and how it must be computed."""
    op: str                 # one of _checks.OP_MODES: "entropy" | "select" | "route" | "qsattn"
    device: str             # torch.device.type
    dtype: torch.dtype
    mode: str | None = None
    precision: str | None = None
    variant: str = "paper"
    window: int | None = None     # the local window, set when the op attends locally
    channels: int | None = None   # C of the source map
    n: int | None = None          # N = H*W (entropy: its row count)


def request(op: str, feat: torch.Tensor, mode: str | None = None, precision: str | None = None,
            variant: str = "paper", window: int | None = None) -> Request:
    """The Request of an op on ``feat`` (B, C, H, W); ``window`` is kept only for modes that attend locally."""
    local = mode is not None and "local" in ops.split_mode(mode)
    return Request(op, feat.device.type, feat.dtype, mode, precision, variant, window if local else None,
                   feat.shape[1], feat.shape[2] * feat.shape[3])


class Backend:
    """Base class. Subclasses set the class attributes and implement the ops."""
    name = ""
    summary = ""
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = ()
    precisions: tuple[str, ...] = ("ieee",)
    variants: tuple[str, ...] = ("paper",)
    #: device -> {"window" | "channels" | "n": the largest value its kernels take}; absent: no limit.
    limits: dict[str, dict[str, int]] = {}

    def unavailable(self) -> str | None:
        """Why the backend cannot run at all on this machine (not built, not importable), or None."""
        return None

    def why_not(self, req: Request) -> list[str]:
        gone = self.unavailable()
        if gone:
            return [gone]
        reasons = []
        if req.device not in self.devices:
            reasons.append(f"device '{req.device}' not supported (supports {', '.join(self.devices)})")
        if req.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {str(req.dtype).replace('torch.', '')} not supported (supports {names})")
        if req.precision is not None and req.precision not in self.precisions:
            reasons.append(f"precision '{req.precision}' not supported (supports {', '.join(self.precisions)})")
        if req.variant not in self.variants:
            reasons.append(f"variant '{req.variant}' not supported (supports {', '.join(self.variants)})")
        for name, top in self.limits.get(req.device, {}).items():
            got = getattr(req, name)
            if got is not None and got > top:
                reasons.append(f"{name} {got} exceeds the {req.device} kernels' limit {top}")
        return reasons

    def auto_reasons(self, req: Request) -> list[str]:
        """Extra reasons for ``backend="auto"`` to pass over a backend that could run ``req`` if forced
        (e.g. Triton on CPU tensors, which runs only under the slow interpreter)."""
        return []

    #: Input dtypes the backend's op implementations take; others (half) are computed in float32.
    kernel_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)

    def kernel(self, name: str) -> torch._ops.OpOverload:
        """This backend's implementation of op ``name`` (qsattn_fast/ops.py): ``torch.ops.qsattn.<name>.<backend>``."""
        return ops.op(name, self.name)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype in self.kernel_dtypes else x.float()

    # Ops, one call of the backend's implementation each. Shapes: feat (B, C, H, W); entropy (B, N);
    # idx (B, k) int64; values tuple of (B, C_v, H, W); the ops see rows(.) (B, N, C) views.
    def entropy(self, feat, mode, window, precision, variant):
        f = rows(self._cast(feat))
        if mode == "global":
            return self.kernel("entropy_global")(f, precision)
        return self.kernel("entropy_local")(f, feat.shape[2], feat.shape[3], window)

    def select(self, entropy, k):
        return self.kernel("select")(self._cast(entropy), k)

    def route(self, feat, idx, values, mode, window, precision, variant):
        """Routed values in the values' dtypes (the ops return the accumulation dtype)."""
        f, v = rows(self._cast(feat)), [rows(self._cast(x)) for x in values]
        if mode == "local":
            outs, _ = self.kernel("route_local")(f, idx, v, feat.shape[2], feat.shape[3], window)
        else:
            outs, _ = self.kernel("route_global")(f, idx, v, precision)
        return tuple(o.to(x.dtype) for o, x in zip(outs, values))

    def qsattn(self, feat, values, k, mode, window, precision, variant):
        """Entropy -> selection -> routing; a backend may override this to share work between steps."""
        sel_mode, route_mode = ops.split_mode(mode)
        with torch.no_grad():
            ent = self.entropy(feat, sel_mode, window, precision, variant)
        idx = self.select(ent, k)
        return idx, self.route(feat, idx, values, route_mode, window, precision, variant)
