"""The block work of the evaluation on an accelerator: distance tiles and their ranking in JAX.

On a GPU, `evaluate_features` puts the gallery features on the device once; for each tile of
queries x gallery entries the device computes the distances (float32 products at HIGHEST
precision: no TF32 rounding), sorts each row's values, and returns only what the metrics need
for the block's (query, same-id gallery) pairs: their distances and how many of the tile's
entries are < and <= each of them (`searchsorted` left and right). The [R, T] tile never leaves
the device. Summed over the tiles of a row, the counts are those of the whole gallery; the
host then finishes exactly as the numpy path does (`ranking.finish_block`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax.evaluation.distances import FeatureDistance
from occreid_jax.evaluation.ranking import BlockPairs, NaNDistancesError

HIGHEST = jax.lax.Precision.HIGHEST


def _order_counts(d, local, pvals, mode: str):
    """(values at `local` columns, counts <, counts <=, any NaN) for one tile.

    d: [R, T] distances (+inf on padding columns); local: [R, P] int32 column of each pair in
    the tile (outside [0, T) when the pair's gallery entry is in another tile); pvals: [R, P]
    the pairs' distances (mode "counts" only; mode "single" compares the tile's own values).
    """
    num_cols = d.shape[1]
    idx = jnp.clip(local, 0, num_cols - 1)
    vals = jnp.take_along_axis(d, idx, axis=1)
    nan = jnp.isnan(d).any()
    if mode == "values":
        zeros = jnp.zeros_like(local)
        return vals, zeros, zeros, nan
    if mode == "single":  # the whole gallery in one tile: every pair is inside
        pvals = vals
    srt = jnp.sort(d, axis=1)
    left = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(srt, pvals)
    right = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(srt, pvals)
    return vals, left, right, nan


@functools.partial(jax.jit, static_argnames=("metric", "num_cols", "num_gallery", "mode"))
def _feature_tile(q, g, terms, start, local, pvals, *, metric, num_cols, num_gallery, mode):
    """Distances of queries q [R, D] to gallery entries start..start+T-1, then `_order_counts`."""
    g = jax.lax.dynamic_slice_in_dim(g, start, num_cols)
    terms = jax.lax.dynamic_slice_in_dim(terms, start, num_cols)
    if metric == "cosine":
        norm = jnp.sqrt(jnp.sum(q * q, axis=1, keepdims=True))
        d = 1.0 - jnp.matmul(q / jnp.maximum(norm, 1e-12), g.T, precision=HIGHEST) * terms
    else:
        d = jnp.matmul(q * -2.0, g.T, precision=HIGHEST) + terms
        d = jnp.maximum(d + jnp.sum(q * q, axis=1, keepdims=True), 0.0)
    real = start + jnp.arange(num_cols) < num_gallery
    d = jnp.where(real[None, :], d, jnp.inf)  # padding columns rank after every entry
    return _order_counts(d, local, pvals, mode)


@functools.partial(jax.jit, static_argnames=("mode",))
def _given_tile(d, local, pvals, *, mode):
    return _order_counts(d.astype(jnp.float32), local, pvals, mode)


def _bucket(n: int) -> int:
    """Next power of two >= max(n, 8): few distinct shapes, few compilations."""
    return max(8, 1 << max(0, n - 1).bit_length())


def padded_pairs(pairs: BlockPairs, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs as [num_rows, P] arrays: (column slots, where each pair sits).

    Returns:
        cols: [num_rows, P] int32 gallery index of each pair, -1 on padding;
        slot: [E] each pair's position in its row (pair e is at [rows[e], slot[e]]).
    """
    rows = pairs.rows
    per_row = np.bincount(rows, minlength=num_rows)
    first = np.cumsum(per_row) - per_row
    slot = np.arange(rows.shape[0]) - first[rows]
    cols = np.full((num_rows, _bucket(int(per_row.max(initial=0)))), -1, np.int32)
    cols[rows, slot] = pairs.cols
    return cols, slot


def _fetch(out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Device results -> host ([R, P] values, [R, P] int64 counts <, <=); raises on NaN."""
    vals, smaller, smaller_equal, nan = jax.device_get(out)
    if nan:
        raise NaNDistancesError()
    return np.asarray(vals), np.asarray(smaller, np.int64), np.asarray(smaller_equal, np.int64)


class DeviceTiles:
    """The gallery features on the default device, ranked against query blocks tile by tile.

    Args:
        dist: the host features and metric.
        rows: queries per block (blocks are padded to it: one compilation).
        cols: gallery entries per tile (the gallery is padded to a multiple of it).
    """

    def __init__(self, dist: FeatureDistance, rows: int, cols: int):
        num_g = dist.shape[1]
        self.metric, self.rows, self.cols, self.num_gallery = dist.metric, rows, cols, num_g
        self.num_tiles = -(-num_g // cols)
        pad = self.num_tiles * cols - num_g
        self._q = dist.q
        self._g = jax.device_put(np.pad(dist.g, ((0, pad), (0, 0))))
        self._terms = jax.device_put(np.pad(dist.gallery_terms(), (0, pad)))

    def _run(self, query_rows: slice, tile: int, cols, pvals, mode):
        q = self._q[query_rows]
        q = np.pad(q, ((0, self.rows - q.shape[0]), (0, 0)))
        start = tile * self.cols
        local = (cols - start).astype(np.int32)  # padding (-1) stays outside; never read
        return _feature_tile(
            q, self._g, self._terms, np.int32(start), local, pvals,
            metric=self.metric, num_cols=self.cols, num_gallery=self.num_gallery, mode=mode,
        )  # fmt: skip

    def rank_pairs(self, query_rows: slice, pairs: BlockPairs) -> tuple[np.ndarray, ...]:
        """(vals, smaller, smaller_equal), each [E], of a block's pairs (see module docstring)."""
        cols, slot = padded_pairs(pairs, self.rows)
        rows = pairs.rows
        zeros = np.zeros(cols.shape, np.float32)
        if self.num_tiles == 1:
            vals, smaller, smaller_equal = _fetch(self._run(query_rows, 0, cols, zeros, "single"))
            return vals[rows, slot], smaller[rows, slot], smaller_equal[rows, slot]
        # Two passes over the tiles: the pairs' distances first (each from its own tile), then
        # the counts against every tile; the same tile gives the same values both times.
        vals = np.zeros(cols.shape, np.float32)
        for tile in range(self.num_tiles):
            start = tile * self.cols
            inside = (cols >= start) & (cols < start + self.cols)
            if inside.any():
                tile_vals = _fetch(self._run(query_rows, tile, cols, zeros, "values"))[0]
                vals[inside] = tile_vals[inside]
        smaller = np.zeros(cols.shape, np.int64)
        smaller_equal = np.zeros(cols.shape, np.int64)
        for tile in range(self.num_tiles):
            _, below, at_most = _fetch(self._run(query_rows, tile, cols, vals, "counts"))
            smaller += below
            smaller_equal += at_most
        return vals[rows, slot], smaller[rows, slot], smaller_equal[rows, slot]


def rank_given_block(dist: jax.Array, pairs: BlockPairs) -> tuple[np.ndarray, ...]:
    """(vals, smaller, smaller_equal), each [E], of a block's pairs from a [C, G] device block."""
    cols, slot = padded_pairs(pairs, dist.shape[0])
    zeros = np.zeros(cols.shape, np.float32)
    vals, smaller, smaller_equal = _fetch(_given_tile(dist, cols, zeros, mode="single"))
    at = (pairs.rows, slot)
    return vals[at], smaller[at], smaller_equal[at]
