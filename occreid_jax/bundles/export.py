"""Self-contained inference bundles: write one from a trained model, load it anywhere.

A bundle is a folder with two files:
  model.json          model name and constructor arguments, input size, normalisation,
                      feature names and the matching settings, format version;
  variables.msgpack   params and batch statistics (flax msgpack, no pickle).

`load(path)` needs neither the training code nor a config file:

  bundle = occreid_jax.bundles.export.load("runs/demo/export")
  features = bundle.embed(images)   # images [B, H, W, 3] RGB 0..255 at bundle.image_size
  features["global"]                # [B, D] float32
  bundle.embed(images, heatmaps)    # pose-guided models (Pirt): heatmaps [B, H/4, W/4, 17]
  bundle.search("query_dir", "gallery_dir", top_k=10)  # image files of any size

`bundle.matching` holds the matching settings (metric, flip, and a model's own rule such as
Pirt's top_n / confidence); the family's `MatchingRule` turns the features into distances.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax import families
from occreid_jax.bundles import atomic
from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD
from occreid_jax.errors import UserError

if TYPE_CHECKING:
    import ml_collections

    from occreid_jax.training.run import Run

# The format name bundles carry since the first version (the module was occreid_jax/export.py
# then); unchanged so that every bundle written before still loads.
FORMAT = "occreid_jax.export/1"
DESCRIPTION, VARIABLES = "model.json", "variables.msgpack"
DESCRIPTION_KEYS = ("model", "model_kwargs", "image_size", "mean", "std", "matching")


@dataclasses.dataclass
class Bundle:
    """A loaded inference bundle.

    Attributes:
      model_name: the model's family name (`occreid_jax.families.FAMILIES`).
      model_kwargs: constructor arguments.
      image_size: (H, W) the model expects.
      matching: evaluation settings stored with the model (metric, flip, and the model's own
        matching rule's settings, `MatchingRule.stored_settings`).
      variables: {"params": ..., "batch_stats": ...}.
      embed: jitted (images [B, H, W, 3] RGB 0..255, heatmaps [B, H/4, W/4, 17] in [0, 1] or
        None) -> dict of [B, ...] float32 features. Pose-guided models (Pirt) need the
        heatmaps (e.g. from `--mode=heatmaps`, HRNet at the same input size).
      embed_normalized: the same on ImageNet-normalised images.
    """

    model_name: str
    model_kwargs: dict
    image_size: tuple[int, int]
    matching: dict
    variables: Any
    embed: Callable[[jax.Array], dict]
    embed_normalized: Callable[[jax.Array], dict]

    def embed_files(self, paths, **options):
        """Features of image files or folders of any size (`gallery_search.embed_files`)."""
        from occreid_jax.bundles import gallery_search

        return gallery_search.embed_files(self, paths, **options)

    def search(self, query_paths, gallery_paths, top_k: int = 10, **options):
        """Each query's top-k gallery files by the model's matching rule
        (`gallery_search.search`)."""
        from occreid_jax.bundles import gallery_search

        return gallery_search.search(self, query_paths, gallery_paths, top_k, **options)


def write(
    path: str,
    *,
    model_name: str,
    model_kwargs: dict,
    variables: Any,
    image_size: tuple[int, int],
    matching: dict,
) -> str:
    """Writes a bundle folder at `path` and returns the path.

    Atomic (`bundles/atomic.py`): the files go to a folder beside `path` that replaces it
    once complete (exchanged in one step on Linux), so `path` holds the older bundle or the
    new one at every instant of a crash; staging left by a killed export is removed by the
    next one.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} is a file, not a bundle folder; choose another --output")
    os.makedirs(parent, exist_ok=True)
    description = {
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": model_kwargs,
        "image_size": list(image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "matching": matching,
    }
    variables = jax.device_get(flax.serialization.to_state_dict(variables))
    staging = atomic.staging_folder(path)
    try:
        with open(os.path.join(staging, VARIABLES), "wb") as f:
            f.write(flax.serialization.msgpack_serialize(variables))
        with open(os.path.join(staging, DESCRIPTION), "w") as f:
            json.dump(description, f, indent=2)
        atomic.replace_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _read_description(path: str) -> dict:
    description_file = os.path.join(path, DESCRIPTION)
    if not os.path.isfile(description_file):
        raise UserError(
            f"{path} is not an export bundle (no {DESCRIPTION}); write one with --mode=export"
        )
    try:
        with open(description_file) as f:
            description = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{description_file} is not valid JSON ({error}); re-export the bundle"
        ) from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else None
        raise UserError(
            f"{path} holds bundle format {found!r}, this version reads "
            f"{FORMAT!r}; re-export it with this version"
        )
    missing = [key for key in DESCRIPTION_KEYS if key not in description]
    if missing:
        raise UserError(f"{description_file} lacks {', '.join(missing)}; re-export the bundle")
    return description


