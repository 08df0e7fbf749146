"""Where does the image-reconstruction L_fc lead a segmentation that is free of any network?

On the (A, B) pairs of N training groups with ground-truth joints, with ground-truth part
motions (each of the K = 10 limb groups of `probes/limb_flows.py` moves by the mean shift of
its joints; identity Jacobians), this prints

  * the loss (`losses/mat.reconstruction_terms`, visibility map from the ground-truth parts)
    under no motion and under the ground-truth part map at `--stride`: a check that the loss
    rewards the right flow;
  * then optimises free per-pixel logits of A's segmentation at that stride (no network) by
    Adam from uniform, and reports every 50 steps the loss, the share of person pixels that
    went to the background, the share that went to their own limb group, and the parts that
    win per image.

If the free logits find parts where a trained MAT's segmentation falls to the background, the
trap is in the network, not in the loss (README, "The image-reconstruction signal").

  python -m benchmarks.mat_segmentation_landscape --config=configs/mat.py:synthetic \\
      --config.data.builder_config=tracklets_wide --groups=64
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from occreid_jax.data import datasets
from occreid_jax.errors import UserError
from occreid_jax.losses.mat import reconstruction_terms
from occreid_jax.probes import flow_probe, limb_flows
from occreid_jax.training.run import Run

_CONFIG = config_flags.DEFINE_config_file("config", None, "MAT config file and variant.")
_GROUPS = flags.DEFINE_integer("groups", 64, "identity groups (pairs) used")
_STRIDE = flags.DEFINE_integer("stride", 4, "stride of the segmentation (divides H and W)")
_STEPS = flags.DEFINE_integer("steps", 300, "Adam steps on the free logits")
_LR = flags.DEFINE_float("lr", 0.05, "Adam learning rate")

PARTS = 10


def _pair_arrays(config, num_groups: int, stride: int):
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

    keypoints = np.stack(
        [np.stack([joints[:, i][:, list(g)].mean(1) for g in parts], 1) for i in (0, 1)], 1
    ).reshape(-1, PARTS, 2)
    return jnp.asarray(images), coarse(0), jnp.asarray(coarse(1)), jnp.asarray(keypoints)


def main(argv):
    del argv
    config = _CONFIG.value
    if _GROUPS.value < 1 or _STRIDE.value < 1 or _STEPS.value < 0 or not _LR.value > 0:
        raise UserError("--groups, --stride and --lr must be positive, --steps >= 0")
    images, truth_a, seg_b, keypoints = _pair_arrays(config, _GROUPS.value, _STRIDE.value)
    jacobians = jnp.broadcast_to(jnp.eye(2), (len(keypoints), PARTS, 2, 2))

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
    optimizer = optax.adam(_LR.value)
    logits = jnp.zeros(truth_a.shape, jnp.float32)
    state = optimizer.init(logits)

    @jax.jit
    def step(logits, state):
        value, grad = jax.value_and_grad(lambda z: loss_of(jax.nn.softmax(z, -1)))(logits)
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(logits, updates), state, value

    truth = truth_a.argmax(-1)
    person = truth > 0
    for i in range(_STEPS.value + 1):
        logits, state, value = step(logits, state)
        if i % 50 == 0 or i == _STEPS.value:
            winner = np.asarray(jnp.argmax(logits, -1))
            parts = np.mean([len(set(w.ravel().tolist()) - {0}) for w in winner])
            print(
                f"step {i}: loss {float(value):.4f}, person pixels to background "
                f"{np.mean(winner[person] == 0):.0%}, to their own limb "
                f"{np.mean(winner[person] == truth[person]):.0%}, parts per image {parts:.1f}"
            )


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
