"""The flow's part motions fitted to pose joints instead of learned (a diagnostic, not in MAT).

`loss.consistency_motions="joints"` replaces the learned keypoints and Jacobians in L_fc's
flow by each keypoint group's least-squares affine of A's joints onto X's, the motions the
image-space flow probe moves its limbs by (`probes/limb_flows.group_motions`, the numpy
original this follows). L_fc then trains the segmentation alone, given motions as exact as
the joints: it separates what the segmentation and the Re-ID training make of the limbs
from what learned motions do to them. The joints come from the pose heatmaps the model
reads with `model.keypoints="heatmaps"` (`motion.heatmap_joints`; aux "joints" and
"joint_weights", which also say which joints make each keypoint's group).

The fit, per group and pair: four or more visible joints that span the plane give the
least-squares affine; two or three, or joints on one line (a side view's torso), the
least-squares similarity; one, or several at one place, a translation; none no motion. Fits
happen in image heights, so a similarity stays one on a non-square image. A joint counts when
visible in both images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from occreid_jax import motion

# Not in any paper (shared with probes/limb_flows.fit_affine): points whose weighted spread
# across their main axis is under this fraction of the spread along it count as one line (the
# synthetic people's joint groups that span the plane sit at 0.1 or more; a side view's torso
# at 0).
COLLINEAR_RATIO = 0.05
# Not in any paper (shared likewise): points whose weighted squared spread, in image heights,
# is at most this sit at one place (a side view's two shoulders with its hips hidden); they fix
# a shift only, where the similarity's scale would be 0/0 (it collapsed the part to a point).
COINCIDENT_SPREAD = 1e-8


def fit_motion(source: jax.Array, target: jax.Array, weights: jax.Array):
    """The motion mapping points `source` [J, 2] onto `target` [J, 2], weights [J] in {0, 1}.

    Returns:
      (matrix [2, 2], offset [2]) with `target ~ source @ matrix.T + offset` (see the module
      docstring for which motion each number of visible points gets).
    """
    w = weights.astype(jnp.float32)
    count = jnp.sum(w > 0)
    total = jnp.maximum(jnp.sum(w), 1e-12)
    mean_s = jnp.sum(w[:, None] * source, 0) / total
    mean_t = jnp.sum(w[:, None] * target, 0) / total
    s, t = source - mean_s, target - mean_t
    normal = jnp.einsum("j,ji,jk->ik", w, s, s)  # sum_j w s s^T
    cross = jnp.einsum("j,ji,jk->ik", w, t, s)  # sum_j w t s^T
    small, large = jnp.linalg.eigvalsh(normal)
    spans = jnp.sqrt(jnp.maximum(small, 0.0)) > COLLINEAR_RATIO * jnp.sqrt(jnp.maximum(large, 0))
    affine = cross @ motion.inverse_2x2(normal + 1e-12 * jnp.eye(2))
    denom = jnp.maximum(jnp.trace(normal), 1e-12)
    a = jnp.sum(w * jnp.sum(s * t, -1)) / denom
    b = jnp.sum(w * (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0])) / denom
    similarity = jnp.asarray([[a, -b], [b, a]])
    matrix = jnp.where((count >= 4) & spans, affine, similarity)
    # Visible points at one place (a side view's shoulders, its hips hidden) fix a shift only.
    matrix = jnp.where((count >= 2) & (denom > COINCIDENT_SPREAD), matrix, jnp.eye(2))
    offset = jnp.where(count >= 1, mean_t - matrix @ mean_s, 0.0)
    return matrix, offset


def group_motions(joints_a, joints_x, weights, aspect: float):
    """Each group's motion from A's joints onto X's, in [-1, 1] units.

    Args:
      joints_a, joints_x: [N, J, 2] (x, y) in [-1, 1].
      weights: [N, K, J] 1 where joint j belongs to group k and is visible in both images.
      aspect: image width / height.

    Returns:
      (matrices [N, K, 2, 2], offsets [N, K, 2]).
    """
    scale = jnp.asarray([aspect / 2.0, 0.5], jnp.float32)  # [-1, 1] -> image heights
    per_group = jax.vmap(fit_motion, in_axes=(None, None, 0))  # over K
    matrices, offsets = jax.vmap(per_group)(joints_a * scale, joints_x * scale, weights)
    return matrices / scale[:, None] * scale[None, :], offsets / scale


def joint_flow_motions(keypoints, joints, joint_weights, group_size: int, aspect: float):
    """Keypoints and Jacobians whose part motions (`motion.part_motions`) are the joints'.

    Image X of a group gets the keypoints `M p_A + o` and Jacobians `M` of its group's
    motions `(M, o)` from the group's first image A, which keeps its own keypoints p_A with
    identity Jacobians; then `p_X + J_X J_A^-1 (z - p_A) = M z + o` for every pair (A, X).

    Args:
      keypoints: [B, K, 2] the model's (only A's are used, as the point each motion is
        expanded around; any point gives the same motion).
      joints: [B, J, 2]; joint_weights: [B, K, J] 1 where joint j belongs to keypoint k's
        group and is visible (the model's aux, `motion.heatmap_joints`).
      group_size: images per identity, adjacent; aspect: image width / height.

    Returns:
      (keypoints [B, K, 2], jacobians [B, K, 2, 2]), behind a stop-gradient.
    """
    batch = joints.shape[0]
    anchor = jnp.repeat(jnp.arange(0, batch, group_size), group_size)
    weights = joint_weights[anchor] * joint_weights
    matrices, offsets = group_motions(joints[anchor], joints, weights, aspect)
    centres = keypoints[anchor]
    moved = jnp.einsum("bkij,bkj->bki", matrices, centres) + offsets
    # A itself keeps exactly its keypoints and identity Jacobians (they are inverted).
    is_anchor = (jnp.arange(batch) % group_size == 0)[:, None]
    moved = jnp.where(is_anchor[..., None], centres, moved)
    matrices = jnp.where(is_anchor[..., None, None], jnp.eye(2), matrices)
    return jax.lax.stop_gradient(moved), jax.lax.stop_gradient(matrices)
