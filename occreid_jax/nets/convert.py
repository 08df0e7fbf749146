"""Converts PyTorch checkpoints (ImageNet ResNets, COCO HRNets) into flax variables.

Supported architectures (`ARCHS`) and the released files they read:
    resnet50         torchvision `resnet50-*.pth`                -> nets.resnet.ResNet50
    resnet50_ibn_a   IBN-Net `resnet50_ibn_a-d9d0bb7b.pth`       -> nets.resnet.ResNet50IBNa
    hrnet_w32        `pose_hrnet_w32_256x192.pth` (COCO)         -> nets.hrnet.HRNetW32
    hrnet_w48        `pose_hrnet_w48_256x192.pth` (COCO)         -> nets.hrnet.HRNetW48

The ResNets are built with last stride 1 (Re-ID): [B, H, W, 3] -> [B, H/16, W/16, 2048];
the HRNets give heatmaps [B, H/4, W/4, 17]. Inputs are NHWC RGB normalised with the
ImageNet mean/std, as in PyTorch.

Files are read with `torch.load(..., weights_only=True)` only: a checkpoint that holds
anything but tensors and plain containers is refused, never executed. Accepted: a bare state
dict, or one under a top-level "state_dict" / "model" entry; a `module.` prefix
(DataParallel); `num_batches_tracked` counters (dropped); the ResNet `fc.*` classifier
(dropped). Every flax parameter is named after its torch key (see the tables in
`nets/resnet.py` and `nets/hrnet.py`), so the mapping is computed from the flax tree.

Command line (writes an orbax checkpoint that `load_variables` reads back):

    python -m occreid_jax.nets.convert resnet50_ibn_a resnet50_ibn_a-d9d0bb7b.pth ~/weights/ibn_a
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from occreid_jax.errors import UserError
from occreid_jax.nets.hrnet import HRNetW32, HRNetW48
from occreid_jax.nets.resnet import ResNet50, ResNet50IBNa

ARCHS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: ResNet50(last_stride=1),
    "resnet50_ibn_a": lambda: ResNet50IBNa(last_stride=1),
    "hrnet_w32": HRNetW32,
    "hrnet_w48": HRNetW48,
}
META_FILE = "convert.json"  # Next to the orbax `variables/` folder written by `save`.
VARIABLES_DIR = "variables"
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_TO_TORCH = {"mean": "running_mean", "var": "running_var"}
_MAX_LISTED = 5


def build(arch: str) -> nn.Module:
    """The flax module of `arch` (float32); raises UserError for an unknown name."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")
    return ARCHS[arch]()


