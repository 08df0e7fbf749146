"""Do the learned keypoints follow the body? The landmark regression of unsupervised-keypoint
papers (Zhang et al., CVPR 2018, Sec. 4.2; Jakab et al., NeurIPS 2018, Sec. 4.1).

A linear map (with a bias) from the K learned keypoints of an image to its 17 ground-truth
joints is fitted by least squares on training images; its mean error on the visible joints of
held-out images, divided by each person's height, says how much of the body's pose the
keypoints carry. The reference is a fixed template, the mean training pose predicted for
every image: keypoints that do not move with the body can do no better than it.

Coordinates are in image heights ((x, y) in [-1, 1] scaled by (W / H / 2, 1 / 2)), so an
error is a fraction of the image height before the division by the person's height.
"""

from __future__ import annotations

import numpy as np

from occreid_jax.probes.limb_flows import height_scale

# Ridge on the map's weights (not in the papers, which fit plainly): keeps the fit defined
# when keypoints coincide (a collapsed layout), negligible otherwise.
RIDGE = 1e-6


def _heights(points: np.ndarray, aspect: float) -> np.ndarray:
    return np.asarray(points, np.float64) * height_scale(aspect).astype(np.float64)


def fit_regressor(
    keypoints: np.ndarray, joints: np.ndarray, visible: np.ndarray, aspect: float
) -> np.ndarray:
    """Least-squares map from keypoints to each joint, fitted on the images where it is visible.

    Args:
      keypoints: [M, K, 2] learned keypoints in [-1, 1].
      joints: [M, J, 2] ground-truth joints in [-1, 1].
      visible: [M, J] bool.
      aspect: image width / height.

    Returns:
      [J, 2K + 1, 2] weights: joint j = [keypoints flattened, 1] @ weights[j].
    """
    design = _design(keypoints, aspect)
    target = _heights(joints, aspect)
    weights = np.zeros((joints.shape[1], design.shape[1], 2))
    ridge = RIDGE * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0
    for j in range(joints.shape[1]):
        rows = visible[:, j]
        if not rows.any():
            continue
        x = design[rows]
        weights[j] = np.linalg.solve(x.T @ x + ridge, x.T @ target[rows, j])
    return weights


def _design(keypoints: np.ndarray, aspect: float) -> np.ndarray:
    flat = _heights(keypoints, aspect).reshape(len(keypoints), -1)
    return np.concatenate([flat, np.ones((len(keypoints), 1))], axis=1)


def person_heights(joints: np.ndarray, aspect: float) -> np.ndarray:
    """[M] vertical span of all 17 joints (nose to the lower ankle), in image heights."""
    y = _heights(joints, aspect)[..., 1]
    return y.max(1) - y.min(1)


def mean_error(
    predicted: np.ndarray, joints: np.ndarray, visible: np.ndarray, aspect: float
) -> float:
    """Mean over visible joints of the distance between `predicted` ([M, J, 2] in image
    heights) and `joints` ([M, J, 2] in [-1, 1]), each divided by its person's height."""
    dist = np.linalg.norm(predicted - _heights(joints, aspect), axis=-1)
    relative = dist / np.maximum(person_heights(joints, aspect), 1e-6)[:, None]
    return float(relative[visible].mean()) if visible.any() else float("nan")


def predict(weights: np.ndarray, keypoints: np.ndarray, aspect: float) -> np.ndarray:
    """[M, J, 2] joints (image heights) the fitted map predicts from keypoints [M, K, 2]."""
    return np.einsum("md,jdc->mjc", _design(keypoints, aspect), weights)


def mean_pose(joints: np.ndarray, visible: np.ndarray, aspect: float) -> np.ndarray:
    """[J, 2] the template: each joint's mean visible position (image heights)."""
    points = _heights(joints, aspect)
    counts = np.maximum(visible.sum(0), 1)[:, None]
    return np.sum(points * visible[..., None], axis=0) / counts


def joint_errors(train: tuple, held_out: tuple, aspect: float) -> dict[str, float]:
    """`keypoint_joint_error` and `template_joint_error` of the module docstring.

    Args:
      train, held_out: (keypoints [M, K, 2], joints [M, 17, 2], visible [M, 17]) each, the
        first to fit the map and the template, the second to measure them.
      aspect: image width / height.
    """
    weights = fit_regressor(*train, aspect)
    kp, joints, visible = held_out
    template = np.broadcast_to(mean_pose(train[1], train[2], aspect), joints.shape)
    return {
        "keypoint_joint_error": mean_error(predict(weights, kp, aspect), joints, visible, aspect),
        "template_joint_error": mean_error(template, joints, visible, aspect),
    }


# One group of all 17 joints: its centroid is the body's centre.
BODY_CENTRE = (tuple(range(17)),)


def group_centroids(joints: np.ndarray, groups) -> np.ndarray:
    """[M, G, 2]: the mean of each group's joints ([M, 17, 2] in [-1, 1]), visible or not."""
    return np.stack([joints[:, list(group)].mean(1) for group in groups], axis=1)


def centroid_oracle(
    train: tuple, held_out: tuple, aspect: float, groups, noise: float = 0.0, seed: int = 0
) -> dict[str, float]:
    """`joint_errors` of oracle keypoints: the exact centroids of the joint `groups` (one
    group of all 17 joints is the body's centre), each shifted by Gaussian noise of std
    `noise` image heights. What keypoints that sat exactly on such parts could reach.

    Args:
      train, held_out: (joints [M, 17, 2] in [-1, 1], visible [M, 17]) each.
      aspect: image width / height.
      groups: tuples of joint indices, one per keypoint.
    """
    rng = np.random.default_rng(seed)
    unit_noise = noise / height_scale(aspect).astype(np.float64)

    def keypoints(joints):
        centroids = group_centroids(np.asarray(joints, np.float64), groups)
        return centroids + rng.normal(size=centroids.shape) * unit_noise

    return joint_errors((keypoints(train[0]), *train), (keypoints(held_out[0]), *held_out), aspect)
