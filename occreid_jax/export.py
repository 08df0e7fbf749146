"""Self-contained inference bundles: write one from a trained model, load it anywhere.

A bundle is a folder with two files:
  model.json          model name and constructor arguments, input size, normalisation,
                      feature names and the matching settings, format version;
  variables.msgpack   params and batch statistics (flax msgpack, no pickle).

`load(path)` needs neither the training code nor a config file:

  bundle = occreid_jax.export.load("runs/demo/export")
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
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax import families
from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD
from occreid_jax.errors import UserError

FORMAT = "occreid_jax.export/1"


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
        from occreid_jax import gallery_search

        return gallery_search.embed_files(self, paths, **options)

    def search(self, query_paths, gallery_paths, top_k: int = 10, **options):
        """Each query's top-k gallery files by the model's matching rule
        (`gallery_search.search`)."""
        from occreid_jax import gallery_search

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
    """Writes a bundle folder at `path` and returns the path."""
    os.makedirs(path, exist_ok=True)
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
    with open(os.path.join(path, "variables.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(variables))
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump(description, f, indent=2)
    return path


def _read_description(path: str) -> dict:
    description_file = os.path.join(path, "model.json")
    if not os.path.isfile(description_file):
        raise UserError(
            f"{path} is not an export bundle (no model.json); write one with --mode=export"
        )
    with open(description_file) as f:
        description = json.load(f)
    if description.get("format") != FORMAT:
        raise UserError(
            f"{path} holds bundle format {description.get('format')!r}, this version reads "
            f"{FORMAT!r}; re-export it with this version"
        )
    return description


def load(path: str) -> Bundle:
    """Loads a bundle written by `write` (or `--mode=export`) and jits its embedding function."""
    description = _read_description(path)
    with open(os.path.join(path, "variables.msgpack"), "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    model = families.build_model(description["model"], **description["model_kwargs"])
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
    embed_normalized = functools.partial(apply_normalized, variables)
    embed = functools.partial(apply_pixels, variables)

    return Bundle(
        model_name=description["model"],
        model_kwargs=description["model_kwargs"],
        image_size=tuple(description["image_size"]),
        matching=description["matching"],
        variables=jax.tree.map(np.asarray, variables),
        embed=embed,
        embed_normalized=embed_normalized,
    )
