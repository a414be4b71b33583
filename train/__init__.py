"""The CUT trainer with QS-Attn plugged in (installed as ``qsattn_fast.train``).

Which module holds what: docs/design.md §6. Importing this package does not touch CUDA.
"""
