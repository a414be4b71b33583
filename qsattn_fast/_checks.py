"""Input validation shared by the public API.

Every check raises ``TypeError`` or ``ValueError`` with a message that starts with the name of the
offending argument, so a user can tell which input was wrong without reading a traceback.
"""
from __future__ import annotations

import torch

#: The four ops by name (the API's functions, Request.op, the Backend methods), each with its modes.
OP_MODES = {"entropy": ("global", "local"), "select": (), "route": ("global", "local"),
            "qsattn": ("global", "local", "local_global")}
VARIANTS = ("paper", "official")
PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")
#: Every backend's name (``backend=`` also takes "auto"); all but ``reference`` implement the ops' overloads.
BACKENDS = ("reference", "torch", "triton", "native")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        if isinstance(value, (bool, torch.Tensor)) or not hasattr(value, "__index__"):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        value = int(value)                                  # e.g. numpy integers
    if low is not None and value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be <= {high}, got {value}")
    return value


def check_window(window) -> int:
    window = check_int("window", window, low=1)
    if window % 2 == 0:
        raise ValueError(f"window: must be odd so that the neighbourhood is centred, got {window}")
    return window


def check_feature_map(name: str, x) -> torch.Tensor:
    """A non-empty floating NCHW tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D NCHW feature map (B, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(x.shape)}; every dimension must be >= 1")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; use float16, bfloat16, float32 or float64")
    return x


def check_finite(name: str, x: torch.Tensor) -> None:
    """One extra read of ``x`` (and a device-to-host sync on GPUs)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf; pass check_finite=False to skip this check")


def check_values(feat_src: torch.Tensor, values) -> tuple[torch.Tensor, ...]:
    """``values`` is a tensor or a sequence of tensors shaped like ``feat_src`` except in C."""
    if isinstance(values, torch.Tensor):
        values = (values,)
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise TypeError("values: expected a tensor or a non-empty list/tuple of tensors")
    out = []
    B, _, H, W = feat_src.shape
    for i, v in enumerate(values):
        name = f"values[{i}]"
        check_feature_map(name, v)
        if (v.shape[0], v.shape[2], v.shape[3]) != (B, H, W):
            raise ValueError(
                f"{name}: shape {tuple(v.shape)} does not match feat_src {tuple(feat_src.shape)} in B, H or W "
                "(only the channel count may differ)")
        check_same(name, v, "feat_src", feat_src)
        out.append(v)
    return tuple(out)


def check_same(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name}: on {x.device} but {ref_name} is on {ref.device}; put them on one device")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {x.dtype} differs from {ref_name}'s {ref.dtype}; cast them to one dtype")


def check_k(k, n: int) -> int:
    return check_int("k", k, low=1, high=n)


def check_entropy(entropy) -> torch.Tensor:
    if not isinstance(entropy, torch.Tensor):
        raise TypeError(f"entropy: expected a torch.Tensor, got {type(entropy).__name__}")
    if entropy.dim() != 2 or entropy.numel() == 0:
        raise ValueError(f"entropy: expected a non-empty (B, N) tensor, got shape {tuple(entropy.shape)}")
    if not entropy.is_floating_point():
        raise TypeError(f"entropy: expected a floating tensor, got {entropy.dtype}")
    return entropy


def check_idx(idx, feat_src: torch.Tensor, check_range: bool = True) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"idx: expected a torch.Tensor, got {type(idx).__name__}")
    B, _, H, W = feat_src.shape
    n = H * W
    if idx.dtype != torch.int64:
        raise TypeError(f"idx: expected int64 indices, got {idx.dtype}")
    if idx.dim() != 2 or idx.shape[0] != B:
        raise ValueError(f"idx: expected shape (B={B}, k), got {tuple(idx.shape)}")
    check_k(idx.shape[1], n)
    if idx.device != feat_src.device:
        raise ValueError(f"idx: on {idx.device} but feat_src is on {feat_src.device}")
    if check_range and (bool((idx < 0).any()) or bool((idx >= n).any())):
        raise ValueError(f"idx: indices must lie in [0, H*W) = [0, {n})")
    return idx


def check_precision(precision, dtype: torch.dtype):
    if precision is None:
        return None
    check_choice("precision", precision, PRECISIONS)
    if dtype != torch.float32:
        raise ValueError(f"precision: applies to float32 inputs only (input is {dtype}); leave it None")
    return precision
