"""``qsattn-train --demo``: the training demo's settings, its targets and its texts, in one place.

The demo trains CUT with QS-Attn (global) on the synthetic ``recolour`` task, small enough for a CPU,
then evaluates the 100 held-out pairs (docs/demo.md: the task, the targets, the measured runs).
:func:`.options.parse` applies :data:`SETTINGS` under ``--demo`` (explicit flags still win) and
:func:`.trainer.main` hands :func:`metric_note` to the trainer's final summary. Not to be confused with
``python -m qsattn_fast.demo``, which runs the QS-Attn ops on one example feature map (no training).
"""
from __future__ import annotations

HELP = "small synthetic QS-Attn run on CPU (a few minutes); other flags override its settings"

# 48x48 crops, small networks, 8 + 2 epochs of 110 items (1 100 steps) on one thread; the held-out pairs
# are evaluated after the last epoch (eval_freq = 10). normG none: an instance-normalised generator cannot
# reproduce an image's global colour offset (each channel's mean and scale are normalised away after the
# first conv), so it cannot keep the background; init_gain 1 so that the un-normalised layers start with
# signal. lr 0.001 and lambda_NCE 4 (with the EMA generator, on by default) were measured best at seeds 0-2
# (docs/demo.md); lr 0.002 collapses.
SETTINGS = dict(model="qs", dataset_mode="synthetic", synthetic_task="recolour", name="demo", gpu_ids="-1",
                synthetic_size=110, load_size=52, crop_size=48, ngf=16, ndf=16, netG="resnet_4blocks",
                normG="none", init_gain=1.0, num_patches=64, netF_nc=64, lambda_NCE=4.0, n_epochs=8,
                n_epochs_decay=2, lr=0.001, save_epoch_freq=5, display_freq=220, print_freq=22,
                save_latest_freq=550, eval_freq=10, eval_metrics="synthetic,swd", num_threads=0, torch_threads=1)

# What the demo must reach on the held-out pairs (docs/demo.md).
TARGETS = {"conformity": ">= 0.9", "shape_iou": ">= 0.85", "background_error": "<= 0.03", "image_error": "<= 0.85",
           "changed_iou": ">= 0.8"}


def metric_note(metric: str) -> str:
    """The text the trainer's final summary appends to ``metric``'s line: the demo's target, if it has one."""
    return f"; demo target {TARGETS[metric]}" if metric in TARGETS else ""
