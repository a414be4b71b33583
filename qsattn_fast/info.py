"""``python -m qsattn_fast.info``: versions, devices, and which backend can run what on this machine."""
from __future__ import annotations

import importlib.util
import platform

import torch

from . import __version__
from .backends.base import Request
from .registry import AUTO_PRIORITY, backends


def _probe_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def _extension() -> str:
    """Whether qsattn_fast._C is built, and the instruction-set level its CPU loops run at."""
    if importlib.util.find_spec("qsattn_fast._C") is None:
        return "not built"
    try:
        from qsattn_fast import _C
    except ImportError as e:
        return f"built, not loadable ({e})"
    return f"built; CPU loops at {_C.cpu_isa()}"


def report() -> str:
    """A human-readable summary of the installation (what the ``info`` module prints)."""
    lines = [
        f"qsattn_fast {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"triton {'importable' if importlib.util.find_spec('triton') else 'not installed'}",
        f"compiled extension qsattn_fast._C: {_extension()}",
        f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}",
        f"auto priority: {' > '.join(AUTO_PRIORITY)} (reference is never picked by auto)",
        "",
        "backends (float32, global mode, the fp32-faithful default precision):",
    ]
    for name, be in backends().items():
        lines.append(f"  {name:10s} {be.summary}")
        for dev in _probe_devices():
            why = be.why_not(Request("qsattn", dev, torch.float32, "global"))
            lines.append(f"    {dev:5s} {'available' if not why else 'unavailable: ' + '; '.join(why)}")
        for dev, lim in be.limits.items():
            lines.append(f"    limits on {dev}: " + ", ".join(f"{k} <= {v}" for k, v in lim.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
