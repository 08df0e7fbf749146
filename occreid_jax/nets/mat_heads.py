"""MAT's small heads: the sigmoid MLP on decoder queries, FOMM's identity-initialised
Jacobian bias, and the grouping of COCO pose heatmaps into K keypoints."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# COCO joints (0 nose, 1-2 eyes, 3-4 ears, 5-6 shoulders, 7-8 elbows, 9-10 wrists, 11-12
# hips, 13-14 knees, 15-16 ankles) grouped into K keypoints for model.keypoints="heatmaps".
# Not in the paper (which does not say how its pretrained detector's joints map to parts).
COCO_GROUPS = {
    3: ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9, 10, 11, 12), (13, 14, 15, 16)),
    6: ((0, 1, 2, 3, 4), (5, 7, 9), (6, 8, 10), (11, 12), (13, 15), (14, 16)),
    10: ((0, 1, 2, 3, 4), (5,), (6,), (7,), (8,), (9,), (10,), (11, 12), (13, 15), (14, 16)),
    17: tuple((j,) for j in range(17)),
}
# Not in the paper: model.keypoint_groups="limbs" puts each keypoint on a rigid limb (head,
# torso, upper and lower arms and legs), the groups whose motions the image-space flow probe
# moves; COCO_GROUPS' K = 10 spends seven keypoints above the hips and one per leg.
LIMB_KEYPOINT_GROUPS = {
    5: ((0, 1, 2, 3, 4, 5, 6, 11, 12), (5, 7, 9), (6, 8, 10), (11, 13, 15), (12, 14, 16)),
    10: (
        (0, 1, 2, 3, 4), (5, 6, 11, 12), (5, 7), (7, 9), (6, 8), (8, 10),
        (11, 13), (13, 15), (12, 14), (14, 16),
    ),
}  # fmt: skip
KEYPOINT_GROUPS = {"coco": COCO_GROUPS, "limbs": LIMB_KEYPOINT_GROUPS}


def identity_jacobian_bias(num_keypoints: int):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.tile(jnp.asarray([1.0, 0.0, 0.0, 1.0], dtype), num_keypoints).reshape(shape)

    return init


class MLPHead(nn.Module):
    """`num_layers` Dense layers of width `features`, ReLU between, sigmoid at the end."""

    features: int
    num_layers: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = nn.Dense(self.features, dtype=jnp.float32, name=f"linear{i}")(x)
            if i < self.num_layers - 1:
                x = nn.relu(x)
        return nn.sigmoid(x)


def group_heatmaps(
    heatmaps: jax.Array, size: tuple[int, int], num_keypoints: int, groups: str = "coco"
) -> jax.Array:
    """COCO heatmaps -> K spatial distributions at the feature resolution.

    Args:
      heatmaps: [B, H/4, W/4, 17] pose heatmaps (0..1).
      size: (h, w) of the feature map.
      num_keypoints: K, a key of `KEYPOINT_GROUPS[groups]`.
      groups: "coco" (`COCO_GROUPS`) or "limbs" (`LIMB_KEYPOINT_GROUPS`).

    Returns:
      [B, h, w, K] float32, each channel summing to 1: the group's summed heatmaps resized
      (antialiased) to (h, w), plus 1e-6 everywhere, normalised. A group with no visible
      joint (all-zero heatmaps) becomes uniform, i.e. a keypoint at the image centre.
    """
    batch = heatmaps.shape[0]
    maps = jax.image.resize(
        heatmaps.astype(jnp.float32), (batch, *size, heatmaps.shape[-1]), "linear"
    )
    maps = jnp.maximum(maps, 0.0)
    grouped = jnp.stack(
        [maps[..., list(group)].sum(-1) for group in KEYPOINT_GROUPS[groups][num_keypoints]],
        axis=-1,
    )
    grouped = grouped + 1e-6
    return grouped / grouped.sum(axis=(1, 2), keepdims=True)


def group_members(num_keypoints: int, groups: str, num_joints: int = 17) -> np.ndarray:
    """[K, J] float32: 1 where joint j is in keypoint k's group of `KEYPOINT_GROUPS[groups]`."""
    members = np.zeros((num_keypoints, num_joints), np.float32)
    for k, group in enumerate(KEYPOINT_GROUPS[groups][num_keypoints]):
        members[k, list(group)] = 1.0
    return members
