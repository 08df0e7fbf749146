"""The train step of each model at its paper's size, and what XLA says about its compiled form.

Shared by `benchmarks/donation_memory.py` and `benchmarks/device_suite.py`. A case is a model's
`configs/<model>.py:occluded_duke` config (the papers' input size and batch: baseline and Pirt
384 x 128, MAT 256 x 128, 16 identities x 4 images), or its `synthetic,size=tiny` config for
smoke runs, with random inputs and weights: throughput, memory and FLOPs do not depend on them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from occreid_jax import families
from occreid_jax.config_files import load_config_file
from occreid_jax.training import optim
from occreid_jax.training.train import create_train_state, parallel_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("baseline", "pirt", "mat")
OCCLUDED_DUKE_IDS = 702  # training identities of Occluded-Duke (the classifier's width)


def model_config(
    model: str, dtype: str = "float32", tiny: bool = False
) -> ml_collections.ConfigDict:
    """`configs/<model>.py:occluded_duke` (or `synthetic,size=tiny`) with compute `dtype`."""
    module = load_config_file(os.path.join(ROOT, "configs", f"{model}.py"))
    config = module.get_config("synthetic,size=tiny" if tiny else "occluded_duke")
    config.train.dtype = dtype
    return config


@dataclasses.dataclass
class StepCase:
    """One model's donated, pmapped train step with a state and a batch to feed it."""

    step: Callable
    state: Any
    batch: dict
    global_batch: int
    executable: Any = None

    def run(self) -> dict:
        """One step (with the compiled executable once `compile` has run); the state moves
        on, the old one is donated. Returns the metrics."""
        call = self.step if self.executable is None else self.executable
        self.state, metrics = call(self.state, self.batch, None)
        return metrics

    def compile(self):
        """The step's compiled executable (XLA's memory_analysis / cost_analysis), kept for
        `run` so the step is not compiled twice."""
        self.executable = self.step.lower(self.state, self.batch).compile()
        return self.executable


def random_batch(config: ml_collections.ConfigDict, devices: int, seed: int = 0) -> dict:
    """Normalised random images [D, b, H, W, 3], P x K labels [D, b] (whole identities per
    device) and, for pose-guided configs, heatmaps [D, b, H/4, W/4, 17] in [0, 1]."""
    height, width = config.data.image_size
    size, k = config.data.batch_size, config.data.instances_per_id
    rng = np.random.default_rng(seed)
    batch = {
        "images": rng.normal(size=(size, height, width, 3)).astype(np.float32),
        "labels": np.repeat(np.arange(size // k), k).astype(np.int32),
    }
    if config.pose.source in ("ground_truth", "precomputed"):
        batch["heatmaps"] = rng.uniform(size=(size, height // 4, width // 4, 17)).astype(np.float32)
    return {
        key: value.reshape(devices, size // devices, *value.shape[1:])
        for key, value in batch.items()
    }


def build_case(config: ml_collections.ConfigDict, num_classes: int = OCCLUDED_DUKE_IDS) -> StepCase:
    """The family's train step (as the training loop builds it) on a random batch."""
    family = families.get(config.model.name)
    model = family.module(**families.model_kwargs(config, num_classes)).clone(bn_axis_name="batch")
    tx = optim.make_optimizer(config.train, optim.make_schedule(config.train, 100))
    state = create_train_state(model, tx, jax.random.PRNGKey(0), config.data.image_size)
    settings = family.loss_settings(config)
    step = parallel_train_step(family.bound_objective(settings), forward=family.forward(settings))
    batch = random_batch(config, jax.local_device_count())
    return StepCase(step, state, batch, config.data.batch_size)


def state_bytes(state: Any) -> int:
    """Bytes of every array in the train state (params, batch stats, optimiser state)."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "nbytes"))


def memory_figures(compiled) -> dict[str, int]:
    """XLA's buffer assignment of a compiled step, per device, in bytes.

    `peak_estimate` is arguments + outputs + temporaries - aliased (what donation saves:
    outputs written into the donated arguments' buffers); `peak_without_donation` adds the
    aliased bytes back (both copies of the state live at once).
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    figures = {
        name: int(getattr(stats, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "temp", "alias", "generated_code")
    }
    total = figures["argument"] + figures["output"] + figures["temp"]
    figures["peak_estimate"] = total - figures["alias"]
    figures["peak_without_donation"] = total
    return figures


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled executable (XLA's cost analysis; per device under pmap),
    or None when the backend gives none."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
