"""Backend registry and dispatch.

Backends (qsattn_fast/backends/) register themselves on import. ``resolve("auto", request)`` walks
``AUTO_PRIORITY`` and takes the first backend with no reasons; it never picks ``reference``. A forced
backend that cannot run, or an ``auto`` that finds none, raises ``BackendUnavailableError`` listing
every reason.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends.base import Backend, Request

#: Order in which ``backend="auto"`` tries the backends. ``reference`` is deliberately absent.
AUTO_PRIORITY = ("triton", "native", "torch")


class BackendUnavailableError(RuntimeError):
    """No backend (or not the forced one) can run a request; ``reasons`` maps backend name to reasons."""

    def __init__(self, message: str, reasons: dict[str, list[str]]):
        lines = [message] + [f"  {name}: {'; '.join(r)}" for name, r in reasons.items()]
        super().__init__("\n".join(lines))
        self.reasons = reasons


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def backends() -> dict[str, Backend]:
    """All registered backends by name."""
    return dict(_REGISTRY)


def resolve(name: str, req: Request) -> Backend:
    """The backend to run ``req``: ``name`` itself, or the first fit in ``AUTO_PRIORITY`` for ``"auto"``."""
    if name == "auto":
        reasons = {}
        for cand in AUTO_PRIORITY:
            be = _REGISTRY.get(cand)
            if be is None:
                continue
            why = be.why_not(req) or be.auto_reasons(req)
            if not why:
                return be
            reasons[cand] = why
        hint = " (backend='reference' runs everything but materialises N x N; pass it explicitly)"
        raise BackendUnavailableError(f"backend='auto': no backend can run {_describe(req)}{hint}", reasons)
    if name not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {name!r}; choose 'auto' or one of {', '.join(_REGISTRY)}")
    be = _REGISTRY[name]
    why = be.why_not(req)
    if why:
        raise BackendUnavailableError(f"backend={name!r} cannot run {_describe(req)}", {name: why})
    return be


def _describe(req: Request) -> str:
    parts = [req.op, req.device, str(req.dtype).replace("torch.", "")]
    if req.mode:
        parts.append(f"mode={req.mode}")
    if req.precision:
        parts.append(f"precision={req.precision}")
    if req.variant != "paper":
        parts.append(f"variant={req.variant}")
    if req.window is not None:
        parts.append(f"window={req.window}")
    return "(" + ", ".join(parts) + ")"
