"""Nearest neighbours among all Q + G images on the accelerator (re-ranking, query expansion).

The features of every image live on the default device once (queries first, padded to a
multiple of the tile); for a block of probe images the device computes their distances (or
cosine similarities) to all images at HIGHEST precision (no TF32 rounding) and returns only
the k nearest of each row, ties by index (`jax.lax.top_k` keeps the lower index first), with
the row maxima. The [R, Q+G] block never leaves the device. The host does the sparse steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax.evaluation.ranking import NaNDistancesError

HIGHEST = jax.lax.Precision.HIGHEST


def _unit(x):
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)), 1e-12)


def _distances(probes, cands, cand_sq, metric: str):
    """[R, N] distances, candidates in the query role as `set_pairs.FeatureSetPairs` takes them.

    cands: [N, D] unit candidates (cosine) or the candidates (euclidean); cand_sq: [N] their
    squared norms (euclidean).
    """
    probe_sq = jnp.sum(probes * probes, axis=1, keepdims=True)
    if metric == "cosine":
        scale = 1.0 / jnp.maximum(jnp.sqrt(probe_sq), 1e-12)
        return 1.0 - jnp.matmul(probes, cands.T, precision=HIGHEST) * scale
    d = jnp.matmul(probes * -2.0, cands.T, precision=HIGHEST) + probe_sq  # -2: exact scaling
    return jnp.maximum(d + cand_sq, 0.0)


@functools.partial(jax.jit, static_argnames=("metric", "k", "num_real"))
def _rerank_tile(probes, cands, cand_sq, *, metric, k, num_real):
    """(k nearest [R, k] by d = M / row max, their M, row max [R], NaN per row) for a block."""
    d = _distances(probes, cands, cand_sq, metric)
    real = jnp.arange(d.shape[1]) < num_real
    row_max = jnp.max(jnp.where(real, d, -jnp.inf), axis=1)
    nan = jnp.isnan(jnp.where(real, d, 0.0)).any(axis=1)
    _, idx = jax.lax.top_k(-jnp.where(real, d / row_max[:, None], jnp.inf), k)
    return idx, jnp.take_along_axis(d, idx, axis=1), row_max, nan


@functools.partial(jax.jit, static_argnames=("k", "num_real"))
def _similar_tile(probes, cands, cand_sq, *, k, num_real):
    """(k most cosine-similar [R, k], their similarities [R, k]) for one block of probes."""
    del cand_sq  # the candidates are unit vectors
    sim = jnp.matmul(_unit(probes), cands.T, precision=HIGHEST)
    sim = jnp.where(jnp.arange(sim.shape[1]) < num_real, sim, -jnp.inf)
    vals, idx = jax.lax.top_k(sim, k)
    return idx, vals


@functools.partial(jax.jit, static_argnames=("metric",))
def _distance_tile(probes, cands, cand_sq, *, metric):
    return _distances(probes, cands, cand_sq, metric)


class DeviceNeighbours:
    """All Q + G features on the default device, searched block by block.

    Args:
        q_feats: [Q, D] float32 query features (host).
        g_feats: [G, D] float32 gallery features (host).
        metric: "cosine" or "euclidean".
        rows: probes per block (blocks are padded to it: one compilation).
    """

    def __init__(self, q_feats: np.ndarray, g_feats: np.ndarray, metric: str, rows: int):
        self.q, self.g, self.metric, self.rows = q_feats, g_feats, metric, int(rows)
        self.num_query, self.num_images = q_feats.shape[0], q_feats.shape[0] + g_feats.shape[0]
        pad = -self.num_images % 128
        on_device = [jax.device_put(q_feats), jax.device_put(g_feats)]
        self._all = jnp.pad(jnp.concatenate(on_device), ((0, pad), (0, 0)))
        self._sq = jnp.sum(self._all * self._all, axis=1)
        if metric == "cosine":  # (the cosine similarity of AQE uses unit candidates too)
            self._all = _unit(self._all)
        self._gallery = self._all[self.num_query : self.num_images]
        self._g_sq = self._sq[self.num_query : self.num_images]

    def _probes(self, rows: slice) -> np.ndarray:
        """The probe block, host side, padded to a multiple of `self.rows` rows."""
        q = self.num_query
        x = self.q[rows] if rows.start < q else self.g[rows.start - q : rows.stop - q]
        return np.pad(x, ((0, -x.shape[0] % self.rows), (0, 0)))

    def rerank_rows(self, rows: slice, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(neighbours [R, k] int64 by d = M / row max, their d [R, k], row max [R] float32)."""
        idx, near_m, row_max, nan = jax.device_get(
            _rerank_tile(
                self._probes(rows), self._all, self._sq,
                metric=self.metric, k=k, num_real=self.num_images,
            )
        )  # fmt: skip
        size = rows.stop - rows.start
        if nan[:size].any():
            raise NaNDistancesError()
        row_max = np.asarray(row_max[:size], np.float32)
        near_d = np.asarray(near_m[:size], np.float32) / row_max[:, None]  # IEEE, as the host
        return np.asarray(idx[:size], np.int64), near_d, row_max

    def similar_rows(self, rows: slice, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(the k most cosine-similar images [R, k] int64, similarities [R, k] float32)."""
        idx, sims = jax.device_get(
            _similar_tile(self._probes(rows), self._all, self._sq, k=k, num_real=self.num_images)
        )
        size = rows.stop - rows.start
        return np.asarray(idx[:size], np.int64), np.asarray(sims[:size], np.float32)

    def to_gallery(self, rows: slice) -> np.ndarray:
        """[R, G] float32 distances of a block of queries to the gallery."""
        d = _distance_tile(self._probes(rows), self._gallery, self._g_sq, metric=self.metric)
        return np.array(jax.device_get(d)[: rows.stop - rows.start])  # writable
