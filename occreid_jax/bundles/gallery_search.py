"""Search your own gallery with an export bundle: embed image files, then each query's top-k.

`embed_files` runs the evaluation's own feature extraction (`evaluation.features`) over image
files: the same decoding, bicubic resize to the bundle's input size, ImageNet normalisation and,
when the bundle was evaluated with it, the flip test. `top_k` ranks the gallery by the model's
own matching rule (Pirt's top-N rule, MAT's parts; else the global feature and the bundle's
metric) block by block within `memory_mib` (the block shapes of `evaluation.blocks`), keeping
only k candidates per query, so no [Q, G] matrix exists. Ties are broken by gallery index, as
the evaluation's ranking does.

Python:  bundle.embed_files(paths), bundle.search(query_paths, gallery_paths, top_k=10).
Command: python -m occreid_jax.search (writes ranks.csv, features.npz, pictures, index.html).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from occreid_jax import families
from occreid_jax.bundles.bundle_pose import needs_heatmaps
from occreid_jax.data import image_files
from occreid_jax.errors import UserError
from occreid_jax.evaluation import blocks
from occreid_jax.evaluation.distances import FeatureDistance
from occreid_jax.evaluation.features import extract_features

# Gallery entries per distance tile of a search by the global feature (`feature_tiles`).
GALLERY_TILE = 4096


@dataclasses.dataclass
class EmbeddedImages:
    """Features of image files.

    Attributes:
      features: dict of [N, ...] float32 embeddings (the model's output names).
      paths: the N files embedded, in order.
      skipped: files that could not be read (not embedded).
      encoded: [N] the files' bytes (for pictures of the results).
    """

    features: dict
    paths: list[str]
    skipped: list[str]
    encoded: np.ndarray


@dataclasses.dataclass
class SearchResult:
    """Each query's top-k gallery images.

    Attributes:
      query, gallery: the embedded images.
      indices: [Q, k] gallery indices, nearest first.
      distances: [Q, k] float32 distances by the model's matching rule.
    """

    query: EmbeddedImages
    gallery: EmbeddedImages
    indices: np.ndarray
    distances: np.ndarray


def pose_function(pose: str, pose_net: str = "hrnet_w48"):
    """Normalised images [D, b, H, W, 3] -> heatmaps [D, b, H/4, W/4, 17] from a COCO HRNet
    checkpoint (a .pth file, converted on the fly, or a folder from occreid_jax.nets.convert) or a
    bundle's own pose folder (`bundle_pose.py`, which names its net)."""
    from occreid_jax.bundles import bundle_pose
    from occreid_jax.nets import convert
    from occreid_jax.training import pose as pose_lib

    if bundle_pose.is_pose_folder(pose):
        return pose_lib.parallel_pose_fn(*bundle_pose.load(pose))
    if pose_net not in pose_lib.POSE_NETS:
        raise UserError(f"unknown pose net {pose_net!r}; use one of {pose_lib.POSE_NETS}")
    return pose_lib.parallel_pose_fn(
        convert.build(pose_net), convert.load_variables(pose_net, pose)
    )


def bundle_embedder(bundle, pose_fn):
    """(images [D, b, H, W, 3] normalised, heatmaps or None) -> dict of [D, b, ...]."""
    import jax

    def embed(images, heatmaps=None):
        if pose_fn is not None:
            heatmaps = pose_fn(images)
        lead = images.shape[:2]
        if heatmaps is not None:
            heatmaps = heatmaps.reshape(-1, *heatmaps.shape[2:])
        features = bundle.embed_normalized(images.reshape(-1, *images.shape[2:]), heatmaps)
        return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), features)

    return embed


def embed_files(
    bundle,
    paths: str | Sequence[str],
    *,
    pose: str = "",
    pose_net: str = "hrnet_w48",
    batch_size: int = 32,
    what: str = "images",
) -> EmbeddedImages:
    """Embeds image files (folders searched recursively) with a loaded bundle.

    Args:
      bundle: an `export.Bundle`.
      paths: a folder, an image file, or a list of them (jpg, png, bmp, tif; any size).
      pose: a COCO HRNet checkpoint or a bundle's pose folder, for models that read heatmaps
        (Pirt).
      pose_net: that checkpoint's architecture, hrnet_w48 or hrnet_w32.
      batch_size: images per step (rounded up to a multiple of the device count).
      what: how messages call these images.
    Raises:
      UserError: no image found, none readable, or a pose-guided bundle without `pose`.
    """
    embed = encoded_embedder(bundle, pose=pose, pose_net=pose_net, batch_size=batch_size)
    listed = image_files.list_images(paths, what)
    encoded, kept, skipped = image_files.read_encoded(listed)
    if not kept:
        raise UserError(f"none of the {len(listed)} {what} could be read (all skipped)")
    return EmbeddedImages(embed(encoded, kept, f"embed {what}"), kept, skipped, encoded)


