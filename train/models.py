"""The models of ``--model``, by name (CUT's ``models/`` lookup): each class states its ``NAME`` and its
option ``DEFAULTS`` (:class:`.model.GANModel`)."""
from __future__ import annotations

from .cycle_gan import CycleGANModel
from .model import CUTModel, FastCUTModel, GANModel, QSAttnModel

#: {--model name: model class}.
MODELS: dict[str, type[GANModel]] = {m.NAME: m for m in (CUTModel, FastCUTModel, QSAttnModel, CycleGANModel)}


def create_model(opt, device, world=1, rank=0) -> GANModel:
    """The model of ``opt.model`` on ``device``; ``world`` processes, this one ``rank``."""
    return MODELS[opt.model](opt, device, world, rank)
