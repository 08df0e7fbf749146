"""A pose net stored inside an export bundle, so that a pose-guided bundle (Pirt) runs alone.

`--mode=export --config.pose.init=pose_hrnet_w48_256x192.pth` on a model that reads keypoint
heatmaps adds `pose/` to the bundle folder:

    pose/pose.json          {"net": "hrnet_w48"}
    pose/variables.msgpack  the converted pose net's params and batch statistics (no pickle)

`python -m occreid_jax.search` then needs no `--pose`; from Python, pass
`pose="EXPORT_DIR/pose"` to `bundle.search` / `bundle.embed_files`.
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax

from occreid_jax.bundles import atomic
from occreid_jax.errors import UserError

FOLDER = "pose"
DESCRIPTION = "pose.json"
VARIABLES = "variables.msgpack"


def needs_heatmaps(model_name: str, model_kwargs) -> bool:
    """Whether the model reads keypoint heatmaps at test time (Pirt's pose branch, MAT's
    `keypoints="heatmaps"` variant)."""
    if model_name == "pirt":
        return bool(model_kwargs.get("use_pose", True))
    return model_kwargs.get("keypoints") == "heatmaps"


def is_pose_folder(path: str) -> bool:
    """True if `path` is a pose folder written by `write`."""
    return os.path.isfile(os.path.join(path, DESCRIPTION))


def find(bundle_path: str) -> str:
    """The bundle's pose folder, or "" when it has none."""
    folder = os.path.join(bundle_path, FOLDER)
    return folder if is_pose_folder(folder) else ""


def write(bundle_path: str, pose_net: str, variables) -> str:
    """Writes `bundle_path/pose/` with the pose net's name and variables; returns the folder."""
    folder = os.path.join(bundle_path, FOLDER)
    staging = atomic.staging_folder(folder)  # written beside, swapped in whole
    state = jax.device_get(flax.serialization.to_state_dict(variables))
    with open(os.path.join(staging, VARIABLES), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(state))
    with open(os.path.join(staging, DESCRIPTION), "w") as f:
        json.dump({"net": pose_net}, f)
    atomic.replace_folder(staging, folder)
    return folder


def load(folder: str):
    """(flax module, variables) of the pose net stored in `folder`."""
    from occreid_jax.nets import convert

    with open(os.path.join(folder, DESCRIPTION)) as f:
        net = json.load(f).get("net", "")
    if net not in convert.ARCHS:
        raise UserError(f"{folder}/{DESCRIPTION} names pose net {net!r}; re-export the bundle")
    with open(os.path.join(folder, VARIABLES), "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    return convert.build(net), variables


def write_from_config(bundle_path: str, config) -> str:
    """Stores the configured pose net (`pose.net` from `pose.init`) in the bundle if its model
    reads heatmaps; returns the pose folder, or "" when the model needs none."""
    from occreid_jax.training import pose

    with open(os.path.join(bundle_path, "model.json")) as f:
        description = json.load(f)
    if not needs_heatmaps(description["model"], description["model_kwargs"]):
        return ""
    module, variables = pose.load_pose_net(config)
    del module
    return write(bundle_path, config.pose.net, variables)
