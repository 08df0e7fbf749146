"""Small builders several test modules share (imported as `helpers`: pytest puts tests/ on
sys.path). Fixtures live in conftest.py."""

from __future__ import annotations

import os

import ml_collections
import optax

from occreid_jax.config_files import load_config_file
from occreid_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_config(**overrides) -> ml_collections.ConfigDict:
    """`config.train` of `configs/baseline.py:synthetic,size=tiny` (Adam 1e-3, coupled weight
    decay 5e-4, warm-up then cosine), with `overrides` applied."""
    baseline = load_config_file(os.path.join(ROOT, "configs", "baseline.py"))
    config = baseline.get_config("synthetic,size=tiny").train
    config.update(overrides)
    return config


def make_optimizer(steps_per_epoch: int, **overrides) -> optax.GradientTransformation:
    """The optimiser and schedule of `train_config(**overrides)`."""
    config = train_config(**overrides)
    return optim.make_optimizer(config, optim.make_schedule(config, steps_per_epoch))
