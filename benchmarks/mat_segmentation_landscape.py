"""Where does the image-reconstruction L_fc lead a segmentation that is free of any network?

On the (A, B) pairs of N training groups with ground-truth joints, with ground-truth part
motions (each of the K = 10 limb groups of `probes/limb_flows.py` moves by the mean shift of
its joints, identity Jacobians; or, with `--motions=affine`, by the affine fitted to its
joints, `limb_flows.group_motions`, as probe v2 moves its limbs), this prints

  * the loss (`losses/mat.reconstruction_terms`, visibility map from the ground-truth parts)
    under no motion and under the ground-truth part map at `--stride`: a check that the loss
    rewards the right flow; with `--merges`, also under that map with limbs merged (`MERGES`:
    the head into the torso, the arms into it, ...), what each limb of the partition is worth;
  * then optimises A's segmentation at that stride by Adam and reports every 50 steps the
    loss, the share of person pixels that went to the background, the share that went to
    their own limb group (also within the busier and the flatter half of the person's cells,
    split at the median image-gradient magnitude), and the parts that win per image.
    `--segmenter` picks what holds the segmentation:
      free       per-pixel logits, no network, from uniform;
      stem       a conv stem to stride 4 (two 3x3 stride-2 convs, BatchNorm, ReLU) and a 1x1
                 head: like MAT's head, one linear map of shallow features for every pixel;
      hourglass  co-part segmentation's predictor (`nets/hourglass.CoPartPredictor`) on the
                 image blurred and subsampled to the stride.
    `--start=limbs` starts the free logits at the limb partition, to ask whether it is a
    minimum the loss keeps (a trap on the way there) or one it leaves (not a minimum);
    `--start=keypoints` at MAT's keypoint prior around each limb group's centre
    (`model.segmentation_prior_sigma`; with a network segmenter the prior is added to its
    logits, as MAT adds it), what keypoints that follow the body would give.
  * before the first step, one motion per cell: whether the cell's own limb's motion is the
    one that reconstructs it best (over every cell of the person, and over the cells wholly
    on one limb);
  * after the last step: how far the learned flow sends the person's cells from where their
    own limb's motion does, and how far the winning motion sends the cells that went to
    another part (against the nearest other motion).

If the free logits find parts where a trained MAT's segmentation falls to the background, the
trap is in the network, not in the loss (README, "The image-reconstruction signal"); the
network rows say which network escapes it.

  python -m benchmarks.mat_segmentation_landscape --config=configs/mat.py:synthetic \\
      --config.data.builder_config=tracklets_wide --groups=64 [--segmenter=hourglass --lr=1e-3]
      [--motions=affine] [--start=limbs|keypoints] [--scales=1,2,4,8 --warp_levels] [--merges]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from occreid_jax import motion
from occreid_jax.data import datasets
from occreid_jax.errors import UserError
from occreid_jax.losses.mat import reconstruction_terms
from occreid_jax.nets.hourglass import CoPartPredictor
from occreid_jax.probes import flow_probe, landmarks, limb_flows
from occreid_jax.training.run import Run

_CONFIG = config_flags.DEFINE_config_file("config", None, "MAT config file and variant.")
_GROUPS = flags.DEFINE_integer("groups", 64, "identity groups (pairs) used")
_STRIDE = flags.DEFINE_integer("stride", 4, "stride of the segmentation (divides H and W)")
_STEPS = flags.DEFINE_integer("steps", 300, "Adam steps on the free logits")
_LR = flags.DEFINE_float("lr", 0.05, "Adam learning rate")
_SEGMENTER = flags.DEFINE_enum(
    "segmenter", "free", ["free", "stem", "hourglass"], "what holds A's segmentation"
)
_SEED = flags.DEFINE_integer("seed", 0, "initialisation of the network segmenters")
_START = flags.DEFINE_enum(
    "start",
    "uniform",
    ["uniform", "limbs", "keypoints"],
    "free logits start uniform or at the limb partition (log of its area-averaged one-hot); "
    "keypoints: MAT's keypoint prior (`motion.keypoint_prior_logits` around the limb groups' "
    "centres, sigma --sigma) is the free logits' start, or is added to a network's logits",
)
_SIGMA = flags.DEFINE_float("sigma", 0.15, "--start=keypoints: the prior's sigma ([-1, 1] units)")
_SCALES = flags.DEFINE_list(
    "scales", ["1", "2", "4"], "the L1 pyramid's image scales (1/s of the image size)"
)
_WARP_LEVELS = flags.DEFINE_bool(
    "warp_levels", False, "warp each level of X's pyramid (`losses/mat.warped_pyramid`)"
)
_MERGES_FLAG = flags.DEFINE_bool(
    "merges", False, "also print the loss of the limb partition with limbs merged (`MERGES`)"
)
_MOTIONS = flags.DEFINE_enum(
    "motions", "translations", ["translations", "affine"], "each limb group's ground-truth motion"
)

PARTS = 10
# The limb partition with limbs merged, (part, [parts it takes]), 0-based indices of
# `limb_flows.LIMB_NAMES` (head, torso, left upper arm, forearm, right upper arm, forearm,
# left thigh, shin, right thigh, shin).
MERGES = {
    "head into torso": [(1, [0])],
    "forearms into upper arms": [(2, [3]), (4, [5])],
    "arms into torso": [(1, [2, 3, 4, 5])],
    "thighs into torso": [(1, [6, 8])],
    "shins into thighs": [(6, [7]), (8, [9])],
    "head, arms and thighs into torso": [(1, [0, 2, 3, 4, 5, 6, 8])],
    "every limb into torso": [(1, [0, 2, 3, 4, 5, 6, 7, 8, 9])],
}


class _Stem(nn.Module):
    """Two 3x3 stride-2 convs with BatchNorm and ReLU, then a 1x1 head to K+1 logits."""

    @nn.compact
    def __call__(self, images, train: bool):
        x = images
        for i, width in enumerate((32, 64)):
            x = nn.Conv(width, (3, 3), strides=2, padding=1, name=f"conv_{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"norm_{i}")(x))
        return nn.Dense(PARTS + 1, name="head")(x)


def _segmenter(kind: str, images: jax.Array, stride: int, seed: int):
    """(init params, logits_fn(params, train) -> ([N, h, w, K+1], new params)) of `kind`."""
    if kind != "free" and stride != 4:
        raise UserError("--segmenter=stem and hourglass read the image at --stride=4")
    num, height, width = images.shape[:3]
    if kind == "free":
        shape = (num, height // stride, width // stride, PARTS + 1)
        return {"params": jnp.zeros(shape, jnp.float32)}, lambda v, train: (v["params"], {})
    net = _Stem() if kind == "stem" else CoPartPredictor(PARTS, stride=stride)
    variables = net.init(jax.random.PRNGKey(seed), images[:2], train=False)

    def logits_fn(variables, train):
        out, state = net.apply(variables, images, train=train, mutable=["batch_stats"])
        return (out if kind == "stem" else out[0]), state

    return dict(variables), logits_fn


def _pair_arrays(config, num_groups: int, stride: int, affine: bool = False):
    run = Run(config, "/tmp/mat_segmentation_landscape")
    split = datasets.load_split(run.builder, "train", with_heatmaps=False)
    groups = flow_probe.collect_groups(config, split, num_groups, augment=True)
    if groups.joints is None:
        raise UserError("the landscape needs ground-truth joints: use the synthetic dataset")
    num, height, width = len(groups.images), *groups.images.shape[2:4]
    if height % stride or width % stride:
        raise UserError(f"--stride={stride} must divide the image size {height} x {width}")
    images = groups.images[:, :2].reshape(-1, height, width, 3)
    joints = groups.joints[:, :2]  # [N, 2, 17, 2]: A, B
    parts = limb_flows.LIMB_GROUPS[PARTS]

    def coarse(which):
        labels = limb_flows.part_map(joints[:, which], (height, width), parts)
        return limb_flows.coarse_parts(labels, PARTS + 1, stride)

    centres = landmarks.group_centroids(joints[:, 0], parts)  # [N, K, 2]
    if affine:
        motions = limb_flows.group_motions(joints[:, 0], joints[:, 1], parts, aspect=width / height)
    else:  # the mean shift of each group's joints
        shifts = landmarks.group_centroids(joints[:, 1], parts) - centres
        eye = np.broadcast_to(np.eye(2), (num, PARTS, 2, 2))
        motions = np.concatenate([eye, shifts[..., None]], -1)
    keypoints, jacobians = limb_flows.as_keypoints(motions, centres)
    keypoints, jacobians = keypoints.reshape(-1, PARTS, 2), jacobians.reshape(-1, PARTS, 2, 2)
    return (
        jnp.asarray(images),
        coarse(0),
        jnp.asarray(coarse(1)),
        jnp.asarray(keypoints),
        jnp.asarray(jacobians, jnp.float32),
        motions,
    )


def _channel_motions(motions: np.ndarray) -> np.ndarray:
    """[N, K, 2, 3] limb motions -> [N, K+1, 2, 3], the still background's first (channel 0)."""
    still = limb_flows.translation_motion(np.zeros((len(motions), 2)))
    return np.concatenate([still, motions], 1)


