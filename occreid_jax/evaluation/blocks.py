"""Exact ranking of query x gallery features in tiles, within a memory budget.

The distance matrix of a large gallery never exists: queries are taken in blocks of R rows,
and when R whole gallery rows would not fit the budget, the gallery is cut into tiles of T
entries. Every tile is ranked as soon as it is computed (see `ranking.count_smaller`) and
dropped, so the working memory is about `memory_mib` whatever the gallery size (plus the
features themselves and the per-query lists of same-id gallery entries).

* Whole rows (T = G): one pass, the fast path (`ranking.rank_block`'s algorithm).
* Gallery tiles (T < G): two passes over the tiles of a block: the distances of each query's
  same-id gallery entries first, then, for every tile, how many entries are closer than (or
  as close as) them. That computes each tile twice (the price of a budget smaller than R
  gallery rows), and gives exactly the counts of the one-pass path.

Backends: "numpy" (host BLAS and sorts) or "jax" (the default device, `device.py`: on a GPU the
tile work stays on the GPU); "auto" picks jax when the default JAX backend is not the CPU.
"""

from __future__ import annotations

import numpy as np
import tqdm

from occreid_jax.evaluation import ranking
from occreid_jax.evaluation.distances import FeatureDistance

# Working memory per distance of a tile. numpy: the product and its sorted copy, plus a partial
# copy when some queries have no positive (8-12 B; tracemalloc in tests/test_large_gallery.py).
# Device (counted, not measured on a GPU): distances, the sorted values and the sort's buffers
# (kept at 24 B, the figure of the former argsort path: an upper bound).
BYTES_PER_DISTANCE = {"numpy": 12, "jax": 24}
DEFAULT_MEMORY_MIB = 256
# Query rows below which a block is cut along the gallery instead: thinner products run far
# below the BLAS peak (a single row is a matrix-vector product that rereads the gallery).
MIN_ROWS = 64
BACKENDS = ("auto", "numpy", "jax")


def resolve_backend(backend: str) -> str:
    """ "auto" -> "jax" on an accelerator, else "numpy"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend != "auto":
        return backend
    import jax

    return "numpy" if jax.default_backend() == "cpu" else "jax"


def block_shape(
    num_query: int, num_gallery: int, memory_mib: float, bytes_per_distance: int
) -> tuple[int, int]:
    """(R query rows, T gallery entries) per tile so that a tile's work fits `memory_mib`.

    Whole gallery rows when at least min(Q, MIN_ROWS) of them fit, else tiles of
    min(Q, MIN_ROWS) rows and as many gallery entries as fit (at least 1).
    """
    if memory_mib <= 0:
        raise ValueError(f"the memory budget must be positive, got {memory_mib} MiB")
    distances = max(1, int(memory_mib * 2**20) // bytes_per_distance)
    whole_rows = distances // num_gallery
    if whole_rows >= min(num_query, MIN_ROWS):
        return max(1, min(num_query, whole_rows)), num_gallery
    rows = max(1, min(num_query, MIN_ROWS, distances))
    return rows, max(1, min(num_gallery, distances // rows))


def rank_features(
    dist: FeatureDistance,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gallery: ranking.GalleryIndex,
    rows: int,
    cols: int,
    backend: str = "numpy",
    progress: bool = False,
) -> list[ranking.BlockRanks]:
    """Ranks every query of `dist` in blocks of `rows` queries x `cols` gallery entries.

    Args:
        dist: query and gallery features with their metric.
        q_pids, q_camids: [Q] query ids.
        gallery: the gallery ids.
        rows, cols: the tile shape (see `block_shape`).
        backend: "numpy" or "jax".
        progress: a progress bar over the queries.

    Returns:
        One `BlockRanks` per block of queries, in query order.
    """
    num_q, num_g = dist.shape
    cols = min(cols, num_g)
    tiles = None
    if backend == "jax":
        from occreid_jax.evaluation.device import DeviceTiles

        tiles = DeviceTiles(dist, rows, cols)
    blocks = []
    bar = tqdm.tqdm(total=num_q, unit="query", disable=not progress, desc="ranking", leave=False)
    with bar:
        for start in range(0, num_q, rows):
            block = slice(start, min(start + rows, num_q))
            pairs = ranking.BlockPairs.build(q_pids[block], q_camids[block], gallery)
            pos = ~pairs.junk
            if tiles is not None:
                vals, smaller, smaller_equal = tiles.rank_pairs(block, pairs)
                smaller, smaller_equal = smaller[pos], smaller_equal[pos]
            elif cols == num_g:
                d = dist(block)
                vals = d[pairs.rows, pairs.cols]
                smaller, smaller_equal = ranking.count_smaller(d, pairs.rows[pos], vals[pos])
                del d
            else:
                vals, smaller, smaller_equal = _two_passes(dist, block, pairs, cols)
            blocks.append(ranking.finish_block(pairs, vals, smaller, smaller_equal))
            bar.update(block.stop - block.start)
    return blocks


def _two_passes(dist: FeatureDistance, block: slice, pairs: ranking.BlockPairs, cols: int):
    """(vals [E], smaller, smaller_equal [positives]) of a block whose rows do not fit, by tiles."""
    num_g = dist.shape[1]
    vals = np.zeros(pairs.rows.shape[0], np.float32)
    starts = range(0, num_g, cols)
    for start in starts:  # each pair's distance, from the tile that holds its gallery entry
        inside = (pairs.cols >= start) & (pairs.cols < start + cols)
        if inside.any():
            tile = dist(block, slice(start, start + cols))
            vals[inside] = tile[pairs.rows[inside], pairs.cols[inside] - start]
    pos = ~pairs.junk
    p_rows, p_vals = pairs.rows[pos], vals[pos]
    smaller = np.zeros(p_rows.shape[0], np.int64)
    smaller_equal = np.zeros(p_rows.shape[0], np.int64)
    for start in starts:
        tile = dist(block, slice(start, start + cols))
        below, at_most = ranking.count_smaller(tile, p_rows, p_vals)
        smaller += below
        smaller_equal += at_most
    return vals, smaller, smaller_equal
