"""How a model runs on a training batch: the `Forward` hook of the train step.

A forward is `(apply_fn, variables, batch, rng) -> (aux, updates)`: it runs the model in train
mode on one device's batch and returns the model's aux dict and the new "batch_stats". The
train step (`training/train.py`) calls it inside the differentiated loss, so gradients flow
through every pass it makes. `single_forward` is the default (one pass); a model family may
bring its own through its record (`families.py`; MAT: `nets/mat_warped_pass.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# (apply_fn, variables, batch, rng) -> (aux, updates of the mutable collections).
Forward = Callable[[Callable, dict, dict, jax.Array], tuple[dict, Any]]


def single_forward(apply_fn: Callable, variables: dict, batch: dict, rng: jax.Array):
    """The default `Forward`: one train-mode pass on the batch (heatmaps passed if present).

    Returns:
      (aux, updates): the model's aux dict and its new "batch_stats".
    """
    model_inputs = {"heatmaps": batch["heatmaps"]} if "heatmaps" in batch else {}
    (_, aux), updates = apply_fn(
        variables,
        batch["images"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": rng},
        **model_inputs,
    )
    return aux, updates
