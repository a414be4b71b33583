"""Extra peak memory of a region of code, for the demo and the benchmark report.

CPU: the rise of the process's resident-set high-water mark over its resident size at entry. On Linux the
mark is reset at entry (``/proc/self/clear_refs`` with 5) and read from ``VmHWM``, so earlier peaks do not
hide the region's; elsewhere ``ru_maxrss`` is used, which can only under-count. CUDA: the rise of
``max_memory_allocated`` over the allocation at entry.
"""
from __future__ import annotations

import resource

import torch


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.extra_bytes``."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.extra_bytes = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._hwm = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm = _status_kib("VmHWM") is not None
        except OSError:
            pass
        self._base = (_status_kib("VmRSS") if self._hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = (_status_kib("VmHWM") if self._hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        self.extra_bytes = max(0, peak - self._base)
        return False
