"""Config checks that run before any data is read: each bad value is one line naming the fix.

`check_config(config)` covers the numbers, the model family (its constructor checks its own
settings; `Family.check_config` the rest), the pose source, the matching settings, the batch
layout, the optimiser and the metrics.
"""

from __future__ import annotations

import math

import jax
import ml_collections

from occreid_jax import evaluation, families
from occreid_jax.data.sampler import check_batch_layout
from occreid_jax.errors import UserError
from occreid_jax.training import optim, pose

TRIPLET_METRICS = ("euclidean", "sqeuclidean", "cosine")
# Backbones with converters for ImageNet checkpoints (occreid_jax/nets/convert.py).
PRETRAINED_BACKBONES = ("resnet50", "resnet50_ibn_a")
DTYPES = ("float32", "bfloat16")

# Config fields that must be positive integers (None allowed where noted in the config).
POSITIVE_FIELDS = (
    ("train", "epochs"),
    ("train", "log_every_steps"),
    ("train", "checkpoint_every_steps"),
    ("train", "eval_every_epochs"),
    ("train", "max_checkpoints"),
    ("train", "steps_per_epoch"),
    ("eval", "max_rank"),
    ("eval", "query_chunk"),
    ("eval", "rerank_k1"),
    ("eval", "rerank_k2"),
    ("eval", "aqe_k"),
    ("data", "eval_batch_size"),
)
OPTIONAL_FIELDS = ("steps_per_epoch", "query_chunk")
# Real-valued fields: (section, name, low, high, low is allowed); each must be finite, at least
# `low` (above it when not allowed) and at most `high`. Fields a config lacks are skipped; every
# loss.*_weight must also be >= 0.
INF = float("inf")
FLOAT_FIELDS = (
    ("train", "lr", 0.0, INF, False),
    ("train", "weight_decay", 0.0, INF, True),
    ("train", "momentum", 0.0, 1.0, True),
    ("train", "warmup_epochs", 0.0, INF, True),
    ("train", "warmup_factor", 0.0, 1.0, True),
    ("train", "cosine_start_epoch", 0.0, INF, True),
    ("train", "final_lr", 0.0, INF, True),
    ("train", "gamma", 0.0, INF, False),
    ("loss", "label_smoothing", 0.0, 1.0, True),
    ("loss", "triplet_margin", 0.0, INF, True),
    ("data", "flip_prob", 0.0, 1.0, True),
    ("data", "erasing_prob", 0.0, 1.0, True),
    ("eval", "aqe_alpha", 0.0, INF, True),
)
# Input sides (pixels): the backbone's stride 32 at the least; person crops, not panoramas, at
# the most (a larger side would exhaust the memory before any message).
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 32, 2048
PAIR_EXAMPLES = {"image_size": (256, 128), "adam_betas": (0.9, 0.999)}


def check_floats(config: ml_collections.ConfigDict) -> None:
    """The real-valued fields of `FLOAT_FIELDS`, every loss weight and the Adam betas."""
    fields = list(FLOAT_FIELDS)
    fields += [("loss", k, 0.0, INF, True) for k in config.loss if k.endswith("_weight")]
    fields += [("train", "adam_betas", 0.0, 1.0, True)]
    for section, name, low, high, low_allowed in fields:
        values = config[section].get(name)
        for value in values if isinstance(values, tuple | list) else (values,):
            if value is None or isinstance(value, str):
                continue  # a type the config declares otherwise is refused by the flag parser
            inside = math.isfinite(value) and (value > low or (low_allowed and value == low))
            if not (inside and value <= high):
                bounds = f"a finite number {'>=' if low_allowed else '>'} {low:g}" + (
                    f" and <= {high:g}" if high < INF else ""
                )
                raise UserError(
                    f"{section}.{name}={values!r} must be {bounds}; set --config.{section}.{name}"
                )


