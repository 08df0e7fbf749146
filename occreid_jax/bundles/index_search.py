"""Searching a gallery index: the ranking of `gallery_search.top_k`, from the index's files.

The gallery's order is the one a search of its folders would give (`image_files.list_images`
over the gallery arguments stored in the index), so ties fall to the same image and the ranked
lists equal those of `occreid search --gallery` bit for bit (float32 storage). With the global
feature and the bundle's metric, the gallery is read one tile at a time (the tiles of
`gallery_search.feature_tiles`, gathered from the memory-mapped chunks; distances in blocks of
queries within `memory_mib`): the memory is a tile and a block, not the gallery. A model's
own rule (Pirt, MAT) reads all the gallery's features at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from occreid_jax.bundles import gallery_index as gi
from occreid_jax.bundles.gallery_search import feature_tiles, merge_top_k, top_k
from occreid_jax.data import image_files
from occreid_jax.errors import UserError
from occreid_jax.evaluation import blocks
from occreid_jax.evaluation.distances import FeatureDistance


@dataclasses.dataclass
class OrderedGallery:
    """The live images of an index in the order of a search of the gallery folders.

    Attributes:
      index: the opened index.
      paths: [G] the images, in that order.
      left_out: gallery images on disk that the index does not hold (not searched).
    """

    index: gi.GalleryIndex
    paths: list[str]
    left_out: list[str]


def _example(paths: list[str]) -> str:
    return f"{len(paths)} gallery image{'s' if len(paths) > 1 else ''} (e.g. {paths[0]})"


def open_gallery(index_path: str, bundle_path: str) -> OrderedGallery:
    """Opens an index for a search with `bundle_path` and checks it against the disk.

    Raises:
      UserError: another bundle's index; a damaged index; indexed images gone or changed.
    """
    index = gi.open_index(index_path)
    gi.check_bundle(index_path, index.manifest, bundle_path)
    if not index.live:
        raise UserError(f"the index {index_path} holds no image; run occreid index to fill it")
    again = f"run occreid index --out={index_path} again to update it"
    listed = image_files.list_images(index.manifest["gallery"], "indexed gallery images")
    on_disk = set(listed)
    gone = [p for p in index.live if p not in on_disk]
    if gone:
        raise UserError(f"{_example(gone)} indexed but gone from the disk; {again}")
    paths = [p for p in listed if p in index.live]
    changed = [p for p in paths if not gi.same_file(index.stamp(p))]
    if changed:
        raise UserError(f"{_example(changed)} changed since indexed; {again}")
    unreadable = index.manifest["unreadable"]
    left_out = [p for p in listed if p not in index.live and p not in unreadable]
    return OrderedGallery(index, paths, left_out)


def gallery_features(gallery: OrderedGallery, positions: slice | None = None) -> dict:
    """{name: [n, ...] float32} of the live images at `positions` of the gallery order (all of
    them by default), gathered from the chunks."""
    paths = gallery.paths if positions is None else gallery.paths[positions]
    where: dict[int, tuple[list[int], list[int]]] = {}
    for i, path in enumerate(paths):
        chunk, row = gallery.index.live[path]
        where.setdefault(chunk, ([], []))
        where[chunk][0].append(i)
        where[chunk][1].append(row)
    out: dict[str, np.ndarray] = {}
    for chunk, (slots, rows) in sorted(where.items()):
        for name, value in gallery.index.chunk_features(chunk, np.asarray(rows)).items():
            if name not in out:
                out[name] = np.empty((len(paths), *value.shape[1:]), np.float32)
            out[name][slots] = value
    return out


def index_top_k(
    gallery: OrderedGallery,
    matching,
    settings: Mapping,
    q_features: Mapping,
    k: int,
    memory_mib: float = blocks.DEFAULT_MEMORY_MIB,
) -> tuple[np.ndarray, np.ndarray]:
    """`gallery_search.top_k` against an index: ([Q, k] positions in `gallery.paths`,
    [Q, k] float32 distances), nearest first, ties by gallery position."""
    if matching.own_distance(q_features, settings) is not None:
        return top_k(matching, settings, q_features, gallery_features(gallery), k, memory_mib)
    queries = matching.global_feature(q_features)
    num_q, num_g = queries.shape[0], len(gallery.paths)
    k = min(k, num_g)
    rows, cols = feature_tiles(num_q, num_g, memory_mib)  # the tiles of `top_k`
    vals = np.zeros((num_q, 0), np.float32)
    keys = np.zeros((num_q, 0), np.int64)
    for g_start in range(0, num_g, cols):
        tile_positions = slice(g_start, min(g_start + cols, num_g))
        tile_features = matching.global_feature(gallery_features(gallery, tile_positions))
        dist = FeatureDistance(queries, tile_features, settings.get("metric", "cosine"))
        tile_keys = np.arange(tile_positions.start, tile_positions.stop)
        merged = [
            merge_top_k(vals[b], keys[b], dist(b), tile_keys, k)
            for b in (slice(s, min(s + rows, num_q)) for s in range(0, num_q, rows))
        ]
        vals = np.concatenate([v for v, _ in merged])
        keys = np.concatenate([kk for _, kk in merged])
    return keys, vals
