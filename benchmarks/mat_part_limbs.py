"""Which limbs a trained MAT's parts cover, on held-out synthetic images with joints.

For a run whose keypoints come from pose heatmaps (`model.keypoints=heatmaps`), on the first
256 gallery images (eval mode, fed their heatmaps as retrieval feeds them, so the keypoint
prior shapes the segmentation), this prints the `parts` record's gallery figures. Where the
heatmaps are grouped by limb (`model.keypoint_groups=limbs`) part k moves in L_fc's flow with
limb k, so a segmentation that found the limbs gives each person pixel to its own limb's part:
it then also prints, over the cells of the ground-truth limb map at the segmentation's
resolution (`probes/limb_flows.part_map`, the segmentation landscape's labels), the share of the
person's cells whose most probable channel is the background, their own limb's part, or
another part, and for each limb where its cells went.

  python -m benchmarks.mat_part_limbs --config=configs/mat.py:synthetic --workdir=runs/W \
      [the run's config flags as trained]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from occreid_jax.errors import UserError
from occreid_jax.nets.mat_heads import KEYPOINT_GROUPS
from occreid_jax.probes import flow_probe, limb_flows
from occreid_jax.probes.reference_flows import part_statistics
from occreid_jax.training.run import Run

_CONFIG = config_flags.DEFINE_config_file("config", None, "MAT config file and variant.")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run whose latest checkpoint is measured")


def main(argv):
    del argv
    config = _CONFIG.value
    if config.model.keypoints != "heatmaps":
        raise UserError(
            "this measures runs whose keypoints come from pose heatmaps: pass the run's flags, "
            "--config.model.keypoints=heatmaps (and --config.model.keypoint_groups=limbs)"
        )
    run = Run(config, _WORKDIR.value)
    gallery = run.eval_splits["gallery"]
    if gallery.keypoints is None or gallery.heatmaps is None:
        raise UserError("the gallery has no joints or heatmaps: use the synthetic benchmark")
    model, _, state = run.restored_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    size = tuple(config.data.image_size)
    subset, images, heatmaps = flow_probe.gallery_subset(gallery, size, with_heatmaps=True)
    aux = flow_probe.model_outputs(model.apply, variables, images, heatmaps=heatmaps)
    segmentation = aux["segmentation"]
    stats = part_statistics(segmentation, aux.get("keypoints"))
    print(
        f"{run.workdir}, step {int(state.step)}, {len(images)} gallery images: parts per image "
        f"{stats['parts_per_image']:.2f}, across the gallery {stats['parts_overall']}, part "
        f"confidence {stats['part_confidence']:.2f}"
    )
    if config.model.keypoint_groups != "limbs":  # the parts are not tied to limbs
        return
    groups = KEYPOINT_GROUPS["limbs"][config.model.num_parts]
    labels = limb_flows.cell_labels(subset.keypoints, size, segmentation.shape[1:3], groups)
    shares = limb_flows.limb_shares(segmentation, labels)
    print(
        f"the person's cells: background {shares['background']:.0%}, their own limb's part "
        f"{shares['own']:.0%}, another part {shares['other']:.0%}"
    )
    names = (
        limb_flows.LIMB_NAMES
        if len(groups) == 10
        else [f"limb {k + 1}" for k in range(len(groups))]
    )
    print(f"{'limb':16s} {'cells':>6s}  background  own  most taken by")
    for k, row in enumerate(shares["per_limb"]):
        taken = int(np.argmax(row))
        where = "background" if taken == 0 else names[taken - 1]
        count = int((labels == k + 1).sum())
        own = f"{row[0]:10.0%}  {row[k + 1]:3.0%}"
        print(f"{names[k]:16s} {count:6d}  {own}  {where} ({row[taken]:.0%})")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
