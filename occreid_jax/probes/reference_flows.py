"""Reference flows for MAT's feature consistency (L_fc), and part statistics.

L_fc compares an image A with another image X of the same person brought into A's frame by a
flow (`losses/mat.consistency_loss`). Whether training can find body parts depends on whether
a flow made of several part motions scores a lower L_fc than one global motion. These pure
functions build reference flows and score them on the same maps L_fc compares
(`flow_probe.py` runs them on a model):

  no motion; one global translation and one global affine motion fitted to ground-truth
  joints (least squares); the learned flow (A's segmentation mixing the part motions of the
  keypoints and Jacobians); the same motions mixed by a uniform segmentation; each single
  part's motion everywhere; and a ground-truth part flow: each position of A moves with the
  joint group (`nets.mat.COCO_GROUPS`) of its nearest joint, by that group's mean joint
  displacement, positions far from every joint staying put (as MAT's background does).

A flow is given as sampling coordinates: for every position z of A's map, where to read X
(`[N, h, w, 2]`, (x, y) in [-1, 1], the convention of `occreid_jax.motion`).

`part_statistics` summarises a segmentation and its keypoints (how many parts are used,
how peaked the maps are, how spread the keypoints are).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax import motion
from occreid_jax.losses.mat import kl_divergence

# Distance from every joint beyond which the ground-truth part flow keeps a position static,
# in image heights.
BACKGROUND_RADIUS = 0.1


def to_unit(keypoints: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Joints in image pixels [..., 17, >=2] (x, y first) -> [..., 17, 2] in [-1, 1]."""
    height, width = image_size
    return keypoints[..., :2] / np.asarray([width, height], np.float32) * 2.0 - 1.0


