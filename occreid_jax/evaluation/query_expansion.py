"""Average query expansion (alpha-weighted), as in fast-reid (`evaluation/query_expansion.py`).

Chum et al., "Total Recall", ICCV 2007 (average query expansion), with the alpha weighting of
Radenovic et al. (alpha-QE, TPAMI 2018). fast-reid's `aqe` (defaults `TEST.AQE`: k = 5,
alpha = 3.0, one round), on all Q + G images at once (database-side too), per round:

    s(a, b) = cos(x_a, x_b) over all images, queries and gallery together;
    T(a)    = the k images most similar to a (a itself included, usually first);
    x'_a    = (1 / k) sum_{b in T(a)} s(a, b)^alpha x_b       (raw, not normalised, features)

The expanded features are then compared by the evaluation's metric as usual. Differences
from fast-reid: similarities in blocks of rows, never the (Q+G)^2 matrix; ties in T(a) by
index (fast-reid's `np.argpartition` leaves their order unspecified).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tqdm

from occreid_jax.evaluation.blocks import DEFAULT_MEMORY_MIB, resolve_backend
from occreid_jax.evaluation.distances import l2_normalize
from occreid_jax.evaluation.kreciprocal import smallest_k_of_parts
from occreid_jax.evaluation.set_pairs import probe_slices

DEFAULT_K = 5  # fast-reid TEST.AQE.QE_K
DEFAULT_ALPHA = 3.0  # fast-reid TEST.AQE.ALPHA
BYTES_PER_SIMILARITY = 16  # the block, its negation, np.partition's copy, a mask


def _as_features(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [num_images, feature_dim], got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def average_query_expansion(
    q_feats: Any,
    g_feats: Any,
    k: int = DEFAULT_K,
    alpha: float = DEFAULT_ALPHA,
    rounds: int = 1,
    memory_mib: float | None = None,
    block_rows: int | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Expanded query and gallery features (module docstring).

    Args:
        q_feats: [Q, D] query features.
        g_feats: [G, D] gallery features.
        k: images averaged per image (fast-reid `QE_K`, 5), self included.
        alpha: similarity exponent of the weights (fast-reid `ALPHA`, 3.0).
        rounds: expansion rounds (fast-reid `QE_TIME`, 1).
        memory_mib: working memory of a block of similarities (default 256 MiB).
        block_rows: images per block (overrides the budget).
        backend: "auto" (the accelerator when JAX has one), "numpy" or "jax" (similarities and
            top-k on the default device).
        progress: a progress bar.

    Returns:
        ([Q, D], [G, D]) float32 expanded features (new arrays).
    """
    q, g = _as_features("q_feats", q_feats), _as_features("g_feats", g_feats)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dim {q.shape[1]}, gallery features {g.shape[1]}")
    num_q, num_g = q.shape[0], g.shape[0]
    n = num_q + num_g
    if not 1 <= k <= n:
        raise ValueError(f"the query expansion's k must be in [1, {n}], got {k}")
    budget = int((memory_mib or DEFAULT_MEMORY_MIB) * 2**20)
    step = int(block_rows or max(1, budget // (BYTES_PER_SIMILARITY * n)))
    backend = resolve_backend(backend)
    for _ in range(rounds):
        neighbours = _top_similar(q, g, k, step, backend)
        new_q, new_g = np.empty_like(q), np.empty_like(g)
        bar = tqdm.tqdm(total=n, unit="image", desc="query expansion", disable=not progress)
        with bar:
            for rows in probe_slices(num_q, num_g, step):
                idx, sims = neighbours(rows)
                weights = np.power(sims, np.float32(alpha))  # [R, k]
                gathered = _rows_of(q, g, idx.reshape(-1)).reshape(*idx.shape, -1)  # [R, k, D]
                mean = (gathered * weights[..., None]).mean(axis=1)
                if rows.start < num_q:
                    new_q[rows] = mean
                else:
                    new_g[rows.start - num_q : rows.stop - num_q] = mean
                bar.update(rows.stop - rows.start)
        q, g = new_q, new_g
    return q, g


def _rows_of(q: np.ndarray, g: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[E, D] features of images `index` (queries first)."""
    out = np.empty((index.shape[0], q.shape[1]), np.float32)
    in_q = index < q.shape[0]
    out[in_q] = q[index[in_q]]
    out[~in_q] = g[index[~in_q] - q.shape[0]]
    return out


def _top_similar(q: np.ndarray, g: np.ndarray, k: int, step: int, backend: str):
    """`rows -> ([R, k] images, [R, k] cosine similarities)`, most similar first, ties by index."""
    if backend == "jax":
        from occreid_jax.evaluation.neighbour_device import DeviceNeighbours

        device = DeviceNeighbours(q, g, "cosine", step)
        return lambda rows: device.similar_rows(rows, k)
    scales = [
        (1.0 / np.maximum(np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64)), 1e-12)).astype(
            np.float32
        )
        for x in (q, g)
    ]

    def neighbours(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        num_q = q.shape[0]
        probes = q[rows] if rows.start < num_q else g[rows.start - num_q : rows.stop - num_q]
        unit = l2_normalize(probes)
        negated = []
        for x, scale in zip((q, g), scales, strict=True):
            sim = unit @ x.T
            sim *= scale
            np.negative(sim, out=sim)  # the most similar are the smallest: ties by index
            negated.append(sim)
        idx, vals = smallest_k_of_parts(negated, k)
        return idx, -vals

    return neighbours
