"""Whole training objectives: which loss reads which model output, with which weight.

  baseline  CE (label smoothing) + batch-hard triplet on the pooled feature
  pirt      the released Pirt objective (global CE terms, part CE and triplet)
  mat       Eq. 9 of MAT: `1 ID_g + 1 Tri_g + 1 ID_p + 1 Tri_p + 10 L_eq + 5 L_fc`

An objective maps the model's `aux` dict and the batch labels to `(loss, metrics)`. Which
terms it computes follows from its settings (the model's switches, copied into them), never
from which aux keys happen to exist: a key the terms need and the model did not return is an
error naming it (`require`). It runs per device inside the pmapped step, so batch-hard mining
sees only that device's identities; `mining_groups` reproduces the same per-group mining on a
single device (used to check multi-device training against one device).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError
from occreid_jax.losses.classification import cross_entropy_label_smoothing
from occreid_jax.losses.consistency_inputs import (  # noqa: F401 (re-exported)
    consistency_maps,
    flow_jacobians,
    flow_motions,
)
from occreid_jax.losses.mat import (
    CONSISTENCY_PAIRS,
    consistency_loss,
    equivariance_loss,
    keypoint_masks,
    keypoint_separation_loss,
    part_diversity_loss,
    part_presence_loss,
    reconstruction_loss,
)
from occreid_jax.losses.triplet import triplet_loss


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss settings (config.loss), plus how many groups batch-hard mining is split into."""

    ce_weight: float = 1.0
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    soft_margin: bool = True
    triplet_metric: str = "euclidean"
    triplet_normalize: bool = False
    mining_groups: int = 1

    @classmethod
    def from_config(cls, loss_config, mining_groups: int = 1) -> LossConfig:
        fields = {f.name for f in dataclasses.fields(cls)} - {"mining_groups"}
        return cls(**{k: loss_config[k] for k in fields}, mining_groups=mining_groups)

    @classmethod
    def from_run_config(cls, config, mining_groups: int = 1) -> LossConfig:
        """The settings from a whole run config (subclasses read more than config.loss)."""
        return cls.from_config(config.loss, mining_groups)


def require(aux: dict, keys, objective: str) -> None:
    """Raises a ValueError naming the first of `keys` missing from the model's `aux`."""
    for key in keys:
        if key not in aux:
            raise ValueError(
                f"the {objective} objective needs aux[{key!r}], which the model did not return "
                f"(it returned {sorted(aux)}); check the model's switches against config.loss"
            )


def grouped_triplet(features: jax.Array, labels: jax.Array, cfg: LossConfig) -> jax.Array:
    """Batch-hard triplet mined separately in `cfg.mining_groups` contiguous groups, averaged.

    Args:
      features: [B, D]; labels: [B] int. B must be divisible by the number of groups.
    """
    groups = cfg.mining_groups
    features = features.reshape(groups, -1, features.shape[-1])
    labels = labels.reshape(groups, -1)

    def one_group(f, y):
        return triplet_loss(
            f,
            y,
            margin=cfg.triplet_margin,
            soft_margin=cfg.soft_margin,
            metric=cfg.triplet_metric,
            normalize=cfg.triplet_normalize,
        )

    return jnp.mean(jax.vmap(one_group)(features, labels))


