"""The CUT trainer with QS-Attn plugged in (installed as ``qsattn_fast.train``).

Modules: :mod:`.networks` (CUT's generator, discriminator, GAN and PatchNCE losses, CUT's state-dict
layout), :mod:`.data` (``trainA/trainB`` folders, the synthetic tasks with :func:`.data.synthetic_pair`
returning (A, B, object mask) for evaluation), :mod:`.model` (CUT, FastCUT and QS-Attn with
:class:`qsattn_fast.QSPatchSampler` as netF), :mod:`.cycle_gan` (CycleGAN, the paper's baseline, as CUT's
cycle_gan_model), :mod:`.diagnostics` (QS-Attn's selection ties, ``selection_log.jsonl``),
:mod:`.checkpoint`, :mod:`.options`, :mod:`.demo` (``--demo``'s settings, targets and texts),
:mod:`.trainer` (``qsattn-train``), :mod:`.translate` (``qsattn-translate``), :mod:`.viz` (PNG sample
grids and loss plot), :mod:`.device` (the one device helper), :mod:`.evaluation` (the metrics, the
``--eval_freq`` test split; its command line ``qsattn-eval`` is :mod:`.eval_cli`) with :mod:`.metrics`
(FID, KID, the synthetic measures), :mod:`.swd` and :mod:`.inception` (torch-fidelity's FID Inception from
a local weights file). Importing this package does not touch CUDA.
"""
