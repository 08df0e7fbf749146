"""Where keypoint heatmaps come from (`config.pose.source`), and the frozen pose net.

  none          the model reads no heatmaps (the baseline)
  ground_truth  the dataset's own heatmaps (the synthetic benchmark ships them)
  precomputed   a `HeatmapStore` written by `--mode=heatmaps` with the converted HRNet
  online        the frozen HRNet runs inside the train step, in inference mode (BatchNorm
                with running statistics; the released Pirt left it in train mode, a defect)

Precomputed and ground-truth heatmaps follow the image through flips and crops but not through
random erasing (the released Pirt runs its pose net after erasing; `online` does too).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections

from occreid_jax.data import datasets
from occreid_jax.data.heatmap_store import HeatmapStore
from occreid_jax.distributed import AXIS, replicate
from occreid_jax.errors import UserError

SOURCES = ("none", "ground_truth", "precomputed", "online")
POSE_NETS = ("hrnet_w32", "hrnet_w48")


def check(config: ml_collections.ConfigDict) -> None:
    """One-line errors for bad `config.pose` values, before any work starts."""
    pose = config.pose
    if pose.source not in SOURCES:
        raise UserError(f"unknown pose.source {pose.source!r}; use one of {', '.join(SOURCES)}")
    if pose.source in ("precomputed", "online") and pose.net not in POSE_NETS:
        raise UserError(f"unknown pose.net {pose.net!r}; use one of {', '.join(POSE_NETS)}")
    if pose.source == "ground_truth" and config.data.name != "synthetic":
        raise UserError(
            f"{config.data.name} ships no ground-truth heatmaps; set --config.pose.source="
            "precomputed (after --mode=heatmaps) or online"
        )


def load_pose_net(config: ml_collections.ConfigDict):
    """(module, variables) of the frozen pose net `pose.net` from `pose.init`."""
    from occreid_jax.nets import convert

    if not config.pose.init:
        raise UserError(
            f"pose.init is empty; point --config.pose.init at the COCO {config.pose.net} "
            f"weights (pose_{config.pose.net}_256x192.pth, or a folder converted by "
            "python -m occreid_jax.nets.convert)"
        )
    return convert.build(config.pose.net), convert.load_variables(config.pose.net, config.pose.init)


def store(config: ml_collections.ConfigDict, dataset: str, builder_config: str) -> HeatmapStore:
    """The heatmap store of one dataset for the configured pose net and input size.

    Default location: `<data_dir>/heatmaps/<dataset>-<builder config>-<pose net>-<H>x<W>`.
    """
    height, width = config.data.image_size
    name = f"{dataset}-{builder_config or 'default'}-{config.pose.net}-{height}x{width}"
    root = config.pose.store or os.path.join(
        datasets.default_data_dir(config.data.data_dir), "heatmaps", name
    )
    return HeatmapStore(root, config.pose.net, (height, width))


def parallel_pose_fn(module, variables):
    """Normalised images [D, b, H, W, 3] -> heatmaps [D, b, H/4, W/4, 17], in inference mode.

    The weights go in as a broadcast argument (placed on the devices once), not as constants
    closed over by the mapped function.
    """
    mapped = jax.pmap(
        functools.partial(module.apply, train=False), axis_name=AXIS, in_axes=(None, 0)
    )
    return functools.partial(mapped, replicate(variables))
