"""What MAT's feature consistency (L_fc) rewards: its value under reference flows.

L_fc compares an image A with another image X of the same person brought into A's frame by a
flow (`losses/mat.consistency_loss`). Whether training can find body parts depends on whether
a flow made of several part motions scores a lower L_fc than one global motion. These pure
functions build reference flows and score them on the same maps L_fc compares:

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

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax import motion
from occreid_jax.data import pipeline
from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.losses.mat import kl_divergence
from occreid_jax.losses.objectives import consistency_maps

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


# ----------------------------------------------------------------------------- on a model


@dataclasses.dataclass
class Groups:
    """Training groups as L_fc sees them: G images of one identity each, A first.

    Attributes:
      images: [N, G, H, W, 3] ImageNet-normalised (augmented as in training, or not).
      joints: [N, G, 17, 2] ground-truth joints in [-1, 1], or None (no keypoints).
    """

    images: np.ndarray
    joints: np.ndarray | None


def collect_groups(config, split, num_groups: int, augment: bool = True) -> Groups:
    """The first `num_groups` identity groups the training sampler and pipeline would give.

    Args:
      config: a run config (data and sampler settings, seed).
      split: the train `datasets.Split` (with keypoints for the ground-truth flows).
      num_groups: N.
      augment: apply the training augmentation (pad-and-crop, flip, erasing) or none.
    """
    data = config.data
    sampler = IdentitySampler(
        split.labels,
        data.batch_size,
        data.instances_per_id,
        1,
        seed=config.seed,
        camids=split.camids,
        same_camera_pairs=data.same_camera_pairs,
    )
    with_keypoints = split.keypoints is not None
    batches = pipeline.train_batches(
        split,
        sampler,
        start_step=0,
        image_size=data.image_size,
        num_devices=1,
        pad=data.pad if augment else 0,
        flip_prob=data.flip_prob if augment else 0.0,
        erasing_prob=data.erasing_prob if augment else 0.0,
        seed=config.seed,
        with_keypoints=with_keypoints,
        pair_geometry=data.same_camera_pairs,
    )
    images, joints = [], []
    while sum(len(x) for x in images) < num_groups * data.instances_per_id:
        batch = next(batches)
        images.append(batch["images"][0])
        if with_keypoints:
            joints.append(to_unit(batch["keypoints"][0], data.image_size))
    size = data.image_size
    take = num_groups * data.instances_per_id
    grouped = np.concatenate(images)[:take].reshape(num_groups, -1, *size, 3)
    if not with_keypoints:
        return Groups(grouped, None)
    return Groups(grouped, np.concatenate(joints)[:take].reshape(num_groups, -1, 17, 2))


def model_outputs(apply_fn, variables: dict, images: np.ndarray, chunk: int = 64) -> dict:
    """Eval-mode aux of images [M, H, W, 3], as numpy, in chunks of `chunk` images."""
    run = jax.jit(lambda x: apply_fn(variables, x, train=False)[1])
    parts = [jax.device_get(run(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def flow_scores(
    aux: dict,
    groups: Groups,
    settings,
    image_size,
    ground_truth_groups,
    background_radius: float = BACKGROUND_RADIUS,
) -> dict:
    """Mean over groups of L_fc's sum over pairs, under every reference flow.

    Args:
      aux: eval-mode aux of the groups' images, flattened group-major ([N * G, ...]).
      groups: the `Groups` (for the joints).
      settings: a `MatLossConfig` (what is compared, which pairs).
      image_size: (H, W) of the images.
      ground_truth_groups: joint groups of the ground-truth part flow.
      background_radius: its static background's distance from the joints (image heights).

    Returns:
      {flow name: L_fc}, plus "best single part" (the part whose motion alone scores best
      over all groups) and its index under "best single part index".
    """
    num, size_g = groups.images.shape[:2]
    others = 1 if settings.consistency_pairs == "first" else size_g - 1
    aspect = image_size[1] / image_size[0]
    flows: dict[str, dict[int, list]] = {}

    def per_image(values):
        return np.asarray(values).reshape(num, size_g, *np.shape(values)[1:])

    # One entry per (level, pair): levels are averaged, pairs summed, as L_fc does.
    levels = consistency_maps(jax.tree.map(jnp.asarray, aux), settings)
    for index, level in enumerate(levels):
        maps = per_image(level)
        size = maps.shape[2:4]
        for pair in range(1, 1 + others):

            def add(name, coords, pair=pair, maps=maps, index=index):
                kl = score(maps[:, 0], maps[:, pair], coords)
                flows.setdefault(name, {}).setdefault(index, []).append(kl)

            add("no motion", no_motion(num, size))
            if groups.joints is not None:
                a, x = groups.joints[:, 0], groups.joints[:, pair]
                add("global translation (joints)", global_translation(a, x, size))
                add("global affine (joints)", global_affine(a, x, size))
                for name, flow in (
                    ("ground-truth parts (joints)", joint_part_flow),
                    ("ground-truth parts, soft (joints)", soft_joint_part_flow),
                ):
                    add(name, flow(a, x, size, ground_truth_groups, background_radius, aspect))
            if "keypoints" in aux and "segmentation" in aux:
                kp, jac = per_image(aux["keypoints"]), per_image(aux["jacobians"])
                seg = per_image(aux["segmentation"])
                motions = (kp[:, 0], jac[:, 0], kp[:, pair], jac[:, pair])
                add("learned", segmentation_flow(seg[:, 0], *motions, size))
                channels = seg.shape[-1]
                uniform = constant_segmentation(num, channels, None)
                add("uniform segmentation", segmentation_flow(uniform, *motions, size))
                for k in range(1, channels):
                    single = constant_segmentation(num, channels, k)
                    add(f"part {k}", segmentation_flow(single, *motions, size))
    scores = {
        name: float(np.mean([np.mean(np.sum(pairs, axis=0)) for pairs in by_level.values()]))
        for name, by_level in flows.items()
    }
    singles = {int(n.split()[1]): v for n, v in scores.items() if n.startswith("part ")}
    if singles:
        best = min(singles, key=singles.get)
        scores = {n: v for n, v in scores.items() if not n.startswith("part ")}
        scores["best single part"] = singles[best]
        scores["best single part index"] = best
    return scores


# Gallery images the eval-time part report looks at (the first ones of the split).
GALLERY_LIMIT = 256


def part_report(
    apply_fn, variables: dict, gallery, groups: Groups, settings, image_size
) -> dict[str, float]:
    """MAT's parts at evaluation time (eval mode), for metrics.jsonl.

    `part_statistics` of the first `GALLERY_LIMIT` gallery images (keys prefixed
    `gallery_`), and L_fc on the training `groups` under the learned flow, no motion, the
    learned motions under a uniform segmentation and the best single part's motion
    (`lfc_learned`, `lfc_no_motion`, `lfc_uniform_segmentation`, `lfc_best_single_part`).
    """
    count = min(len(gallery), GALLERY_LIMIT)
    subset = dataclasses.replace(
        gallery,
        **{
            f.name: getattr(gallery, f.name)[:count]
            for f in dataclasses.fields(gallery)
            if getattr(gallery, f.name) is not None
        },
    )
    batches = pipeline.eval_batches(subset, image_size=image_size, batch_size=64, num_devices=1)
    images = np.concatenate([b["images"][0][b["mask"][0]] for b in batches])
    stats = part_statistics(*_segmentation_and_keypoints(apply_fn, variables, images))
    report = {f"gallery_{k}": float(v) for k, v in stats.items()}
    aux = model_outputs(apply_fn, variables, groups.images.reshape(-1, *groups.images.shape[2:]))
    scores = flow_scores(aux, Groups(groups.images, None), settings, image_size, ())
    for name in ("learned", "no motion", "uniform segmentation", "best single part"):
        report["lfc_" + name.replace(" ", "_")] = scores[name]
    return report


def _segmentation_and_keypoints(apply_fn, variables, images):
    aux = model_outputs(apply_fn, variables, images)
    return aux["segmentation"], aux.get("keypoints")
