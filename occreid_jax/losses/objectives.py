"""Whole training objectives: which loss reads which model output, with which weight.

An objective maps the model's `aux` dict and the batch labels to `(loss, metrics)`. It runs
per device inside the pmapped step, so batch-hard mining sees only that device's identities;
`mining_groups` reproduces the same per-group mining on a single device (used to check
multi-device training against one device).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from occreid_jax.losses.classification import cross_entropy_label_smoothing
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
    ce = cross_entropy_label_smoothing(aux["logits"], labels, epsilon=cfg.label_smoothing)
    tri = grouped_triplet(aux["global_feat"].astype(jnp.float32), labels, cfg)
    loss = cfg.ce_weight * ce + cfg.triplet_weight * tri
    accuracy = jnp.mean(jnp.argmax(aux["logits"], -1) == labels)
    return loss, {"loss": loss, "ce": ce, "triplet": tri, "accuracy": accuracy}


def pirt_objective(aux: dict, labels: jax.Array, cfg: LossConfig):
    """Pirt as released: CE(stripe) + CE(patch) + mean_p CE(part_p) + mean_p triplet(part_p).

    Paper Eq. 15-17 (its Eq. 16 has no triplet on the global features, and neither has the
    released code). Every CE uses label smoothing; each part's batch-hard triplet is computed
    on its confidence-weighted feature before the part's BNNeck. Without the pose branch
    (`use_pose=False`) only the two global CE terms remain.

    Args:
      aux: the model's aux: `logits` {"stripe", "patch", "part0", ...} -> [B, C] and, with
        the pose branch, `parts` [B, P, D].
      labels: [B] int train labels.
    Returns:
      (scalar loss, dict of scalar metrics).
    """
    logits = aux["logits"]

    def ce(name):
        return cross_entropy_label_smoothing(logits[name], labels, epsilon=cfg.label_smoothing)

    global_ce = ce("stripe") + ce("patch")
    metrics = {"ce_stripe": ce("stripe"), "ce_patch": ce("patch")}
    loss = cfg.ce_weight * global_ce
    if "parts" in aux:
        num_parts = aux["parts"].shape[1]
        part_ce = jnp.mean(jnp.stack([ce(f"part{p}") for p in range(num_parts)]))
        parts = aux["parts"].astype(jnp.float32)
        part_tri = jnp.mean(
            jnp.stack([grouped_triplet(parts[:, p], labels, cfg) for p in range(num_parts)])
        )
        loss = loss + cfg.ce_weight * part_ce + cfg.triplet_weight * part_tri
        metrics.update(ce_parts=part_ce, triplet=part_tri)
    accuracy = jnp.mean(jnp.argmax(logits["stripe"], -1) == labels)
    return loss, {"loss": loss, **metrics, "accuracy": accuracy}


# Plain-dict registry: model name -> its objective.
OBJECTIVES = {"baseline": baseline_objective, "pirt": pirt_objective}
