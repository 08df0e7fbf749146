"""Where does the image-reconstruction L_fc lead a segmentation that is free of any network?

On the (A, B) pairs of N training groups with ground-truth joints, with ground-truth part
motions (each of the K = 10 limb groups of `probes/limb_flows.py` moves by the mean shift of
its joints, identity Jacobians; or, with `--motions=affine`, by the affine fitted to its
joints, `limb_flows.group_motions`, as probe v2 moves its limbs), this prints

  * the loss (`losses/mat.reconstruction_terms`, visibility map from the ground-truth parts)
    under no motion and under the ground-truth part map at `--stride`: a check that the loss
    rewards the right flow;
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

If the free logits find parts where a trained MAT's segmentation falls to the background, the
trap is in the network, not in the loss (README, "The image-reconstruction signal"); the
network rows say which network escapes it.

  python -m benchmarks.mat_segmentation_landscape --config=configs/mat.py:synthetic \\
      --config.data.builder_config=tracklets_wide --groups=64 [--segmenter=hourglass --lr=1e-3]
      [--motions=affine]
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
_MOTIONS = flags.DEFINE_enum(
    "motions", "translations", ["translations", "affine"], "each limb group's ground-truth motion"
)

PARTS = 10


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
        one_hot = limb_flows.one_hot(labels, PARTS + 1)
        return one_hot.reshape(
            num, height // stride, stride, width // stride, stride, PARTS + 1
        ).mean(axis=(2, 4))

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
    )


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
    images, truth_a, seg_b, keypoints, jacobians = _pair_arrays(
        config, _GROUPS.value, _STRIDE.value, _MOTIONS.value == "affine"
    )

    def loss_of(seg_a):
        seg = jnp.stack([seg_a, seg_b], 1).reshape(-1, *seg_a.shape[1:])
        terms = reconstruction_terms(images, seg, keypoints, jacobians, 2, "first", True)
        return jnp.mean(terms)

    background = np.zeros_like(truth_a)
    background[..., 0] = 1.0
    fixed_truth = jnp.stack([jnp.asarray(truth_a), seg_b], 1).reshape(-1, *truth_a.shape[1:])
    no_motion = jnp.mean(
        reconstruction_terms(
            images, fixed_truth, keypoints, jacobians, 2, "first", True,
            jnp.repeat(jnp.asarray(background), 2, axis=0),
        )
    )  # fmt: skip
    print(
        f"{_GROUPS.value} pairs, stride {_STRIDE.value}: no motion {float(no_motion):.4f}, "
        f"ground-truth parts {float(loss_of(jnp.asarray(truth_a))):.4f}"
    )
    images_a = images.reshape(-1, 2, *images.shape[1:])[:, 0]
    variables, logits_fn = _segmenter(_SEGMENTER.value, images_a, _STRIDE.value, _SEED.value)
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


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
