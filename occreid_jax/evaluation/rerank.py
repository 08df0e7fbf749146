"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), with the defaults k1 = 20, k2 = 6, lambda = 0.3.

Semantics are those of the authors' code (and fast-reid's `fastreid/evaluation/rerank.py`):

1. M = the (Q+G) x (Q+G) distance matrix over query + gallery; each COLUMN is divided by its
   maximum and the result transposed: `d = (M / M.max(axis=0)).T`.
2. N(i, k) = the k+1 nearest entries of row i of d (itself included). R(i) = the k1-reciprocal
   set {j in N(i, k1) : i in N(j, k1)}. For every j in R(i), its k1/2-reciprocal set R_half(j)
   (k = round(k1 / 2)) is added when more than 2/3 of it lies in R(i).
3. V[i, j] = exp(-d[i, j]) over the expanded set, normalised to sum 1 over the row.
4. Local query expansion: V[i] <- mean of V over the k2 nearest rows N(i, k2 - 1) (skipped for
   k2 = 1).
5. jaccard(i, j) = 1 - sum_k min(V[i, k], V[j, k]) / (2 - sum_k min(V[i, k], V[j, k])).
6. final = (1 - lambda) * jaccard + lambda * d, restricted to the query rows, gallery columns.

Differences from the reference code, none of which changes a result beyond float rounding:

* The input distance is used as given. The paper's d is a squared distance; fast-reid's
  `re_ranking` squares its input because it is fed non-squared Euclidean distances. Pass squared
  Euclidean or cosine distances here; pass `dist ** 2` to reproduce fast-reid's function on
  Euclidean distances. With lambda = 1 the result is the column-normalised input, not the input.
* Nearest neighbours break distance ties by index (a stable order); the reference uses the
  unstable default `np.argsort`, whose tie order is unspecified.
* V is kept sparse (rows of at most a few hundred entries) instead of a dense N x N matrix,
  and only the N x (k1 + 1) neighbour lists are stored, never a full argsort (steps 2-6 are
  `kreciprocal.py`'s, shared with the blocked version).

This dense version is the reference the tests hold the evaluation's blocked version
(`rerank_blocks.py`) to. Memory: the (Q+G)^2 float32 distance matrix, 4 (Q+G)^2 bytes
(Occluded-Duke, 19,871 images: 1.6 GB; MSMT17, 93,820 images: 35 GB), plus one row block at a
time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from occreid_jax.evaluation import kreciprocal
from occreid_jax.evaluation.kreciprocal import smallest_k
from occreid_jax.evaluation.ranking import NaNDistancesError


def _transpose_inplace(a: np.ndarray, block: int = 1024) -> None:
    """Transposes a square matrix in place, block pair by block pair."""
    n = a.shape[0]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        a[i0:i1, i0:i1] = a[i0:i1, i0:i1].T.copy()
        for j0 in range(i1, n, block):
            j1 = min(j0 + block, n)
            upper = a[i0:i1, j0:j1].copy()
            a[i0:i1, j0:j1] = a[j0:j1, i0:i1].T
            a[j0:j1, i0:i1] = upper.T


def k_reciprocal_rerank(
    dist: np.ndarray,
    num_query: int,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    overwrite: bool = False,
    chunk_size: int = 512,
) -> np.ndarray:
    """Re-ranked query x gallery distances from the full (query + gallery)^2 distance matrix.

    Args:
        dist: [N, N] distances over query + gallery, queries first (N = Q + G).
        num_query: Q.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
        overwrite: reuse `dist` (float32, C-contiguous) as scratch memory instead of copying it.
        chunk_size: rows per block in the O(N^2) passes.

    Returns:
        [Q, G] float32 final distances.
    """
    d = np.asarray(dist)
    n = d.shape[0]
    if d.ndim != 2 or d.shape[1] != n:
        raise ValueError(f"dist must be a square [Q+G, Q+G] matrix, got shape {d.shape}")
    if not 0 < num_query < n:
        raise ValueError(f"num_query must be in (0, {n}), got {num_query}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got {k1}, {k2}")
    usable = overwrite and d.dtype == np.float32 and d.flags.c_contiguous and d.flags.writeable
    d = d if usable else np.array(d, dtype=np.float32, order="C")

    # 1. Column-normalise, transposed: row i of d becomes column i of the input over its max.
    _transpose_inplace(d)
    col_max = d.max(axis=1)
    if np.isnan(col_max).any():
        raise NaNDistancesError()
    for s in range(0, n, chunk_size):
        d[s : s + chunk_size] /= col_max[s : s + chunk_size, None]

    # 2. Nearest neighbours of every row, then the expanded k-reciprocal sets.
    k = min(max(k1 + 1, k2), n)
    neighbors = np.concatenate(
        [smallest_k(d[s : s + chunk_size], k) for s in range(0, n, chunk_size)]
    ).astype(np.int32)
    sets = kreciprocal.expanded_sets(neighbors, k1)

    # 3.-4. Gaussian-kernel weights, then local query expansion.
    v = kreciprocal.kernel_rows(sets, d[sets.row_ids(), sets.indices])
    v = kreciprocal.local_query_expansion(v, neighbors, k2)
    del neighbors, sets

    # 5.-6. Jaccard distance of each query to each gallery image, through the gallery columns.
    jaccard = kreciprocal.JaccardBlocks(v, num_query)
    final = np.empty((num_query, n - num_query), dtype=np.float32)
    for s in range(0, num_query, chunk_size):
        rows = slice(s, min(s + chunk_size, num_query))
        final[rows] = jaccard.final(rows, d[rows, num_query:], lambda_value)
    return final


def re_ranking(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking from the three distance blocks (fast-reid's signature).

    Args:
        q_g_dist: [Q, G] query-gallery distances.
        q_q_dist: [Q, Q] query-query distances.
        g_g_dist: [G, G] gallery-gallery distances.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).

    Returns:
        [Q, G] float32 re-ranked distances. Needs 4 (Q+G)^2 bytes (see the module docstring).
    """
    q_g = np.asarray(q_g_dist)
    num_q, num_g = q_g.shape
    if np.shape(q_q_dist) != (num_q, num_q) or np.shape(g_g_dist) != (num_g, num_g):
        raise ValueError(
            f"expected q_q_dist {(num_q, num_q)} and g_g_dist {(num_g, num_g)}, got "
            f"{np.shape(q_q_dist)} and {np.shape(g_g_dist)}"
        )
    full = np.empty((num_q + num_g, num_q + num_g), dtype=np.float32)
    full[:num_q, :num_q] = q_q_dist
    full[:num_q, num_q:] = q_g
    full[num_q:, :num_q] = q_g.T
    full[num_q:, num_q:] = g_g_dist
    return k_reciprocal_rerank(full, num_q, k1, k2, lambda_value, overwrite=True)
