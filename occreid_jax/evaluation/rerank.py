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
  and only the N x (k1 + 1) neighbour lists are stored, never a full argsort.

Memory: the (Q+G)^2 float32 distance matrix, 4 (Q+G)^2 bytes (Occluded-Duke, 19,871 images:
1.6 GB; Market-1501: 2.1 GB; MSMT17, 93,820 images: 35 GB, out of reach on most hosts), plus one
row block at a time. Time is dominated by O((Q+G)^2) passes over that matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def smallest_k(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, ordered by (value, index).

    Equal to `np.argsort(block, axis=1, kind="stable")[:, :k]`, in O(N) per row.

    Args:
        block: [C, N] values (no NaN).
        k: 1 <= k <= N.

    Returns:
        [C, k] int64 column indices.
    """
    num_rows, n = block.shape
    kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]  # [C, 1] the k-th smallest value
    mask = block <= kth
    counts = mask.sum(axis=1)
    if np.all(counts == k):
        idx = np.nonzero(mask)[1].reshape(num_rows, k)
    else:  # some rows have ties at the k-th value: keep the lowest indices among them
        idx = np.empty((num_rows, k), dtype=np.int64)
        for r in range(num_rows):
            below = np.flatnonzero(block[r] < kth[r, 0])
            equal = np.flatnonzero(block[r] == kth[r, 0])[: k - below.size]
            idx[r] = np.sort(np.concatenate([below, equal]))
    vals = np.take_along_axis(block, idx, axis=1)
    order = np.lexsort((idx, vals), axis=-1)  # by value, then index
    return np.take_along_axis(idx, order, axis=1)


def _reciprocal_mask(neighbors: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[R, K] bool: row rows[r] is among the neighbours of its neighbour neighbors[rows[r], a]."""
    out = np.empty((rows.size, neighbors.shape[1]), dtype=bool)
    for s in range(0, rows.size, chunk):
        r = rows[s : s + chunk]
        fwd = neighbors[r]  # [c, K]
        out[s : s + chunk] = (neighbors[fwd] == r[:, None, None]).any(axis=2)
    return out


def _expanded_sets(
    neighbors: np.ndarray, k1: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal set of every row (steps 2 of the module docstring).

    Args:
        neighbors: [N, K] nearest-neighbour lists (K >= k1 + 1 unless N is smaller).
        k1: the k1 parameter.

    Returns:
        rows [E] and cols [E]: the (i, j) pairs of all expanded sets, sorted by (i, j).
    """
    n = neighbors.shape[0]
    full = neighbors[:, : min(k1 + 1, n)]  # [N, K1]
    half = neighbors[:, : min(int(np.around(k1 / 2.0)) + 1, n)]  # [N, Kh]
    all_rows = np.arange(n)
    half_recip = _reciprocal_mask(half, all_rows)  # [N, Kh]
    half_len = half_recip.sum(axis=1)
    sentinel = n
    out_rows, out_cols = [], []
    for s in range(0, n, chunk):
        rows = all_rows[s : s + chunk]
        fwd = full[rows]  # [c, K1] candidates
        recip = _reciprocal_mask(full, rows)  # [c, K1]
        cand_half = half[fwd]  # [c, K1, Kh] half-reciprocal candidates of each candidate
        cand_mask = half_recip[fwd]  # [c, K1, Kh]
        # Is each half-set member in R(i)? Compare against the reciprocal members of row i.
        in_r = ((cand_half[..., None] == fwd[:, None, None, :]) & recip[:, None, None, :]).any(
            axis=3
        )
        overlap = (in_r & cand_mask).sum(axis=2)  # [c, K1]
        accept = recip & (overlap > 2.0 / 3 * half_len[fwd])
        members = np.concatenate(
            [
                np.where(recip, fwd, sentinel),
                np.where(accept[..., None] & cand_mask, cand_half, sentinel).reshape(len(rows), -1),
            ],
            axis=1,
        )
        members.sort(axis=1)
        first = np.ones_like(members, dtype=bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        keep = first & (members != sentinel)
        r_idx, c_pos = np.nonzero(keep)
        out_rows.append(rows[r_idx])
        out_cols.append(members[r_idx, c_pos])
    return np.concatenate(out_rows), np.concatenate(out_cols)


def _query_expansion(
    rows: np.ndarray, cols: np.ndarray, data: np.ndarray, neighbors: np.ndarray, k2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse V_qe[i] = mean(V[neighbors[i, :k2]]); V given as (rows, cols, data) sorted by row."""
    n = neighbors.shape[0]
    k2 = min(k2, n)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    nnz = np.diff(indptr)
    out_rows, out_cols, out_data = [], [], []
    chunk = max(1, (1 << 22) // max(int(nnz.max(initial=1)) * k2, 1))
    for s in range(0, n, chunk):
        i = np.arange(s, min(s + chunk, n))
        src = neighbors[i, :k2].reshape(-1)  # [c * k2] rows of V to average
        owner = np.repeat(i, k2)
        counts = nnz[src]
        starts = np.repeat(indptr[src], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        entry = starts + within
        key = np.repeat(owner, counts).astype(np.int64) * n + cols[entry]
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=data[entry], minlength=uniq.size)
        out_rows.append(uniq // n)
        out_cols.append(uniq % n)
        out_data.append((summed / k2).astype(np.float32))
    return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_data)


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
        raise ValueError("the distance matrix contains NaN; check the features / distance function")
    for s in range(0, n, chunk_size):
        d[s : s + chunk_size] /= col_max[s : s + chunk_size, None]

    # 2. Nearest neighbours of every row, then the expanded k-reciprocal sets.
    k = min(max(k1 + 1, k2), n)
    neighbors = np.concatenate(
        [smallest_k(d[s : s + chunk_size], k) for s in range(0, n, chunk_size)]
    ).astype(np.int64)
    rows, cols = _expanded_sets(neighbors, k1)

    # 3. Gaussian-kernel weights, normalised per row.
    weights = np.exp(-d[rows, cols])
    row_sum = np.bincount(rows, weights=weights, minlength=n).astype(np.float32)
    data = (weights / row_sum[rows]).astype(np.float32)

    # 4. Local query expansion.
    if k2 != 1:
        rows, cols, data = _query_expansion(rows, cols, data, neighbors, k2)
    del neighbors

    # 5.-6. Jaccard distance of each query to each gallery image, through the gallery columns.
    num_gallery = n - num_query
    in_gallery = rows >= num_query
    g_order = np.argsort(cols[in_gallery], kind="stable")
    g_rows = rows[in_gallery][g_order] - num_query  # gallery image owning the entry
    g_cols = cols[in_gallery][g_order]
    g_data = data[in_gallery][g_order]
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(g_cols, minlength=n))])
    q_end = np.searchsorted(rows, num_query)  # query rows come first (sorted by row)
    q_rows, q_cols, q_data = rows[:q_end], cols[:q_end], data[:q_end]
    q_ptr = np.concatenate([[0], np.cumsum(np.bincount(q_rows, minlength=num_query))])

    final = np.empty((num_query, num_gallery), dtype=np.float32)
    # Pairs each query entry (i, k) expands to: all gallery entries of column k.
    fan_out = np.diff(col_ptr)[q_cols]
    work_per_query = np.bincount(q_rows, weights=fan_out, minlength=num_query)
    budget = max(1 << 22, int(work_per_query.max(initial=0)))
    start = 0
    while start < num_query:
        cum = np.cumsum(work_per_query[start:])
        stop = start + max(1, int(np.searchsorted(cum, budget, side="right")))
        stop = min(stop, start + max(1, (1 << 22) // max(num_gallery, 1)))
        a, b = q_ptr[start], q_ptr[stop]
        counts = fan_out[a:b]
        entry = np.repeat(col_ptr[q_cols[a:b]], counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        mins = np.minimum(np.repeat(q_data[a:b], counts), g_data[entry])
        key = np.repeat(q_rows[a:b] - start, counts) * num_gallery + g_rows[entry]
        shared = np.bincount(key, weights=mins, minlength=(stop - start) * num_gallery)
        shared = shared.reshape(stop - start, num_gallery)
        jaccard = 1.0 - shared / (2.0 - shared)
        final[start:stop] = (1.0 - lambda_value) * jaccard + lambda_value * d[
            start:stop, num_query:
        ]
        start = stop
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
