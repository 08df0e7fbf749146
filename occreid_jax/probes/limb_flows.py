"""Ground-truth flows at image resolution from joints: the body as one region, or per limb.

The image-space flow probe (`image_probe.py`) asks whether reconstructing an image A from
another image X of the same walk rewards body parts: does a flow in which every limb moves
with its own joints explain A better than one affine motion of the whole body? These pure
numpy functions build both flows from the 17 COCO joints of A and X:

  * a person mask of A: pixels within `limb_radius` of a skeleton bone, inside the torso
    quadrilateral (shoulders and hips), or within `head_radius` of a head joint;
  * a hard part map of A (`part_map`): torso pixels to the torso, every other person pixel to
    the group of its nearest bone (`LIMB_GROUPS`), background 0;
  * the motion of each group: the affine of A's group joints onto X's (least squares with
    four or more joints, a similarity from fewer, which two joints fix exactly), and the body
    affine over all visible joints;
  * the flow a segmentation S composes from those motions (`compose_flow`), as MAT's does
    (Eq. 5-7): `F(z) = S_0(z) B(z) + sum_k S_k(z) T_k(z)`, B the background's motion.

And the measures of a segmentation against the limbs (`merge_parts`, `cell_labels`,
`limb_shares`) that `benchmarks/mat_segmentation_landscape.py` and `mat_part_limbs.py` print.

Flows are sampling coordinates in X for every pixel of A ([N, H, W, 2], (x, y) in [-1, 1],
`occreid_jax.motion` conventions); distances are measured in image heights.
"""

from __future__ import annotations

import cv2
import numpy as np

from occreid_jax import motion
from occreid_jax.losses.joint_motions import COINCIDENT_SPREAD, COLLINEAR_RATIO
from occreid_jax.nets.mat_heads import LIMB_KEYPOINT_GROUPS
from occreid_jax.probes.reference_flows import to_unit

# COCO's 19 skeleton bones (0 nose, 1-2 eyes, 3-4 ears, 5-6 shoulders, 7-8 elbows, 9-10
# wrists, 11-12 hips, 13-14 knees, 15-16 ankles).
COCO_BONES = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
TORSO = (5, 6, 12, 11)  # the torso quadrilateral, in drawing order

# Rigid groups of joints for K parts (MAT's `model.keypoint_groups="limbs"`). Each group moves
# by one motion fitted to its joints; a bone belongs to the group holding both its ends (the
# neck bones, ear to shoulder, to the head), and torso-quadrilateral pixels to the group
# holding the four torso joints.
LIMB_GROUPS = LIMB_KEYPOINT_GROUPS
# The groups of LIMB_GROUPS[10], in order.
LIMB_NAMES = (
    "head", "torso", "left upper arm", "left forearm", "right upper arm", "right forearm",
    "left thigh", "left shin", "right thigh", "right shin",
)  # fmt: skip

# Not in any paper: the synthetic people's limbs are 0.05-0.07 person heights wide (plus a
# one-pixel outline), their heads about 0.14 tall; a person fills most of the crop's height.
# Against the drawn people (80 front and back, 80 side views, 128 x 64), a limb radius of
# 0.035 puts 85% of the mask's pixels on the person and covers 95% (front, back) and 88%
# (side) of it; 0.045 put only 76% on the person, a margin of background moving with limbs.
LIMB_RADIUS = 0.035
HEAD_RADIUS = 0.07