def _read_variables(path: str) -> dict:
    variables_file = os.path.join(path, VARIABLES)
    if not os.path.isfile(variables_file):
        raise UserError(f"{path} has no {VARIABLES}; re-export the bundle with --mode=export")
    with open(variables_file, "rb") as f:
        data = f.read()
    try:
        variables = flax.serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several types for cut or foreign data
        raise UserError(
            f"{variables_file} is truncated or not a flax msgpack file "
            f"({type(error).__name__}); re-export the bundle"
        ) from None
    if not isinstance(variables, dict) or "params" not in variables:
        raise UserError(f"{variables_file} holds no params; re-export the bundle")
    return variables


def _check_shapes(path: str, model, image_size: tuple[int, int], variables: dict) -> None:
    """Every saved array against the model's own (abstract) initialisation."""
    height, width = image_size
    images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    heatmaps = jax.ShapeDtypeStruct((1, height // 4, width // 4, 17), jnp.float32)
    expected = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), images, heatmaps=heatmaps
    )
    expected = flax.serialization.to_state_dict(expected)
    want = {k: v.shape for k, v in _flat(expected).items() if k[0] in variables}
    got = {k: np.shape(v) for k, v in _flat(variables).items()}
    wrong = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if wrong:
        first = wrong[0]
        raise UserError(
            f"the arrays in {path} do not fit the model its {DESCRIPTION} describes "
            f"({len(wrong)} differ, e.g. {'/'.join(first)}: saved {got.get(first)}, "
            f"model {want.get(first)}); re-export the bundle"
        )


def _flat(tree: Any, prefix: tuple = ()) -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, (*prefix, key)).items()}
    return {prefix: tree}


def _checked(fn: Callable, image_size: tuple[int, int]) -> Callable:
    """`fn(images, heatmaps=None)` that first checks the images are [B, H, W, 3] at the size."""

    @functools.wraps(fn)
    def embed(images, heatmaps=None):
        shape = tuple(np.shape(images))
        if len(shape) != 4 or shape[1:] != (*image_size, 3):
            raise UserError(
                f"the bundle embeds [B, {image_size[0]}, {image_size[1]}, 3] images, got "
                f"{list(shape)}; resize the images to {image_size[0]} x {image_size[1]}"
            )
        return fn(images, heatmaps)

    return embed


def load(path: str) -> Bundle:
    """Loads a bundle written by `write` (or `--mode=export`) and jits its embedding function.

    Raises:
        UserError: a missing or unreadable file, or saved arrays that do not fit the model.
    """
    description = _read_description(path)
    variables = _read_variables(path)
    try:
        model = families.build_model(description["model"], **description["model_kwargs"])
    except TypeError as error:
        raise UserError(
            f"{os.path.join(path, DESCRIPTION)} has bad model_kwargs ({error}); re-export it"
        ) from None
    image_size = tuple(description["image_size"])
    _check_shapes(path, model, image_size, variables)
    mean = jnp.asarray(description["mean"], jnp.float32)
    std = jnp.asarray(description["std"], jnp.float32)

    # The weights are arguments, not closed-over constants: XLA would otherwise fold every
    # parameter into the compiled program.
    @jax.jit
    def apply_normalized(variables, images, heatmaps=None):
        inputs = {} if heatmaps is None else {"heatmaps": jnp.asarray(heatmaps, jnp.float32)}
        embeddings, _ = model.apply(variables, images, train=False, **inputs)
        return jax.tree.map(lambda x: x.astype(jnp.float32), embeddings)

    @jax.jit
    def apply_pixels(variables, images, heatmaps=None):
        normalized = (jnp.asarray(images, jnp.float32) - mean) / std
        return apply_normalized(variables, normalized, heatmaps)

    variables = jax.device_put(variables)
    embed_normalized = _checked(functools.partial(apply_normalized, variables), image_size)
    embed = _checked(functools.partial(apply_pixels, variables), image_size)

    return Bundle(
        model_name=description["model"],
        model_kwargs=description["model_kwargs"],
        image_size=image_size,
        matching=description["matching"],
        variables=jax.tree.map(np.asarray, variables),
        embed=embed,
        embed_normalized=embed_normalized,
    )


def load_export(config: ml_collections.ConfigDict, run: Run, export_path: str):
    """(embed_batch, matching rule, config with the bundle's matching settings) of a bundle.

    An export is evaluated with the matching settings stored with it; with `pose.source`
    online its heatmaps come from the frozen pose net.
    """
    import ml_collections

    from occreid_jax.bundles.gallery_search import bundle_embedder

    bundle = load(export_path)
    if tuple(bundle.image_size) != tuple(config.data.image_size):
        raise UserError(
            f"the export takes {tuple(bundle.image_size)} images but data.image_size is "
            f"{tuple(config.data.image_size)}; pass --config.data.image_size to match"
        )
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in bundle.matching.items():
        config.eval[key] = value
    embed = bundle_embedder(bundle, run.online_pose_fn)
    return embed, families.get(bundle.model_name).matching, config