def check_numbers(config: ml_collections.ConfigDict) -> None:
    """Positive integers, real ranges, pairs, the evaluation memory budget, the device split."""
    for section, name in POSITIVE_FIELDS:
        value = config[section][name]
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"{section}.{name}={value!r} must be a positive integer; "
                f"set --config.{section}.{name}"
            )
    whole = [("data.pad", config.data.pad), ("seed", config.seed)]
    if "consistency_start_step" in config.loss:
        whole.append(("loss.consistency_start_step", config.loss.consistency_start_step))
    for name, value in whole:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{name}={value!r} must be a whole number >= 0; set --config.{name}")
    check_floats(config)
    for section, name in (("data", "image_size"), ("train", "adam_betas")):
        if len(config[section][name]) != 2:
            raise UserError(
                f"{section}.{name}={tuple(config[section][name])} needs two values; "
                f"e.g. --config.{section}.{name}='{PAIR_EXAMPLES[name]}'"
            )
    sides = tuple(config.data.image_size)
    if not all(isinstance(v, int) and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in sides):
        raise UserError(
            f"data.image_size={sides} must be two whole numbers from {MIN_IMAGE_SIDE} to "
            f"{MAX_IMAGE_SIDE} (height, width); e.g. --config.data.image_size='(256, 128)'"
        )
    if not 0.0 <= config.eval.rerank_lambda <= 1.0:
        raise UserError(
            f"eval.rerank_lambda={config.eval.rerank_lambda!r} must be in [0, 1] (the weight of "
            "the original distance); set --config.eval.rerank_lambda"
        )
    if not (config.eval.memory_mib > 0 and math.isfinite(config.eval.memory_mib)):
        raise UserError(
            f"eval.memory_mib={config.eval.memory_mib!r} must be a finite number > 0; "
            "set --config.eval.memory_mib"
        )
    devices = jax.device_count()  # of all processes
    if config.data.eval_batch_size % devices:
        raise UserError(
            f"data.eval_batch_size={config.data.eval_batch_size} is not divisible by the "
            f"{devices} devices; set --config.data.eval_batch_size to a multiple of {devices}"
        )


def check_model(config: ml_collections.ConfigDict) -> None:
    """The family, dtype, pretrained weights, pose source and the family's own checks."""
    family = families.get(config.model.name)
    if config.train.dtype not in DTYPES:
        raise UserError(
            f"train.dtype={config.train.dtype!r} is not supported; use float32 or bfloat16"
        )
    if config.model.backbone_init and config.model.backbone not in PRETRAINED_BACKBONES:
        raise UserError(
            f"model.backbone_init is set but there are no pretrained weights for backbone "
            f"{config.model.backbone!r}; use one of {', '.join(PRETRAINED_BACKBONES)} or clear it"
        )
    pose.check(config)
    # Model settings are checked by the model's constructor (one-line UserErrors).
    families.build_model(config.model.name, **families.model_kwargs(config, num_classes=1))
    if family.check_config is not None:
        family.check_config(config)
    rule = family.matching
    if rule.check_settings is not None:
        try:
            rule.check_settings(rule.rule_settings(config.eval))
        except ValueError as error:
            raise UserError(f"{error}; fix the --config.eval field") from None


def check_training(config: ml_collections.ConfigDict) -> None:
    """Batch layout, optimiser, metrics and input size."""
    check_batch_layout(config.data.batch_size, config.data.instances_per_id, jax.device_count())
    optim.make_optimizer(config.train, optim.make_schedule(config.train, 1))  # names checked
    if config.eval.metric not in evaluation.METRICS:
        raise UserError(
            f"unknown eval.metric {config.eval.metric!r}; "
            f"use one of {', '.join(evaluation.METRICS)}"
        )
    if config.loss.triplet_metric not in TRIPLET_METRICS:
        raise UserError(
            f"unknown loss.triplet_metric {config.loss.triplet_metric!r}; "
            f"use one of {', '.join(TRIPLET_METRICS)}"
        )
    height, width = config.data.image_size
    if height % 32 or width % 32:
        raise UserError(
            f"data.image_size={tuple(config.data.image_size)} must be multiples of 32; "
            "e.g. --config.data.image_size='(256, 128)'"
        )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check above, in order; the first problem is raised as a one-line UserError."""
    check_numbers(config)
    check_model(config)
    check_training(config)