def _grid(batch: int, size: tuple[int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(motion.make_grid(*size)), (batch, *size, 2))


def no_motion(batch: int, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w, 2]: every position reads X where it is."""
    return np.array(_grid(batch, size))


def global_translation(joints_a: np.ndarray, joints_x: np.ndarray, size) -> np.ndarray:
    """The least-squares translation of A's joints onto X's, applied everywhere.

    Args:
      joints_a, joints_x: [N, J, 2] corresponding joints in [-1, 1].
      size: (h, w) of the compared maps.

    Returns:
      [N, h, w, 2] sampling coordinates.
    """
    shift = np.mean(joints_x - joints_a, axis=1)  # [N, 2]
    return _grid(len(joints_a), size) + shift[:, None, None, :]


def global_affine(joints_a: np.ndarray, joints_x: np.ndarray, size) -> np.ndarray:
    """The least-squares affine map of A's joints onto X's, applied everywhere.

    Args and returns as `global_translation`.
    """
    grid = _grid(len(joints_a), size)
    ones = np.ones((*joints_a.shape[:2], 1), np.float32)
    out = np.empty_like(grid)
    for i, (a, x) in enumerate(zip(joints_a, joints_x, strict=True)):
        coef, *_ = np.linalg.lstsq(np.concatenate([a, ones[i]], 1), x, rcond=None)  # [3, 2]
        out[i] = grid[i] @ coef[:2] + coef[2]
    return out


def joint_part_flow(
    joints_a: np.ndarray,
    joints_x: np.ndarray,
    size: tuple[int, int],
    groups: tuple[tuple[int, ...], ...],
    background_radius: float,
    aspect: float = 0.5,
) -> np.ndarray:
    """The ground-truth part flow: nearest-joint partition of A, one translation per group.

    Each position z of A belongs to the group of its nearest joint of A and reads X at
    z + (mean displacement of that group's joints); positions farther than
    `background_radius` from every joint read X at z (a static background).

    Args:
      joints_a, joints_x: [N, J, 2] corresponding joints in [-1, 1].
      size: (h, w) of the compared maps.
      groups: joint indices of each part (every joint in exactly one group).
      background_radius: in units of the image height.
      aspect: image width / height, to measure distances in one unit.

    Returns:
      [N, h, w, 2] sampling coordinates.
    """
    num_joints = joints_a.shape[1]
    group_of = np.full(num_joints, -1)
    for g, members in enumerate(groups):
        group_of[list(members)] = g
    if (group_of < 0).any():
        raise ValueError(f"joints {np.flatnonzero(group_of < 0).tolist()} are in no group")
    grid = _grid(len(joints_a), size)
    scale = np.asarray([aspect / 2.0, 0.5], np.float32)  # [-1, 1] -> image heights
    displacement = joints_x - joints_a  # [N, J, 2]
    shift = np.stack(
        [displacement[:, list(members)].mean(axis=1) for members in groups], axis=1
    )  # [N, G, 2]
    dist = np.linalg.norm(
        (grid[:, :, :, None, :] - joints_a[:, None, None, :, :]) * scale, axis=-1
    )  # [N, h, w, J]
    nearest = group_of[np.argmin(dist, axis=-1)]  # [N, h, w]
    moved = (
        grid + np.take_along_axis(shift[:, None, None], nearest[..., None, None], axis=3)[..., 0, :]
    )
    background = dist.min(axis=-1) > background_radius
    return np.where(background[..., None], grid, moved)


def soft_joint_part_flow(
    joints_a: np.ndarray,
    joints_x: np.ndarray,
    size: tuple[int, int],
    groups: tuple[tuple[int, ...], ...],
    background_radius: float,
    aspect: float = 0.5,
) -> np.ndarray:
    """`joint_part_flow` with a soft partition, as MAT's segmentation mixes its parts.

    Group g's weight at z is the sum over its joints j of `exp(-d_j(z)^2 / (2 s^2))`,
    s = background_radius / 2, the static background's weight is the same kernel at
    `background_radius`; the flow mixes the group translations and the static position by
    the normalised weights. Args and returns as `joint_part_flow`.
    """
    grid = _grid(len(joints_a), size)
    scale = np.asarray([aspect / 2.0, 0.5], np.float32)
    sigma = background_radius / 2.0
    d2 = np.sum(
        np.square((grid[:, :, :, None, :] - joints_a[:, None, None, :, :]) * scale), axis=-1
    )  # [N, h, w, J]
    kernel = np.exp(-d2 / (2 * sigma**2))
    weights = np.stack([kernel[..., list(members)].sum(-1) for members in groups], -1)
    background = np.exp(-(background_radius**2) / (2 * sigma**2))
    displacement = joints_x - joints_a
    shift = np.stack([displacement[:, list(m)].mean(axis=1) for m in groups], axis=1)
    moved = np.einsum("nhwg,ngc->nhwc", weights, shift)
    return grid + moved / (weights.sum(-1, keepdims=True) + background)


def upsample_flow(coords: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A flow [N, h0, w0, 2] at a coarser grid, its displacement resized bilinearly to `size`:
    what a segmentation at (h0, w0) can express on a finer map."""
    num, coarse = len(coords), coords.shape[1:3]
    shift = coords - _grid(num, coarse)
    fine = jax.image.resize(jnp.asarray(shift), (num, *size, 2), "linear")
    return _grid(num, size) + np.asarray(fine)


def segmentation_flow(
    segmentation_a: jax.Array,
    kp_a: jax.Array,
    jac_a: jax.Array,
    kp_x: jax.Array,
    jac_x: jax.Array,
    size: tuple[int, int],
) -> jax.Array:
    """The flow A's segmentation composes from the part motions (MAT's, Eq. 5-7).

    Args:
      segmentation_a: [N, h0, w0, K+1] (channel 0 background), resized bilinearly to `size`.
      kp_a, kp_x: [N, K, 2] keypoints of A (the target frame) and X (the source).
      jac_a, jac_x: [N, K, 2, 2] their Jacobians.
      size: (h, w) of the compared maps.

    Returns:
      [N, h, w, 2] sampling coordinates in X.
    """
    batch, parts = segmentation_a.shape[0], segmentation_a.shape[-1]
    seg = jax.image.resize(segmentation_a.astype(jnp.float32), (batch, *size, parts), "linear")
    points = jnp.asarray(_grid(batch, size)).reshape(batch, -1, 2)
    flow = motion.dense_flow(points, seg.reshape(batch, -1, parts), kp_x, jac_x, kp_a, jac_a)
    return flow.reshape(batch, *size, 2)


def constant_segmentation(batch: int, parts: int, channel: int | None) -> jax.Array:
    """[N, 1, 1, parts]: one-hot on `channel` everywhere, or uniform when `channel` is None."""
    if channel is None:
        return jnp.full((batch, 1, 1, parts), 1.0 / parts, jnp.float32)
    return jnp.broadcast_to(jax.nn.one_hot(channel, parts, dtype=jnp.float32), (batch, 1, 1, parts))


def score(maps_a: jax.Array, maps_x: jax.Array, coords) -> np.ndarray:
    """KL(A || X read at `coords`) per pair, as L_fc measures it (Eq. 10).

    Args:
      maps_a, maps_x: [N, h, w, C] per-position distributions of A and X.
      coords: [N, h, w, 2] sampling coordinates in X (border padding, bilinear).

    Returns:
      [N] float64.
    """
    warped = motion.grid_sample(maps_x, jnp.asarray(coords, jnp.float32), padding="border")
    return np.asarray(kl_divergence(maps_a, warped), np.float64)


def part_statistics(segmentation: np.ndarray, keypoints: np.ndarray | None) -> dict:
    """How part-like a batch of segmentations (and keypoints) is.

    Args:
      segmentation: [N, h, w, K+1] part probabilities, channel 0 background.
      keypoints: [N, K, 2] in [-1, 1], or None.

    Returns:
      part_confidence: mean over positions and images of the largest part probability
        (1/(K+1) for uniform maps);
      parts_per_image: mean number of the K parts that are the most probable channel
        somewhere in an image;
      parts_overall: how many of the K parts are the most probable channel somewhere in
        some image;
      keypoint_spread (with keypoints): mean over images of the standard deviation of the
        keypoints over parts, averaged over x and y (0 when they coincide).
    """
    seg = np.asarray(segmentation, np.float32)
    parts = seg.shape[-1] - 1
    winner = seg.reshape(len(seg), -1, parts + 1).argmax(-1)  # [N, h*w]
    used = np.stack([(winner == k).any(axis=1) for k in range(1, parts + 1)], axis=1)  # [N, K]
    stats = {
        "part_confidence": float(seg.max(-1).mean()),
        "parts_per_image": float(used.sum(1).mean()),
        "parts_overall": int(used.any(0).sum()),
    }
    if keypoints is not None:
        stats["keypoint_spread"] = float(np.asarray(keypoints).std(axis=1).mean())
    return stats