def abstract_variables(arch: str) -> dict:
    """Shapes/dtypes of the variables of `arch` ({"params", "batch_stats"}), nothing computed."""
    module = build(arch)
    dummy = jnp.zeros((1, 64, 32, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, train=False))


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The torch state-dict key of a flax leaf, e.g.
    ("params", ("stage2_0", "fuse_layers_1_0_0", "conv", "kernel")) ->
    "stage2.0.fuse_layers.1.0.0.0.weight"."""
    parts = []
    for name in path[:-1]:
        if name in ("downsample_conv", "downsample_bn"):  # resnet.Bottleneck's shortcut.
            parts += ["downsample", "0" if name == "downsample_conv" else "1"]
        elif name in ("conv", "bn"):  # hrnet.ConvBN = Sequential(conv, bn[, relu]).
            parts.append("0" if name == "conv" else "1")
        else:  # "layer1_0" -> "layer1.0", "fuse_layers_1_0_0" -> "fuse_layers.1.0.0".
            match = re.fullmatch(r"(.*?)((?:_\d+)*)", name)
            parts.append(match.group(1))
            parts += [d for d in match.group(2).split("_") if d]
    table = _STAT_TO_TORCH if collection == "batch_stats" else _LEAF_TO_TORCH
    return ".".join([*parts, table[path[-1]]])


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # A torch tensor (possibly bfloat16/float16).
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _describe(keys: set[str], shapes: Mapping[str, tuple]) -> str:
    """Which supported architecture a set of torch keys looks like ("" if none)."""
    if "transition1.0.0.weight" in keys:
        width = shapes["transition1.0.0.weight"][0]
        return f"hrnet_w{width}"
    blocks = []
    for layer in range(1, 5):
        found = {k.split(".")[1] for k in keys if k.startswith(f"layer{layer}.")}
        blocks.append(len(found))
    if all(blocks):
        if "layer1.0.conv3.weight" not in keys:
            return f"a basic-block ResNet with {tuple(blocks)} blocks (ResNet-18/34)"
        if tuple(blocks) != (3, 4, 6, 3):
            return f"a bottleneck ResNet with {tuple(blocks)} blocks, not ResNet-50"
        return "resnet50_ibn_a" if "layer1.0.bn1.IN.weight" in keys else "resnet50"
    return ""


def _clean(arch: str, state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drops wrappers, `module.` prefixes, counters and the ResNet classifier."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
    out = {}
    for key, value in state_dict.items():
        key = str(key).removeprefix("module.")
        if key.endswith("num_batches_tracked") or (arch.startswith("resnet") and key[:3] == "fc."):
            continue
        if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
            raise UserError(
                f"entry {key!r} of the checkpoint is a {type(value).__name__}, not a tensor; "
                "pass a file saved with torch.save(model.state_dict(), path)"
            )
        out[key] = _to_numpy(value)
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_LISTED])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _MAX_LISTED else ''})"


def convert_state_dict(arch: str, state_dict: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """Converts an in-memory PyTorch state dict (tensors or numpy arrays) for `arch`.

    Returns:
      (module, variables) with variables = {"params", "batch_stats"} of float32 jax arrays;
      conv kernels OIHW -> HWIO, BN weight -> scale, running_mean/var -> batch_stats mean/var.

    Raises:
      UserError: unknown arch, a checkpoint of another architecture, or keys that do not
        match (listed by torch name, with counts).
    """
    module = build(arch)
    reference = abstract_variables(arch)
    weights = _clean(arch, state_dict)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    looks_like = _describe(set(weights), shapes)
    if looks_like and looks_like != arch:
        raise UserError(
            f"the checkpoint was given as {arch} but this looks like {looks_like}; "
            f"pass the matching architecture ({', '.join(ARCHS)})"
        )

    targets = {}  # torch key -> (collection, flax path, shape)
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(reference[collection]).items():
            targets[torch_key(collection, path)] = (collection, path, leaf.shape)
    missing = [k for k in targets if k not in weights]
    unexpected = [k for k in weights if k not in targets]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        raise UserError(
            f"the checkpoint does not match {arch}: {'; '.join(problems)}; "
            f"pass an original {arch} checkpoint (state dict of the released model)"
        )

    flat: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, shape) in targets.items():
        value = weights[key]
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if value.shape != shape:
            raise UserError(
                f"the checkpoint does not match {arch}: {key} has shape "
                f"{tuple(weights[key].shape)}, expected one that converts to {shape}; "
                "pass the matching architecture"
            )
        flat[collection][path] = jnp.asarray(value, jnp.float32)
    variables = {c: traverse_util.unflatten_dict(v) for c, v in flat.items()}
    return module, variables


def read_torch_file(path: str) -> Mapping[str, Any]:
    """Loads a .pth with `torch.load(weights_only=True)`; never runs code from the file."""
    try:
        import torch
    except ImportError as error:
        raise UserError(
            "reading a .pth checkpoint needs PyTorch; install the torch extra: "
            "pip install -e '.[torch]'"
        ) from error
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint file at {path}; check the path")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Weights only load failed" in text and "Unsupported operand" not in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" (it names {found.group(1)})" if found else ""
            raise UserError(
                f"refused to load {path}: it holds Python objects besides tensors{what}, and "
                "checkpoints are only read with weights_only=True so that they cannot run "
                "code; re-save it with torch.save(model.state_dict(), path)"
            ) from error
        raise UserError(
            f"could not read {path} as a PyTorch checkpoint (not a torch.save file)"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else "empty?"
        raise UserError(f"could not read {path} as a PyTorch checkpoint ({first})") from error
    if not isinstance(loaded, Mapping):
        raise UserError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; "
            "re-save it with torch.save(model.state_dict(), path)"
        )
    return loaded


def convert_checkpoint(arch: str, path: str) -> tuple[nn.Module, dict]:
    """Reads a PyTorch checkpoint file and converts it (see `convert_state_dict`).

    `module.apply(variables, images, train=False)` on [B, H, W, 3] ImageNet-normalised images
    gives [B, H/16, W/16, 2048] features (ResNets, last stride 1) or [B, H/4, W/4, 17]
    heatmaps (HRNets).
    """
    build(arch)  # Unknown names fail before reading the file.
    return convert_state_dict(arch, read_torch_file(path))


def save(arch: str, variables: dict, directory: str) -> None:
    """Writes `variables` as an orbax checkpoint in `directory/variables` plus
    `directory/convert.json` ({"arch": ...}); `directory` must not exist yet."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.path.expanduser(directory))
    if os.path.exists(directory):
        raise UserError(f"{directory} already exists; choose a new destination or remove it")
    os.makedirs(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, VARIABLES_DIR), variables)
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({"arch": arch, "format": 1}, f)


def _restore(arch: str, directory: str) -> dict:
    import orbax.checkpoint as ocp

    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_path):
        raise UserError(
            f"{directory} is not a converted checkpoint (no {META_FILE}); "
            "write one with: python -m occreid_jax.nets.convert ARCH SRC.pth DST"
        )
    with open(meta_path) as f:
        saved_arch = json.load(f).get("arch")
    if saved_arch != arch:
        raise UserError(
            f"{directory} holds {saved_arch} weights but {arch} was asked for; "
            "point the config at a checkpoint of the right architecture"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            os.path.join(directory, VARIABLES_DIR), abstract_variables(arch)
        )
    return jax.tree.map(jnp.asarray, restored)


def load_variables(arch: str, path: str) -> dict:
    """Pretrained variables {"params", "batch_stats"} of `arch` from a PyTorch .pth file or a
    directory written by `python -m occreid_jax.nets.convert` (what `model.backbone_init` and
    `pose.init` may point at)."""
    build(arch)
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return _restore(arch, path)
    if not os.path.exists(path):
        raise UserError(
            f"no pretrained weights at {path}; give a .pth file or a directory written by "
            "python -m occreid_jax.nets.convert"
        )
    return convert_checkpoint(arch, path)[1]


USAGE = f"usage: python -m occreid_jax.nets.convert {{{','.join(ARCHS)}}} SRC.pth DST"


def main(argv: list[str]) -> int:
    """CLI entry point: convert SRC.pth of ARCH into an orbax checkpoint at DST."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__.strip().split("\n\n")[0])
        return 0
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    arch, source, destination = argv
    try:
        build(arch)
        if os.path.exists(os.path.expanduser(destination)):
            raise UserError(f"{destination} already exists; choose a new destination")
        _, variables = convert_checkpoint(arch, source)
        save(arch, variables, destination)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    print(
        f"wrote {arch} ({count:,} parameters) from {source} to "
        f"{os.path.abspath(os.path.expanduser(destination))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