def baseline_objective(aux: dict, labels: jax.Array, cfg: LossConfig):
    """CE with label smoothing on the logits + batch-hard triplet on the pre-BNNeck feature.

    Args:
      aux: the model's aux dict with `logits` [B, C] and `global_feat` [B, D].
      labels: [B] int train labels.
    Returns:
      (scalar loss, dict of scalar metrics).
    """
    require(aux, ("logits", "global_feat"), "baseline")
    ce = cross_entropy_label_smoothing(aux["logits"], labels, epsilon=cfg.label_smoothing)
    tri = grouped_triplet(aux["global_feat"].astype(jnp.float32), labels, cfg)
    loss = cfg.ce_weight * ce + cfg.triplet_weight * tri
    accuracy = jnp.mean(jnp.argmax(aux["logits"], -1) == labels)
    return loss, {"loss": loss, "ce": ce, "triplet": tri, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class PirtLossConfig(LossConfig):
    """config.loss of Pirt, plus whether the pose branch (and so the part terms) is on."""

    part_terms: bool = True  # config.model.use_pose

    @classmethod
    def from_run_config(cls, config, mining_groups: int = 1) -> PirtLossConfig:
        base = LossConfig.from_config(config.loss, mining_groups)
        return cls(**dataclasses.asdict(base), part_terms=bool(config.model.use_pose))


def pirt_objective(aux: dict, labels: jax.Array, cfg: PirtLossConfig):
    """Pirt as released: CE(stripe) + CE(patch) + mean_p CE(part_p) + mean_p triplet(part_p).

    Paper Eq. 15-17 (its Eq. 16 has no triplet on the global features, and neither has the
    released code). Every CE uses label smoothing; each part's batch-hard triplet is computed
    on its confidence-weighted feature before the part's BNNeck. Without the pose branch
    (`cfg.part_terms` False: `use_pose=False`) only the two global CE terms remain.

    Args:
      aux: the model's aux: `logits` {"stripe", "patch", "part0", ...} -> [B, C] and, with
        the part terms, `parts` [B, P, D].
      labels: [B] int train labels.
      cfg: a `PirtLossConfig` (a plain `LossConfig` means the part terms are on).
    Returns:
      (scalar loss, dict of scalar metrics).
    """
    part_terms = getattr(cfg, "part_terms", True)
    require(aux, ("logits", "parts") if part_terms else ("logits",), "pirt")
    logits = aux["logits"]
    require(logits, ("stripe", "patch"), "pirt (logits)")

    def ce(name):
        return cross_entropy_label_smoothing(logits[name], labels, epsilon=cfg.label_smoothing)

    global_ce = ce("stripe") + ce("patch")
    metrics = {"ce_stripe": ce("stripe"), "ce_patch": ce("patch")}
    loss = cfg.ce_weight * global_ce
    if part_terms:
        num_parts = aux["parts"].shape[1]
        require(logits, [f"part{p}" for p in range(num_parts)], "pirt (logits)")
        part_ce = jnp.mean(jnp.stack([ce(f"part{p}") for p in range(num_parts)]))
        parts = aux["parts"].astype(jnp.float32)
        part_tri = jnp.mean(
            jnp.stack([grouped_triplet(parts[:, p], labels, cfg) for p in range(num_parts)])
        )
        loss = loss + cfg.ce_weight * part_ce + cfg.triplet_weight * part_tri
        metrics.update(ce_parts=part_ce, triplet=part_tri)
    accuracy = jnp.mean(jnp.argmax(logits["stripe"], -1) == labels)
    return loss, {"loss": loss, **metrics, "accuracy": accuracy}


# What MAT's feature consistency warps and compares: the encoder output f_g (Eq. 8's image
# features), backbone stages' maps (consistency_stages; not in the paper), the part
# segmentation itself (as first built; it has a trivial zero at uniform maps), or the input
# images through the flow upsampled to their size, scored by an L1 pyramid (co-part
# segmentation's reconstruction signal; not in the paper).
CONSISTENCY_TARGETS = ("encoder", "backbone", "segmentation", "image")


@dataclasses.dataclass(frozen=True)
class MatLossConfig(LossConfig):
    """config.loss of MAT: LossConfig's global-branch fields (ce_weight = lambda1,
    triplet_weight = lambda2) plus the part, equivariance and consistency terms, the random
    TPS of the equivariance pass, the identity group size (data.instances_per_id), and the
    model's branch switches (config.model.segmentation and .keypoints), which decide the terms.
    """

    part_ce_weight: float = 1.0  # lambda3
    part_triplet_weight: float = 1.0  # lambda4
    equivariance_weight: float = 10.0  # lambda5
    consistency_weight: float = 5.0  # lambda6
    # Not in the paper: L_fc is off before this training step (aux["train_step"]); 0 = always.
    consistency_start_step: int = 0
    part_diversity_weight: float = 0.0  # not in the paper (losses/mat.part_diversity_loss)
    part_presence_weight: float = 0.0  # not in the paper (losses/mat.part_presence_loss)
    # What L_fc compares (CONSISTENCY_TARGETS), whether its gradient may reach those features,
    # and which images of a group it pairs with A (losses/mat.consistency_loss).
    consistency_target: str = "encoder"
    consistency_stages: tuple[int, ...] = (2,)  # backbone stages of target "backbone"
    consistency_stop_gradient: bool = True  # not in the paper
    consistency_jacobians: bool = True  # False: part motions are translations (not in the paper)
    # "joints": the part motions fitted to the pose joints (losses/joint_motions; a diagnostic)
    consistency_motions: str = "learned"
    consistency_pairs: str = "all"  # "all" = Eq. 12; "first": not in the paper
    # Target "image": weigh the L1 pyramid by co-part segmentation's visibility map.
    consistency_visibility: bool = True  # not in the paper
    # Target "image": what composes the flow: "segmentation" (Eq. 7) or "keypoint_masks"
    # (`losses/mat.keypoint_masks` with sigma keypoint_mask_sigma; not in the paper).
    consistency_flow: str = "segmentation"
    keypoint_mask_sigma: float = 0.15
    keypoint_separation_weight: float = 0.0  # not in the paper (Zhang et al. 2018)
    keypoint_separation_sigma: float = 0.1  # not in the paper
    tps_sigma_affine: float = 0.05
    tps_sigma_tps: float = 0.005
    tps_points: int = 5
    group_size: int = 4
    segmentation: bool = True  # config.model.segmentation
    keypoints: str = "self_supervised"  # config.model.keypoints; "none": no keypoint terms

    @classmethod
    def from_run_config(cls, config, mining_groups: int = 1) -> MatLossConfig:
        """Reads config.loss, the group size K = config.data.instances_per_id and the model's
        branch switches."""
        model_fields = ("segmentation", "keypoints")
        names = {f.name for f in dataclasses.fields(cls)} - {
            "mining_groups",
            "group_size",
            *model_fields,
        }
        missing = sorted(n for n in names if n not in config.loss)
        if missing:
            raise UserError(f"config.loss lacks {', '.join(missing)}; start from configs/mat.py")
        settings = cls(
            **{n: config.loss[n] for n in names},
            **{n: config.model[n] for n in model_fields if n in config.model},
            mining_groups=mining_groups,
            group_size=config.data.instances_per_id,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raises UserError for settings the model cannot serve."""
        if self.consistency_target not in CONSISTENCY_TARGETS:
            raise UserError(
                f"unknown loss.consistency_target {self.consistency_target!r}; "
                f"use one of {CONSISTENCY_TARGETS}"
            )
        if self.consistency_pairs not in CONSISTENCY_PAIRS:
            raise UserError(
                f"unknown loss.consistency_pairs {self.consistency_pairs!r}; "
                f"use one of {CONSISTENCY_PAIRS}"
            )
        if self.consistency_flow not in CONSISTENCY_FLOWS:
            raise UserError(
                f"unknown loss.consistency_flow {self.consistency_flow!r}; "
                f"use one of {CONSISTENCY_FLOWS}"
            )
        if self.consistency_flow != "segmentation" and self.consistency_target != "image":
            raise UserError(
                f"loss.consistency_flow={self.consistency_flow!r} composes the flow of the "
                "image target only; set --config.loss.consistency_target=image or leave "
                "consistency_flow at 'segmentation'"
            )
        if self.consistency_motions not in ("learned", "joints"):
            raise UserError(
                f"unknown loss.consistency_motions {self.consistency_motions!r}; use 'learned' "
                "or 'joints' (which needs --config.model.keypoints=heatmaps)"
            )
        if self.consistency_motions == "joints" and self.keypoints != "heatmaps":
            raise UserError(
                "loss.consistency_motions='joints' fits the motions to pose joints; set "
                "--config.model.keypoints=heatmaps or leave consistency_motions at 'learned'"
            )
        if not self.keypoint_mask_sigma > 0:
            raise UserError(
                f"loss.keypoint_mask_sigma={self.keypoint_mask_sigma!r} must be > 0; "
                "set --config.loss.keypoint_mask_sigma"
            )
        stages = tuple(self.consistency_stages)
        if not stages or not all(1 <= s <= 4 for s in stages):
            raise UserError(
                f"loss.consistency_stages={stages} must name backbone stages, 1-4, e.g. '(2,)'"
            )


def _per_part(fn, features: jax.Array, *args) -> jax.Array:
    """Mean over parts of `fn(features[:, k], *args)` for [B, K, ...] features."""
    return jnp.mean(jax.vmap(lambda f: fn(f, *args), in_axes=1)(features))


CONSISTENCY_INPUTS = {"encoder": "feature_maps", "backbone": "backbone_maps", "image": "images"}


# What composes the flow of the image target (MatLossConfig.consistency_flow).
CONSISTENCY_FLOWS = ("segmentation", "keypoint_masks")


def _consistency_weight(aux: dict, cfg: MatLossConfig):
    """lambda6, or 0 before `cfg.consistency_start_step` (aux["train_step"], a scalar)."""
    if not cfg.consistency_start_step:
        return cfg.consistency_weight
    require(aux, ["train_step"], "mat (with loss.consistency_start_step)")
    started = aux["train_step"] >= cfg.consistency_start_step
    return jnp.where(started, cfg.consistency_weight, 0.0)


def _keypoint_terms(aux: dict, cfg: MatLossConfig, prefix: str, loss, metrics: dict):
    """`loss` plus L_eq and the separation prior of the keypoint set aux[prefix + "keypoints"]
    (prefix "encoder_": MAT's own, kept beside the hourglass's by model.keypoint_features
    "both"); their values go to `metrics` under the same prefix."""
    names = (prefix + "keypoints", prefix + "jacobians")
    points = aux[names[0]]
    motions = [aux[n] for n in names] + [aux["warped"][n] for n in names]
    eq_value, eq_jacobian = equivariance_loss(*motions, aux["tps"])
    loss = loss + cfg.equivariance_weight * (eq_value + eq_jacobian)
    metrics[prefix + "equivariance_value"] = eq_value
    metrics[prefix + "equivariance_jacobian"] = eq_jacobian
    if cfg.keypoint_separation_weight:
        separation = keypoint_separation_loss(points, cfg.keypoint_separation_sigma)
        loss = loss + cfg.keypoint_separation_weight * separation
        metrics[prefix + "keypoint_separation"] = separation
    return loss


def mat_objective(aux: dict, labels: jax.Array, cfg: MatLossConfig):
    """MAT's total loss (Eq. 9), with the terms of the branches `cfg` says the model has.

    * ID: cross-entropy on the global logits (Eq. 15) and on each part's logits (Eq. 16, the
      mean over parts: not in the paper), label smoothing `cfg.label_smoothing` (0 in Eq. 15).
    * Tri: soft-margin batch-hard triplet (Eq. 17; `cfg.triplet_metric` "sqeuclidean") on the
      features before their BNNeck; parts mined separately and averaged (not in the paper).
    * L_eq = value + Jacobian term (`losses/mat.equivariance_loss`) with keypoints (from the
      equivariance pass); L_fc (`losses/mat.consistency_loss`) with keypoints and parts, on
      the maps `consistency_maps` picks and averaged over them, with the part motions'
      motions of `flow_motions`; with target "image", L_fc is
      `losses/mat.reconstruction_loss` on aux["images"] instead.
    * Keypoint separation (`cfg.keypoint_separation_weight`, not in the paper) and L_div
      (`cfg.part_diversity_weight`, not in the paper) when their weights are non-zero.
    * L_eq and the separation prior again on aux["encoder_keypoints"], MAT's own keypoints,
      where the model keeps them beside the flow's (model.keypoint_features="both").

    Metrics also report `segmentation_confidence` (mean max part probability per pixel:
    1/(K+1) for uniform maps) and `keypoint_spread` (std of the keypoints over parts: 0 when
    they coincide), to spot a collapsed segmentation or keypoint layout.

    Args:
      aux: the model's aux (`nets/mat.py`), plus "warped" {"keypoints", "jacobians"} and
        "tps" from the equivariance pass when the model has keypoints, and "train_step"
        (the state's step, from `training/train.train_step`).
      labels: [B] int train labels, identity-major in groups of `cfg.group_size`.
      cfg: loss weights, settings and the model's branch switches.

    Returns:
      (scalar loss, dict of scalar metrics).
    """
    has_parts = cfg.segmentation
    has_keypoints = cfg.keypoints != "none"
    needed = ["logits", "global_feat"]
    if has_parts:
        needed += ["part_logits", "part_feat", "segmentation"]
    if has_keypoints:
        needed += ["keypoints", "jacobians", "warped", "tps"]
    has_consistency = has_parts and has_keypoints and cfg.group_size > 1
    if has_consistency and cfg.consistency_target in CONSISTENCY_INPUTS:
        needed.append(CONSISTENCY_INPUTS[cfg.consistency_target])
    require(aux, needed, "mat")

    ce = cross_entropy_label_smoothing(aux["logits"], labels, epsilon=cfg.label_smoothing)
    tri = grouped_triplet(aux["global_feat"], labels, cfg)
    loss = cfg.ce_weight * ce + cfg.triplet_weight * tri
    accuracy = jnp.mean(jnp.argmax(aux["logits"], -1) == labels)
    metrics = {"ce": ce, "triplet": tri, "accuracy": accuracy}
    if has_parts:
        part_ce = _per_part(
            lambda logits: cross_entropy_label_smoothing(logits, labels, cfg.label_smoothing),
            aux["part_logits"],
        )
        part_tri = _per_part(lambda f: grouped_triplet(f, labels, cfg), aux["part_feat"])
        loss = loss + cfg.part_ce_weight * part_ce + cfg.part_triplet_weight * part_tri
        metrics.update(part_ce=part_ce, part_triplet=part_tri)
        # Collapse diagnostic (no gradient): 1/(K+1) for uniform maps.
        metrics["segmentation_confidence"] = jnp.mean(jnp.max(aux["segmentation"], axis=-1))
        if cfg.part_presence_weight:
            presence = part_presence_loss(aux["segmentation"])
            loss = loss + cfg.part_presence_weight * presence
            metrics["part_presence"] = presence
        if cfg.part_diversity_weight:
            diversity = part_diversity_loss(aux["segmentation"])
            loss = loss + cfg.part_diversity_weight * diversity
            metrics["part_diversity"] = diversity
    if has_keypoints:
        # Collapse diagnostic (no gradient): 0 when the keypoints coincide.
        metrics["keypoint_spread"] = jnp.mean(jnp.std(aux["keypoints"], axis=1))
        for prefix in ("", "encoder_") if "encoder_keypoints" in aux else ("",):
            loss = _keypoint_terms(aux, cfg, prefix, loss, metrics)
    if has_consistency and cfg.consistency_target == "image":
        flow_segmentation = None
        if cfg.consistency_flow == "keypoint_masks":
            size = aux["segmentation"].shape[1:3]
            flow_segmentation = keypoint_masks(aux["keypoints"], size, cfg.keypoint_mask_sigma)
        fc = reconstruction_loss(
            aux["images"],
            aux["segmentation"],
            *flow_motions(aux, cfg),
            cfg.group_size,
            cfg.consistency_pairs,
            cfg.consistency_visibility,
            flow_segmentation,
        )
        loss = loss + _consistency_weight(aux, cfg) * fc
        metrics["consistency"] = fc
    elif has_consistency:
        levels = consistency_maps(aux, cfg)
        fc = sum(
            consistency_loss(
                maps,
                aux["segmentation"],
                *flow_motions(aux, cfg),
                cfg.group_size,
                cfg.consistency_pairs,
            )
            for maps in levels
        ) / len(levels)
        loss = loss + _consistency_weight(aux, cfg) * fc
        metrics["consistency"] = fc
    metrics["loss"] = loss
    return loss, metrics
