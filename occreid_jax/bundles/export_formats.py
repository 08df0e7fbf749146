"""Portable exports of a bundle's embedding function, loadable without occreid_jax.

`--mode=export --format=jax_export` adds `model.jax_export` to the bundle folder: the embedding
function serialized as StableHLO by `jax.export`, with the weights inside and a symbolic batch
dimension. Loading it needs jax alone:

    import jax, numpy as np
    with open("runs/demo/export/model.jax_export", "rb") as f:
        embed = jax.export.deserialize(bytearray(f.read()))
    images = np.zeros((5, 256, 128, 3), np.float32)  # RGB 0..255 at the bundle's size
    features = embed.call(images)                    # dict: features["global"] [5, D]

`--format=savedmodel` adds `savedmodel/`, a TensorFlow SavedModel made with jax2tf, loadable
with tensorflow alone: `tf.saved_model.load(path).embed(images)` (same dict). Pose-guided
models (Pirt) take keypoint heatmaps [B, H/4, W/4, 17] in [0, 1] as a second input. The
normalisation is inside: inputs are raw pixels, as for `bundle.embed`. The flip test and the
matching rule are not: `model.json` says whether the model was evaluated with them.

`--format=onnx` adds `model.onnx` (ONNX opset 18, the weights inside, a symbolic batch
dimension "batch"), written by our own translator (`onnx_export.py`). It needs the onnx extra
(`pip install -e ".[onnx]"`); loading it needs onnxruntime alone:

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("runs/demo/export/model.onnx")
    names = [output.name for output in session.get_outputs()]  # the feature keys: "global", ...
    images = np.zeros((5, 256, 128, 3), np.float32)             # RGB 0..255, any batch size
    features = dict(zip(names, session.run(None, {"images": images})))  # features["global"] [5, D]

Pirt's file has a second input, "heatmaps" [B, H/4, W/4, 17].
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from occreid_jax.bundles import atomic
from occreid_jax.bundles.gallery_search import needs_heatmaps
from occreid_jax.errors import UserError

FORMATS = ("msgpack", "jax_export", "savedmodel", "onnx")
JAX_EXPORT_FILE = "model.jax_export"
SAVEDMODEL_DIR = "savedmodel"
ONNX_FILE = "model.onnx"
INPUT_NAMES = ("images", "heatmaps")  # the ONNX file's inputs
HEATMAP_STRIDE = 4  # heatmaps at 1/4 of the input size (data.augment.HEATMAP_STRIDE)
NUM_JOINTS = 17  # COCO keypoints


def input_shapes(bundle, batch) -> list[tuple]:
    """Input shapes of the embedding function: images, and heatmaps for pose-guided models."""
    height, width = bundle.image_size
    shapes = [(batch, height, width, 3)]
    if needs_heatmaps(bundle.model_name, bundle.model_kwargs):
        shapes.append((batch, height // HEATMAP_STRIDE, width // HEATMAP_STRIDE, NUM_JOINTS))
    return shapes


def _embed_fn(bundle):
    """(images, [heatmaps]) -> dict of float32 features, the weights as constants."""

    def embed(images, *heatmaps):
        return bundle.embed(images, *heatmaps)

    return embed


def write_jax_export(bundle, folder: str) -> str:
    """Writes `folder/model.jax_export` (serialized `jax.export.Exported`); returns its path."""
    (batch,) = jax.export.symbolic_shape("batch")
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in input_shapes(bundle, batch)]
    exported = jax.export.export(jax.jit(_embed_fn(bundle)))(*specs)
    return atomic.write_file(os.path.join(folder, JAX_EXPORT_FILE), bytes(exported.serialize()))


def write_savedmodel(bundle, folder: str) -> str:
    """Writes `folder/savedmodel` (TensorFlow SavedModel via jax2tf); returns its path."""
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as error:
        raise UserError(
            f"--format=savedmodel needs tensorflow and jax2tf ({error}); use --format=jax_export"
        ) from None
    shapes = input_shapes(bundle, None)
    polymorphic = ["(b, " + ", ".join(str(d) for d in s[1:]) + ")" for s in shapes]
    converted = jax2tf.convert(
        _embed_fn(bundle), polymorphic_shapes=polymorphic, with_gradient=False
    )
    module = tf.Module()
    module.embed = tf.function(
        converted,
        autograph=False,
        input_signature=[tf.TensorSpec(s, tf.float32) for s in shapes],
    )
    path = os.path.join(folder, SAVEDMODEL_DIR)
    staging = atomic.staging_folder(path)  # written beside, swapped in whole
    tf.saved_model.save(module, staging)
    atomic.replace_folder(staging, path)
    return path


def write_onnx(bundle, folder: str, *, fold: bool = True) -> str:
    """Writes `folder/model.onnx` (`onnx_export.to_onnx`, symbolic batch); returns its path.

    Inputs "images" [batch, H, W, 3] (and "heatmaps" [batch, H/4, W/4, 17] for Pirt), float32;
    one float32 output per feature key. `fold`: precompute what depends on the weights alone.
    """
    try:
        import onnx  # noqa: F401  (the translator needs it: a clear line first)
    except ImportError as error:
        reason = str(error).splitlines()[0] if str(error) else "onnx is not installed"
        raise UserError(
            f'--format=onnx needs the onnx package ({reason}); pip install -e ".[onnx]"'
        ) from None
    from occreid_jax.bundles import onnx_export

    (batch,) = jax.export.symbolic_shape("batch")
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in input_shapes(bundle, batch)]
    names = INPUT_NAMES[: len(specs)]
    model = onnx_export.to_onnx(_embed_fn(bundle), specs, names, fold=fold)
    return atomic.write_file(os.path.join(folder, ONNX_FILE), model.SerializeToString())


def write(bundle_path: str, export_format: str) -> str:
    """Adds the portable file of `export_format` to the bundle at `bundle_path`; returns it."""
    from occreid_jax.bundles import export

    if export_format not in FORMATS:
        raise UserError(f"unknown --format={export_format}; use one of {', '.join(FORMATS)}")
    if export_format == "msgpack":
        return bundle_path
    bundle = export.load(bundle_path)
    if export_format == "jax_export":
        return write_jax_export(bundle, bundle_path)
    if export_format == "onnx":
        return write_onnx(bundle, bundle_path)
    return write_savedmodel(bundle, bundle_path)
