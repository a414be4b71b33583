"""The trainer's, translator's and evaluator's one device helper."""
from __future__ import annotations

import torch


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``spec``: CUT's ``--gpu_ids`` ("-1" or "" CPU, "0", "0,1": process ``local_rank`` takes
    ``ids[local_rank % len(ids)]``), a torch device name ("cpu", "cuda", "cuda:1") or "auto" (GPU
    ``local_rank`` modulo the GPU count where CUDA is available, else the CPU). CUDA is never touched for a
    CPU spec. Raises ValueError for a GPU asked for without CUDA."""
    spec = str(spec).strip()
    if not spec:
        return torch.device("cpu")
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if spec.lstrip("-").replace(",", "").replace(" ", "").isdigit():
        ids = [int(i) for i in spec.split(",") if i.strip()]
        if ids[0] < 0:
            return torch.device("cpu")
        dev = torch.device("cuda", ids[local_rank % len(ids)])
    else:
        try:
            dev = torch.device(spec)
        except RuntimeError as e:
            raise ValueError(f"device: expected -1, GPU ids, cpu, cuda[:i] or auto, got {spec!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {spec} asks for a GPU but CUDA is not available (use -1 / cpu)")
    return dev
