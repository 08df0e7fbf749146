"""What the keypoint-to-joint error of MAT's `parts` record can reach, and what a run's
keypoints carry, on a dataset with joints (the synthetic benchmark).

The record's `keypoint_joint_error` (`occreid_jax/probes/landmarks.py`) fits a linear map from
the learned keypoints to the 17 joints on the report's training groups and measures it on the
gallery, as a ratio to a fixed template's error. This prints that ratio for oracle keypoints,
the exact centroids of joint groups (the body's centre alone, head / upper body / legs, the
6 limbs, the upper body with arms and the four leg segments, the 10 parts of
`model.keypoints="heatmaps"`, every joint), with Gaussian noise of a
few hundredths of the image height. With --workdir it adds the run's own keypoints (MAT's on
f_g too, where the run keeps them), alone and with the exact body centre beside them: keypoints
that follow the limbs gain on the centre alone; keypoints that carry only where the person
stands do not.

  python -m benchmarks.keypoint_oracle --config=configs/mat.py:synthetic
  python -m benchmarks.keypoint_oracle --config=configs/mat.py:synthetic --workdir=runs/mat \
      --groups=256      # the run's config flags as trained; 1,024 images to fit the map
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from occreid_jax.data import datasets
from occreid_jax.errors import UserError
from occreid_jax.nets.mat_heads import COCO_GROUPS
from occreid_jax.probes import flow_probe, landmarks
from occreid_jax.probes.reference_flows import to_unit
from occreid_jax.training.run import Run

_CONFIG = config_flags.DEFINE_config_file("config", None, "MAT config file and variant.")
_WORKDIR = flags.DEFINE_string("workdir", "", "run whose latest checkpoint gives keypoints")
_GROUPS = flags.DEFINE_integer(
    "groups", flow_probe.REPORT_GROUPS, "training groups the map is fitted on (the record's)"
)
_NOISE = flags.DEFINE_list("noise", ["0", "0.005", "0.01", "0.02"], "noise std, image heights")

BODY = landmarks.BODY_CENTRE
LAYOUTS = {
    "body centre": BODY,
    "head, upper body, legs": COCO_GROUPS[3],
    "head, arms, hips, legs": COCO_GROUPS[6],
    # The regions the image L_fc prices on side-view walks (README, "the loss hardly prices
    # most limbs"): the torso with head and arms, each thigh and shin.
    "upper body with arms, thighs, shins": (
        tuple(range(13)),
        (11, 13),
        (13, 15),
        (12, 14),
        (14, 16),
    ),
    "10 parts": COCO_GROUPS[10],
    "17 joints": COCO_GROUPS[17],
}
LEARNED = {"keypoints": "the run's keypoints", "encoder_keypoints": "MAT's keypoints on f_g"}


def main(argv):
    del argv
    config = _CONFIG.value
    run = Run(config, _WORKDIR.value or "/tmp/keypoint_oracle")
    split = datasets.load_split(run.builder, "train", with_heatmaps=False)
    groups = flow_probe.collect_groups(config, split, _GROUPS.value)
    gallery = run.eval_splits["gallery"]
    if groups.joints is None or gallery.keypoints is None:
        raise UserError("the keypoint oracle needs ground-truth joints: use the synthetic dataset")
    size = config.data.image_size
    aspect = size[1] / size[0]
    subset, gallery_images, _ = flow_probe.gallery_subset(gallery, size)
    train = (groups.joints.reshape(-1, 17, 2), groups.visible.reshape(-1, 17))
    held_out = (to_unit(subset.keypoints, size), subset.keypoints[..., 2] > 0)
    noises = [float(n) for n in _NOISE.value]
    template = landmarks.centroid_oracle(train, held_out, aspect, BODY)["template_joint_error"]
    print(
        f"keypoint-to-joint error / the template's ({template:.4f}), map fitted on "
        f"{len(train[0])} training images, measured on {len(held_out[0])} gallery images"
    )
    print(f"{'oracle keypoints':40s}" + "".join(f"  noise {n:<6g}" for n in noises))
    for name, layout in LAYOUTS.items():
        ratios = [
            landmarks.centroid_oracle(train, held_out, aspect, layout, noise)[
                "keypoint_joint_error"
            ]
            / template
            for noise in noises
        ]
        print(f"{name:40s}" + "".join(f"  {r:12.2f}" for r in ratios))
    if _WORKDIR.value:
        _learned_rows(run, groups, gallery_images, train, held_out, aspect, template)


def _learned_rows(run, groups, gallery_images, train, held_out, aspect, template):
    """Prints the run's keypoints' ratio, alone and beside the exact body centre."""
    model, _, state = run.restored_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    train_aux = flow_probe.model_outputs(
        model.apply, variables, groups.images.reshape(-1, *groups.images.shape[2:])
    )
    gallery_aux = flow_probe.model_outputs(model.apply, variables, gallery_images)
    found = [key for key in LEARNED if key in train_aux]
    if not found:
        raise UserError(f"the run in {run.workdir} has no learned keypoints (model.keypoints)")
    print(f"\nlearned keypoints of {run.workdir}")
    print(f"{'':40s}  alone  with the exact body centre")
    for key in found:
        ratios = []
        for centre in (False, True):
            fit, measured = train_aux[key], gallery_aux[key]
            if centre:
                fit = np.concatenate([fit, landmarks.group_centroids(train[0], BODY)], 1)
                measured = np.concatenate(
                    [measured, landmarks.group_centroids(held_out[0], BODY)], 1
                )
            errors = landmarks.joint_errors((fit, *train), (measured, *held_out), aspect)
            ratios.append(errors["keypoint_joint_error"] / template)
        print(f"{LEARNED[key]:40s}  {ratios[0]:5.2f}  {ratios[1]:5.2f}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