def _grid(num: int, size: tuple[int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(motion.make_grid(*size)), (num, *size, 2))


def height_scale(aspect: float) -> np.ndarray:
    """[2]: multiplies (x, y) in [-1, 1] into image heights, for images of width / height
    `aspect` (the probes' unit of distance)."""
    return np.asarray([aspect / 2.0, 0.5], np.float32)


def bone_of_group(groups) -> list[int]:
    """For each bone of `COCO_BONES`, the group index it belongs to (the head group for bones
    whose ends lie in different groups and touch a head joint, else the first group holding
    either end)."""
    owner = []
    for a, b in COCO_BONES:
        both = [g for g, members in enumerate(groups) if a in members and b in members]
        if both:
            owner.append(both[0])
            continue
        head = [g for g, members in enumerate(groups) if {a, b} & set(members) & {0, 1, 2, 3, 4}]
        either = [g for g, members in enumerate(groups) if a in members or b in members]
        owner.append((head or either)[0])
    return owner


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points [..., 2] to the segments a-b ([N, 2] each, broadcast over images)."""
    ab = b - a
    shape = (len(a),) + (1,) * (points.ndim - 2) + (2,)
    ab, a = ab.reshape(shape), a.reshape(shape)
    t = np.clip(np.sum((points - a) * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def part_map(
    joints: np.ndarray,
    size: tuple[int, int],
    groups,
    limb_radius: float = LIMB_RADIUS,
    head_radius: float = HEAD_RADIUS,
) -> np.ndarray:
    """Hard part labels of each pixel: 0 background, g + 1 for group g.

    Args:
      joints: [N, 17, 2] joints in [-1, 1].
      size: (H, W).
      groups: joint groups (`LIMB_GROUPS[K]`), one of them holding the four torso joints.
      limb_radius, head_radius: in image heights.

    Returns:
      [N, H, W] int32.
    """
    num = len(joints)
    height, width = size
    scale = height_scale(width / height)
    grid = _grid(num, size) * scale
    points = joints * scale
    owner = bone_of_group(groups)
    dist = np.stack(
        [_segment_distance(grid, points[:, a], points[:, b]) for a, b in COCO_BONES], axis=-1
    )  # [N, H, W, bones]
    labels = np.asarray(owner)[np.argmin(dist, -1)] + 1
    person = dist.min(-1) < limb_radius
    head_group = [g for g, m in enumerate(groups) if 0 in m][0]
    head = np.linalg.norm(grid[:, :, :, None] - points[:, None, None, :5], axis=-1).min(-1)
    near_head = head < head_radius
    labels = np.where(near_head & ~person, head_group + 1, labels)
    person |= near_head
    torso_group = [g for g, m in enumerate(groups) if set(TORSO) <= set(m)][0]
    pixels = motion.to_pixels(joints[:, list(TORSO)], height, width)
    for i in range(num):
        quad = np.zeros(size, np.uint8)
        cv2.fillPoly(quad, [np.round(np.asarray(pixels[i]) - 0.5).astype(np.int32)], 1)
        inside = quad.astype(bool) & ~(person[i] & (labels[i] == head_group + 1))
        labels[i][inside] = torso_group + 1
        person[i] |= inside
    return np.where(person, labels, 0).astype(np.int32)


def fit_affine(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None):
    """The motion mapping points `source` [J, 2] onto `target` [J, 2]: least-squares affine
    with four or more (weighted) points that span the plane, the least-squares similarity
    (rotation, scale, shift) from two or three or from points on one line (a side view's
    torso: the shoulders coincide, and so do the hips; an affine's scale across that line
    would be undetermined), a translation from one or from points at one place.

    Returns:
      (matrix [2, 2], offset [2]) with `target ~ source @ matrix.T + offset`.
    """
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    keep = w > 0
    src, tgt, w = source[keep].astype(np.float64), target[keep].astype(np.float64), w[keep]
    if len(src) == 0:
        return np.eye(2), np.zeros(2)
    mean_s = np.average(src, axis=0, weights=w)
    mean_t = np.average(tgt, axis=0, weights=w)
    if len(src) == 1:
        return np.eye(2), mean_t - mean_s
    s, t = src - mean_s, tgt - mean_t
    if np.sum(w * np.sum(s * s, -1)) <= COINCIDENT_SPREAD:  # all at one place: a shift
        return np.eye(2), mean_t - mean_s
    if len(src) >= 4 and not _collinear(s, w):
        design = s * np.sqrt(w)[:, None]
        matrix, *_ = np.linalg.lstsq(design, t * np.sqrt(w)[:, None], rcond=None)
        matrix = matrix.T
    else:  # similarity [[a, -b], [b, a]] by least squares
        denom = np.sum(w * np.sum(s * s, -1))
        a = np.sum(w * np.sum(s * t, -1)) / max(denom, 1e-12)
        b = np.sum(w * (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0])) / max(denom, 1e-12)
        matrix = np.asarray([[a, -b], [b, a]])
    return matrix, mean_t - mean_s @ matrix.T


def _collinear(centred: np.ndarray, weights: np.ndarray) -> bool:
    """Whether centred points [J, 2] (weights [J]) lie on one line (`COLLINEAR_RATIO`)."""
    spread = np.linalg.svd(centred * np.sqrt(weights)[:, None], compute_uv=False)
    return bool(spread[1] <= COLLINEAR_RATIO * spread[0])


def group_motions(joints_a, joints_x, groups, visible=None, aspect: float = 0.5) -> np.ndarray:
    """Each group's motion from A's joints onto X's, as [N, G, 2, 3] ([matrix | offset]).

    Args:
      joints_a, joints_x: [N, 17, 2] in [-1, 1].
      groups: joint groups.
      visible: [N, 17] bool, joints visible in both images, or None (all). A group's fit
        leaves the others out (a group with none visible keeps them all).
      aspect: image width / height: fits happen in image heights, so a similarity stays one.
    """
    scale = height_scale(aspect)
    out = np.zeros((len(joints_a), len(groups), 2, 3))
    for i in range(len(joints_a)):
        for g, members in enumerate(groups):
            members = list(members)
            w = None if visible is None else visible[i, members].astype(np.float64)
            if w is not None and not w.any():
                w = None
            matrix, offset = fit_affine(
                joints_a[i, members] * scale, joints_x[i, members] * scale, w
            )
            out[i, g] = _unscaled(matrix, offset, scale)
    return out


def body_motion(joints_a, joints_x, visible=None, aspect: float = 0.5) -> np.ndarray:
    """The least-squares affine of all (visible) joints of A onto X's: [N, 1, 2, 3]."""
    whole = (tuple(range(joints_a.shape[1])),)
    return group_motions(joints_a, joints_x, whole, visible, aspect)


def _unscaled(matrix, offset, scale) -> np.ndarray:
    """[matrix | offset] fitted in scaled units -> the same motion in [-1, 1] units."""
    m = matrix / scale[:, None] * scale[None, :]
    return np.concatenate([m, (offset / scale)[:, None]], axis=1)


def as_keypoints(motions: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Motions of A onto X as FOMM keypoints and Jacobians whose part motion is the motion.

    `motion.part_motions` moves a point z of A by `kp_X + J_X J_A^-1 (z - kp_A)`; with
    `kp_A = c`, `J_A = I`, `kp_X = M c + o` and `J_X = M` that is `M z + o` exactly.

    Args:
      motions: [N, K, 2, 3] ([matrix | offset], `group_motions`).
      centres: [N, K, 2] where each part's keypoint sits in A (any point gives the same motion).

    Returns:
      keypoints [N, 2, K, 2] and Jacobians [N, 2, K, 2, 2], A's first, then X's.
    """
    matrices, offsets = motions[..., :2], motions[..., 2]
    moved = np.einsum("nkij,nkj->nki", matrices, centres) + offsets
    eye = np.broadcast_to(np.eye(2), matrices.shape)
    return np.stack([centres, moved], 1), np.stack([eye, matrices], 1)


def apply_motions(motions: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every motion applied at every pixel: [N, G, 2, 3] -> [N, G, H, W, 2]."""
    grid = _grid(len(motions), size)
    return np.einsum("ngij,nhwj->nghwi", motions[..., :2], grid) + motions[:, :, None, None, :, 2]


def translation_motion(shift: np.ndarray) -> np.ndarray:
    """Translations [N, 2] as motions [N, 1, 2, 3]."""
    eye = np.broadcast_to(np.eye(2), (len(shift), 2, 2))
    return np.concatenate([eye, shift[:, :, None]], axis=-1)[:, None]


def compose_flow(
    segmentation: np.ndarray, motions: np.ndarray, background: np.ndarray | None = None
) -> np.ndarray:
    """`F(z) = S_0(z) B(z) + sum_k S_k(z) T_k(z)`.

    Args:
      segmentation: [N, H, W, K+1] soft or one-hot, channel 0 background.
      motions: [N, K, 2, 3] the parts' motions.
      background: [N, 1, 2, 3] the background's motion; None keeps it still.

    Returns:
      [N, H, W, 2] sampling coordinates in X.
    """
    size = segmentation.shape[1:3]
    moved = apply_motions(motions, size)  # [N, K, H, W, 2]
    still = (
        _grid(len(motions), size) if background is None else apply_motions(background, size)[:, 0]
    )
    return segmentation[..., :1] * still + np.einsum(
        "nhwk,nkhwc->nhwc", segmentation[..., 1:], moved
    )


def one_hot(labels: np.ndarray, channels: int) -> np.ndarray:
    """[N, H, W] int -> [N, H, W, channels] float32."""
    return np.eye(channels, dtype=np.float32)[labels]


def resample_segmentation(segmentation: np.ndarray, stride: int) -> np.ndarray:
    """What a segmentation at `stride` can express: area-averaged to H/stride x W/stride, then
    resized bilinearly back to H x W ([N, H, W, C] -> same shape)."""
    if stride == 1:
        return segmentation
    n, h, w, c = segmentation.shape
    coarse = segmentation.reshape(n, h // stride, stride, w // stride, stride, c).mean((2, 4))
    out = np.stack(
        [
            cv2.resize(
                coarse[i].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
            ).reshape(h, w, c)
            for i in range(n)
        ]
    )
    return out / out.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- measures


def merge_parts(segmentation: np.ndarray, merges) -> np.ndarray:
    """[N, h, w, K+1] part probabilities with each (part, taken) of `merges` moving the
    taken parts' mass onto the part (channel = part + 1)."""
    out = np.array(segmentation)
    for part, taken in merges:
        for k in taken:
            out[..., part + 1] += out[..., k + 1]
            out[..., k + 1] = 0.0
    return out


def limb_shares(segmentation: np.ndarray, labels: np.ndarray) -> dict:
    """Where the person's cells went.

    Args:
      segmentation: [N, h, w, K+1] part probabilities, channel 0 background.
      labels: [N, h, w] ground-truth limb of each cell (0 background, k limb k's part).

    Returns:
      background / own / other: shares of the person's cells (labels > 0) whose most
      probable channel is 0, their own label, or another part; per_limb [K, K+1]: for each
      limb, the share of its cells on each channel.
    """
    winner = segmentation.argmax(-1)
    person = labels > 0
    parts = segmentation.shape[-1] - 1
    per_limb = np.zeros((parts, parts + 1))
    for k in range(1, parts + 1):
        cells = winner[labels == k]
        if len(cells):
            per_limb[k - 1] = np.bincount(cells, minlength=parts + 1) / len(cells)
    return {
        "background": float(np.mean(winner[person] == 0)),
        "own": float(np.mean(winner[person] == labels[person])),
        "other": float(np.mean((winner[person] != 0) & (winner[person] != labels[person]))),
        "per_limb": per_limb,
    }


def coarse_parts(labels: np.ndarray, channels: int, stride: int) -> np.ndarray:
    """Hard part labels [N, H, W] (`part_map`) as part shares of each stride x stride cell:
    [N, H/stride, W/stride, channels], the one-hot area-averaged."""
    n, h, w = labels.shape
    cells = one_hot(labels, channels).reshape(n, h // stride, stride, w // stride, stride, channels)
    return cells.mean(axis=(2, 4))


def cell_labels(keypoints: np.ndarray, image_size, cells, groups) -> np.ndarray:
    """[N, h, w] the majority ground-truth limb of each cell of the segmentation's grid
    `cells` (h, w), from the images' joints [N, 17, 3] (pixels, visibility)."""
    labels = part_map(to_unit(keypoints, image_size), tuple(image_size), groups)
    return coarse_parts(labels, len(groups) + 1, image_size[0] // cells[0]).argmax(-1)
