"""Model families: everything a run needs to know about a model, one record per model name.

A `Family` ties a name (`config.model.name`, stored in checkpoints and exports) to its flax
module, its training objective and the settings class the objective takes, how the train step
runs the model (`training_forward`; default one pass), how its embeddings are matched
(`evaluation.matching.MatchingRule`) and the config checks only it needs. Every lookup by
model name goes through `FAMILIES`, a plain dict: adding a model is one entry here (or
`FAMILIES[name] = Family(...)` from outside) plus the model's own modules.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from occreid_jax.errors import UserError
from occreid_jax.evaluation import mat_matching, pirt_matching
from occreid_jax.evaluation.matching import GLOBAL_ONLY, MatchingRule
from occreid_jax.losses.objectives import (
    LossConfig,
    MatLossConfig,
    PirtLossConfig,
    baseline_objective,
    mat_objective,
    pirt_objective,
)
from occreid_jax.nets import mat_warped_pass
from occreid_jax.nets.baseline import Baseline
from occreid_jax.nets.forward import Forward, single_forward
from occreid_jax.nets.mat import Mat
from occreid_jax.nets.pirt import Pirt

# config.model fields that are not constructor arguments of the model.
NON_MODEL_FIELDS = ("name", "backbone_init")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
      module: the flax module class, built with `num_classes`, `dtype` and the `config.model`
        fields it declares.
      objective: `(aux, labels, cfg) -> (loss, metrics)`.
      loss_config: the settings class `cfg` is an instance of (`from_run_config(config)`).
      training_forward: `settings -> Forward`, how the train step runs the model; None: one
        train-mode pass (`nets.forward.single_forward`).
      matching: how embeddings become distances (global feature, optional own rule).
      check_config: `config -> None`, one-line UserErrors for settings only this family reads.
    """

    module: type[nn.Module]
    objective: Callable[..., tuple]
    loss_config: type[LossConfig] = LossConfig
    training_forward: Callable[[LossConfig], Forward] | None = None
    matching: MatchingRule = GLOBAL_ONLY
    check_config: Callable[[ml_collections.ConfigDict], None] | None = None

    def loss_settings(self, config, mining_groups: int = 1) -> LossConfig:
        """The objective's settings, read from a whole run config."""
        return self.loss_config.from_run_config(config, mining_groups)

    def bound_objective(self, settings: LossConfig) -> Callable:
        """`(aux, labels) -> (loss, metrics)` with `settings` bound."""
        return functools.partial(self.objective, cfg=settings)

    def forward(self, settings: LossConfig) -> Forward:
        """How the train step runs the model, given the objective's settings."""
        return single_forward if self.training_forward is None else self.training_forward(settings)


def _check_pose_guided(config: ml_collections.ConfigDict) -> None:
    """Pirt with its pose branch needs a heatmap source."""
    if config.model.use_pose and config.pose.source == "none":
        raise UserError(
            f"{config.model.name} is pose-guided but pose.source is none; set "
            "--config.pose.source=precomputed (after --mode=heatmaps), online, or ground_truth "
            "(synthetic), or --config.model.use_pose=False"
        )


def _check_mat_keypoints(config: ml_collections.ConfigDict) -> None:
    """MAT with keypoints from heatmaps (Table 1 row #6) needs a heatmap source."""
    if config.model.keypoints == "heatmaps" and config.pose.source == "none":
        raise UserError(
            "model.keypoints=heatmaps reads pose heatmaps but pose.source is none; set "
            "--config.pose.source=ground_truth (synthetic), precomputed (after "
            "--mode=heatmaps) or online, or --config.model.keypoints=self_supervised"
        )


PIRT_MATCHING = MatchingRule(
    global_feature=pirt_matching.pirt_global_feature,
    own_rule=pirt_matching.pirt_distance,
    reads=("parts", "confidence"),
    settings=tuple(pirt_matching.DEFAULT_SETTINGS),
    check_settings=pirt_matching.check_settings,
    with_global=pirt_matching.pirt_with_global,
)
# Without its segmentation branch a MAT has no parts and matches by its global feature.
MAT_MATCHING = MatchingRule(
    own_rule=mat_matching.mat_matcher,
    reads=("parts", "visibility"),
    settings=("metric", "part_weight"),
)

FAMILIES: dict[str, Family] = {
    "baseline": Family(module=Baseline, objective=baseline_objective),
    "pirt": Family(
        module=Pirt,
        objective=pirt_objective,
        loss_config=PirtLossConfig,
        matching=PIRT_MATCHING,
        check_config=_check_pose_guided,
    ),
    "mat": Family(
        module=Mat,
        objective=mat_objective,
        loss_config=MatLossConfig,
        training_forward=mat_warped_pass.make_forward,
        matching=MAT_MATCHING,
        check_config=_check_mat_keypoints,
    ),
}


def get(name: str) -> Family:
    """The family registered as `name`, or a one-line UserError listing the known ones."""
    if name not in FAMILIES:
        raise UserError(
            f"unknown model.name {name!r}; known models: {', '.join(FAMILIES)} "
            "(set --config.model.name)"
        )
    return FAMILIES[name]


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiates the module of family `name` with constructor `kwargs`.

    Raises:
      UserError: for an unknown name (or bad settings, which the modules check themselves).
    """
    return get(name).module(**kwargs)


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """Constructor arguments of the configured model (JSON-able, stored in checkpoints).

    Fields the module does not declare are left out, so one config can switch `model.name`
    (e.g. the `baseline` row of Pirt's ablation table keeps Pirt's other fields).
    """
    accepted = set(get(config.model.name).module.__dataclass_fields__)
    kwargs = {k: v for k, v in config.model.items() if k not in NON_MODEL_FIELDS and k in accepted}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    return {**kwargs, "num_classes": int(num_classes), "dtype": config.train.dtype}
