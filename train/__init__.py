"""The CUT trainer with QS-Attn plugged in (installed as ``qsattn_fast.train``)."""
