"""Triton kernels of qsattn_fast (installed as ``qsattn_fast.kernels``); one op per file."""
