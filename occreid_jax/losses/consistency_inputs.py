"""What L_fc reads besides the segmentation: the compared maps and the part motions.

`consistency_maps` picks the maps per `loss.consistency_target`; `flow_motions` the keypoints
and Jacobians that move the parts (`flow_jacobians` for the learned ones). `cfg` is the
objective's `MatLossConfig` (`objectives.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from occreid_jax.losses.joint_motions import joint_flow_motions
from occreid_jax.losses.mat import feature_distribution


def consistency_maps(aux: dict, cfg) -> list[jax.Array]:
    """What L_fc compares, per `cfg.consistency_target`: [B, h', w', C] distributions, one
    map per compared level (several backbone stages are averaged).

    Features become a softmax over channels at each position (`feature_distribution`),
    behind a stop-gradient when `cfg.consistency_stop_gradient` (then L_fc trains only the
    flow: segmentation, keypoints and Jacobians).
    """
    if cfg.consistency_target == "segmentation":
        return [aux["segmentation"]]
    if cfg.consistency_target == "encoder":
        levels = [aux["feature_maps"]]
    else:
        levels = [aux["backbone_maps"][s - 1] for s in cfg.consistency_stages]
    if cfg.consistency_stop_gradient:
        levels = [jax.lax.stop_gradient(maps) for maps in levels]
    return [feature_distribution(maps) for maps in levels]


def flow_jacobians(aux: dict, cfg) -> jax.Array:
    """The Jacobians L_fc's part motions use: the model's [B, K, 2, 2], or identities when
    `cfg.consistency_jacobians` is off (each part then moves by a translation)."""
    if cfg.consistency_jacobians:
        return aux["jacobians"]
    return jnp.broadcast_to(jnp.eye(2, dtype=jnp.float32), aux["jacobians"].shape)


def flow_motions(aux: dict, cfg) -> tuple[jax.Array, jax.Array]:
    """The keypoints [B, K, 2] and Jacobians [B, K, 2, 2] of L_fc's part motions: the model's
    (`flow_jacobians`), or with `cfg.consistency_motions` "joints" the pose joints' own
    (`joint_motions.joint_flow_motions`)."""
    if cfg.consistency_motions == "learned":
        return aux["keypoints"], flow_jacobians(aux, cfg)
    if "joints" not in aux:
        raise ValueError(
            "loss.consistency_motions='joints' needs aux['joints'], which the model returns "
            "with model.keypoints='heatmaps' and pose heatmaps"
        )
    height, width = aux["keypoint_heatmaps"].shape[1:3]
    return joint_flow_motions(
        aux["keypoints"], aux["joints"], aux["joint_weights"], cfg.group_size, width / height
    )