def encoded_embedder(bundle, *, pose: str = "", pose_net: str = "hrnet_w48", batch_size: int = 32):
    """`embed(encoded [N] bytes, paths, desc) -> dict of [N, ...] float32`: the evaluation's
    feature extraction with a bundle (arguments as `embed_files`)."""
    import jax

    if needs_heatmaps(bundle.model_name, bundle.model_kwargs) and not pose:
        raise UserError(
            f"this {bundle.model_name} bundle reads keypoint heatmaps; pass --pose=HRNET.pth "
            "(the COCO pose_hrnet_w48_256x192.pth, or --pose-net=hrnet_w32 with its checkpoint), "
            "or export with --config.pose.init=HRNET.pth to store the pose net in the bundle"
        )
    pose_fn = pose_function(pose, pose_net) if pose else None
    devices = jax.device_count()
    config = ml_collections.ConfigDict(
        {
            "data": {"image_size": tuple(bundle.image_size),
                     "eval_batch_size": -(-batch_size // devices) * devices},
            "eval": {"flip": bool(bundle.matching.get("flip", False))},
        }
    )  # fmt: skip
    embedder = bundle_embedder(bundle, pose_fn)

    def embed(encoded: np.ndarray, paths: Sequence[str], desc: str) -> dict:
        return extract_features(embedder, image_files.split_of(encoded, paths), config, desc=desc)

    return embed


def _merge(vals, idx, tile, start: int, k: int):
    """Keeps each row's k smallest of (running candidates, a tile starting at `start`)."""
    return merge_top_k(vals, idx, tile, np.arange(start, start + tile.shape[1]), k)


def merge_top_k(vals, keys, tile, tile_keys, k: int):
    """Each row's k smallest of (running candidates, a tile), ties by the smaller key.

    Args:
      vals, keys: [R, m] running distances and their gallery keys (m <= k).
      tile: [R, T] distances of a gallery tile whose columns are in increasing key order.
      tile_keys: [T] int64 the gallery keys of the tile's columns.
      k: candidates kept.
    Returns:
      ([R, k'] distances, [R, k'] keys), k' = min(k, m + T), by (distance, key).
    """
    order = np.argsort(tile, axis=1, kind="stable")[:, :k]
    vals = np.concatenate([vals, np.take_along_axis(tile, order, axis=1)], axis=1)
    keys = np.concatenate([keys, tile_keys[order]], axis=1)
    best = np.lexsort((keys, vals), axis=-1)[:, :k]  # by distance, ties by gallery key
    return np.take_along_axis(vals, best, axis=1), np.take_along_axis(keys, best, axis=1)


def feature_tiles(num_q: int, num_g: int, memory_mib: float) -> tuple[int, int]:
    """(query rows, gallery columns) of the distance tiles of a search by the global feature:
    at most GALLERY_TILE columns, a function of the sizes alone, so that a search of a gallery
    index (`index_search.py`, which reads the gallery tile by tile) multiplies the very same
    matrices and gets the same distances bit for bit (BLAS may sum in another order for
    another shape)."""
    return blocks.block_shape(
        num_q, min(num_g, GALLERY_TILE), memory_mib, blocks.BYTES_PER_DISTANCE["numpy"]
    )


def top_k(
    matching,
    settings: Mapping,
    q_features: Mapping,
    g_features: Mapping,
    k: int,
    memory_mib: float = blocks.DEFAULT_MEMORY_MIB,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k nearest gallery entries by a `MatchingRule`.

    Args:
      matching: the model family's `evaluation.matching.MatchingRule`.
      settings: the bundle's matching settings (metric and the own rule's fields).
      q_features, g_features: dicts of [Q, ...] and [G, ...] embeddings.
      k: how many (clipped to G).
      memory_mib: working memory of a distance block.
    Returns:
      (indices [Q, k] int64, distances [Q, k] float32), nearest first, ties by gallery index.
    """
    rule = matching.own_distance(q_features, settings)
    if rule is None:
        dist = FeatureDistance(
            matching.global_feature(q_features),
            matching.global_feature(g_features),
            settings.get("metric", "cosine"),
        )
        num_q, num_g = dist.shape
        rows, cols = feature_tiles(num_q, num_g, memory_mib)
    else:
        dist = rule(q_features, g_features)
        num_q = len(next(iter(q_features.values())))
        num_g = len(next(iter(g_features.values())))
        per_row = num_g * blocks.BYTES_PER_DISTANCE["numpy"]
        rows, cols = max(1, min(num_q, int(memory_mib * 2**20) // per_row)), num_g
    k = min(k, num_g)
    indices = np.zeros((num_q, k), np.int64)
    distances = np.zeros((num_q, k), np.float32)
    for start in range(0, num_q, rows):
        block = slice(start, min(start + rows, num_q))
        n = block.stop - block.start
        vals, idx = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        for g_start in range(0, num_g, cols):
            if rule is not None:
                tile = np.asarray(dist(block), np.float32)
            else:
                tile = dist(block, slice(g_start, g_start + cols))
            vals, idx = _merge(vals, idx, tile, g_start, k)
        indices[block], distances[block] = idx, vals
    return indices, distances


def search(
    bundle,
    query_paths: str | Sequence[str],
    gallery_paths: str | Sequence[str],
    top_k_count: int = 10,
    *,
    pose: str = "",
    pose_net: str = "hrnet_w48",
    batch_size: int = 32,
    memory_mib: float = blocks.DEFAULT_MEMORY_MIB,
) -> SearchResult:
    """Embeds query and gallery files and ranks the gallery for every query (see `top_k`)."""
    options = {"pose": pose, "pose_net": pose_net, "batch_size": batch_size}
    query = embed_files(bundle, query_paths, what="query images", **options)
    gallery = embed_files(bundle, gallery_paths, what="gallery images", **options)
    matching = families.get(bundle.model_name).matching
    indices, distances = top_k(
        matching, bundle.matching, query.features, gallery.features, top_k_count, memory_mib
    )
    return SearchResult(query, gallery, indices, distances)