def _where_motions_send(motions: np.ndarray, cells: tuple[int, int], height: int) -> np.ndarray:
    """[N, K+1, h, w, 2]: where each channel's motion (0: the still background, k: limb
    group k's) sends every cell centre of A, in pixels of the full image's height."""
    sent = limb_flows.apply_motions(_channel_motions(motions), cells)
    return sent * limb_flows.height_scale(cells[1] / cells[0]) * height


def _cell_errors(images: jax.Array, motions: np.ndarray, stride: int) -> np.ndarray:
    """[N, K+1, h, w]: the L1 error (full resolution, mean over channels and the cell's
    pixels) of A against X warped by each channel's motion alone (0: X unmoved)."""
    pairs = images.reshape(-1, 2, *images.shape[1:])
    anchors, sources = pairs[:, 0], pairs[:, 1]
    num, height, width = anchors.shape[:3]
    flows = limb_flows.apply_motions(_channel_motions(motions), (height, width))
    errors = []
    for channel in range(flows.shape[1]):
        warped = motion.grid_sample(sources, jnp.asarray(flows[:, channel], jnp.float32), "border")
        error = np.asarray(jnp.abs(anchors - warped).mean(-1))
        cells = error.reshape(num, height // stride, stride, width // stride, stride)
        errors.append(cells.mean(axis=(2, 4)))
    return np.stack(errors, 1)


def _motion_gaps(sent: np.ndarray, winner: np.ndarray, truth: np.ndarray, person: np.ndarray):
    """For each person cell, how far the winning channel's motion sends it from where its
    own limb's motion does, and how far the nearest other channel's does (pixels).

    Args:
      sent: [N, K+1, h, w, 2] (`_where_motions_send`).
      winner, truth: [N, h, w] channel indices; person: [N, h, w] bool.

    Returns:
      (gap to the winner [P], gap to the nearest other channel [P]) over the P person cells.
    """
    own = np.take_along_axis(sent, truth[:, None, ..., None], 1)  # [N, 1, h, w, 2]
    gaps = np.linalg.norm(sent - own, axis=-1)  # [N, K+1, h, w]
    to_winner = np.take_along_axis(gaps, winner[:, None], 1)[:, 0]
    others = np.where(np.arange(gaps.shape[1])[None, :, None, None] == truth[:, None], np.inf, gaps)
    return to_winner[person], others.min(1)[person]


def _texture(images: np.ndarray, stride: int) -> np.ndarray:
    """[N, H/stride, W/stride] mean image-gradient magnitude (grey levels) of each cell."""
    grey = np.asarray(images, np.float32).mean(-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    num, height, width = grey.shape
    cells = np.hypot(gx, gy).reshape(num, height // stride, stride, width // stride, stride)
    return cells.mean(axis=(2, 4))


def main(argv):
    del argv
    config = _CONFIG.value
    if _GROUPS.value < 1 or _STRIDE.value < 1 or _STEPS.value < 0 or not _LR.value > 0:
        raise UserError("--groups, --stride and --lr must be positive, --steps >= 0")
    scales = tuple(int(s) for s in _SCALES.value)
    size = tuple(config.data.image_size)
    if min(scales) < 1 or any(side % max(scales) for side in size):
        raise UserError(f"--scales must be positive and divide the image size {size}")
    images, truth_a, seg_b, keypoints, jacobians, motions = _pair_arrays(
        config, _GROUPS.value, _STRIDE.value, _MOTIONS.value == "affine"
    )

    def loss_of(seg_a):
        seg = jnp.stack([seg_a, seg_b], 1).reshape(-1, *seg_a.shape[1:])
        terms = reconstruction_terms(
            images, seg, keypoints, jacobians, 2, "first", True, None, scales, _WARP_LEVELS.value
        )
        return jnp.mean(terms)

    background = np.zeros_like(truth_a)
    background[..., 0] = 1.0
    fixed_truth = jnp.stack([jnp.asarray(truth_a), seg_b], 1).reshape(-1, *truth_a.shape[1:])
    no_motion = jnp.mean(
        reconstruction_terms(
            images, fixed_truth, keypoints, jacobians, 2, "first", True,
            jnp.repeat(jnp.asarray(background), 2, axis=0), scales, _WARP_LEVELS.value,
        )
    )  # fmt: skip
    partition = float(loss_of(jnp.asarray(truth_a)))
    print(
        f"{_GROUPS.value} pairs, stride {_STRIDE.value}: no motion {float(no_motion):.4f}, "
        f"ground-truth parts {partition:.4f}"
    )
    if _MERGES_FLAG.value:
        for name, merges in MERGES.items():
            value = float(loss_of(jnp.asarray(limb_flows.merge_parts(truth_a, merges))))
            print(
                f"  {name:34s} {value:.4f} ({value / partition - 1:+.1%} on the partition, "
                f"{value / float(no_motion) - 1:+.1%} on no motion)"
            )
    images_a = images.reshape(-1, 2, *images.shape[1:])[:, 0]
    variables, logits_fn = _segmenter(_SEGMENTER.value, images_a, _STRIDE.value, _SEED.value)
    if _START.value == "limbs":
        if _SEGMENTER.value != "free":
            raise UserError("--start=limbs starts the free logits: use --segmenter=free")
        variables["params"] = jnp.log(jnp.maximum(jnp.asarray(truth_a), 1e-3))
    if _START.value == "keypoints":  # MAT's keypoint prior, with A's limb centres
        prior = motion.keypoint_prior_logits(keypoints[0::2], truth_a.shape[1:3], _SIGMA.value)
        if _SEGMENTER.value == "free":
            variables["params"] = prior
        else:
            network_logits = logits_fn

            def logits_fn(variables, train):
                logits, state = network_logits(variables, train)
                return logits + prior, state

    trained = variables.pop("params")  # the rest: BatchNorm statistics, if any
    optimizer = optax.adam(_LR.value)
    state = optimizer.init(trained)

    def loss_and_stats(trained, variables):
        logits, new_variables = logits_fn({**variables, "params": trained}, True)
        return loss_of(jax.nn.softmax(logits, -1)), (logits, new_variables)

    @jax.jit
    def step(trained, variables, state):
        (value, (logits, variables)), grad = jax.value_and_grad(loss_and_stats, has_aux=True)(
            trained, variables
        )
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(trained, updates), variables, state, value, logits

    truth = truth_a.argmax(-1)
    person = truth > 0
    texture = _texture(images_a, _STRIDE.value)
    textured = person & (texture > np.median(texture[person]))  # the busier half of the person
    flat = person & ~textured
    sent = _where_motions_send(motions, truth.shape[1:], images.shape[1])
    errors = _cell_errors(images, motions, _STRIDE.value)  # [N, K+1, h, w]
    inside = person & (np.asarray(truth_a).max(-1) > 0.999)  # cells wholly on one limb
    for cells, name in ((person, "person cells"), (inside, "cells wholly on one limb")):
        own_error = np.take_along_axis(errors, truth[:, None], 1)[:, 0][cells]
        best_error = errors.min(1)[cells]
        print(
            f"one motion per cell, the best at reconstructing it, over the {name} "
            f"({cells.mean():.0%} of all cells): their own limb's in "
            f"{np.mean(errors.argmin(1)[cells] == truth[cells]):.0%}"
            f"; own limb within 10% of the best in {np.mean(own_error <= 1.1 * best_error):.0%}"
            f"; median error own {np.median(own_error):.3f}, best {np.median(best_error):.3f}, "
            f"unmoved {np.median(errors[:, 0][cells]):.3f}"
        )
    for i in range(_STEPS.value + 1):
        trained, variables, state, value, logits = step(trained, variables, state)
        if i % 50 == 0 or i == _STEPS.value:
            winner = np.asarray(jnp.argmax(logits, -1))
            parts = np.mean([len(set(w.ravel().tolist()) - {0}) for w in winner])
            print(
                f"step {i}: loss {float(value):.4f}, person pixels to background "
                f"{np.mean(winner[person] == 0):.0%}, to their own limb "
                f"{np.mean(winner[person] == truth[person]):.0%} (textured half "
                f"{np.mean(winner[textured] == truth[textured]):.0%}, flat half "
                f"{np.mean(winner[flat] == truth[flat]):.0%}), parts per image {parts:.1f}"
            )
    to_winner, to_nearest = _motion_gaps(sent, winner, truth, person)
    wrong = winner[person] != truth[person]
    soft = np.asarray(jax.nn.softmax(logits, -1))
    composed = np.einsum("nhwc,nchwi->nhwi", soft, sent)  # where the soft flow sends each cell
    own = np.take_along_axis(sent, truth[:, None, ..., None], 1)[:, 0]
    flow_error = np.linalg.norm(composed - own, axis=-1)[person]
    still_error = np.linalg.norm(sent[:, 0] - own, axis=-1)[person]
    print(
        f"the learned flow sends person cells a median {np.median(flow_error):.2f} px from "
        f"where their own limb's motion does (no motion: {np.median(still_error):.2f} px); "
        f"within 1 px: {np.mean(flow_error <= 1.0):.0%}, within 2 px: "
        f"{np.mean(flow_error <= 2.0):.0%} (no motion: {np.mean(still_error <= 1.0):.0%}, "
        f"{np.mean(still_error <= 2.0):.0%})"
    )
    print(
        f"person cells off their own limb: their winner's motion sends them a median "
        f"{np.median(to_winner[wrong]):.2f} px from where their own limb's does (the nearest "
        f"other motion: {np.median(to_nearest[wrong]):.2f} px); own limb or a motion within "
        f"1 px of it: {np.mean(to_winner <= 1.0):.0%} "
        f"(within 2 px: {np.mean(to_winner <= 2.0):.0%})"
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
