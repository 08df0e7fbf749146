"""The sparse steps of k-reciprocal re-ranking, shared by the dense and the blocked versions.

Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017,
Section 3; the step numbers are those of `rerank.py`'s docstring. Everything here works on the
neighbour lists ([N, K] indices, N = Q + G images, queries first) and on the sparse rows of V,
never on an N x N matrix:

* `expanded_sets`: step 2, the k1-reciprocal sets R(i) and their 2/3 expansion;
* `kernel_rows`: step 3, V[i, j] = exp(-d[i, j]) over the expanded set, rows summing to 1;
* `local_query_expansion`: step 4, V[i] <- mean of V over the k2 nearest rows;
* `JaccardBlocks`: steps 5-6, the final distances of a block of queries to the gallery.

Rows are `SparseRows` (CSR: int64 row pointers, int32 columns sorted within a row, float32
values), about 8 bytes per stored entry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Entries handled at once by the chunked steps unless the caller gives its memory budget.
DEFAULT_CHUNK_ENTRIES = 1 << 22


@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Rows of a sparse N x N matrix (CSR).

    Attributes:
        indptr: [N + 1] int64, row i's entries are indptr[i]:indptr[i + 1].
        indices: [E] int32 columns, increasing within a row.
        data: [E] float32 values, or None for a pattern only.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        return self.indptr.shape[0] - 1

    def row_ids(self) -> np.ndarray:
        """[E] int32: the row of every entry."""
        counts = np.diff(self.indptr)
        return np.repeat(np.arange(self.num_rows, dtype=np.int32), counts)

    @classmethod
    def from_chunks(cls, counts: list, indices: list, data: list | None = None) -> SparseRows:
        """Joins per-chunk row counts, columns and values (chunks in row order)."""
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts), dtype=np.int64)])
        values = None if data is None else np.concatenate(data)
        return cls(indptr, np.concatenate(indices), values)


def smallest_k(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, ordered by (value, index).

    Equal to `np.argsort(block, axis=1, kind="stable")[:, :k]`, in O(N) per row: the k-th
    smallest of every 8th column bounds the k-th smallest of the row from above, so the
    entries up to that bound (about 8k of them) hold the k smallest, ties included.

    Args:
        block: [C, N] values (no NaN).
        k: 1 <= k <= N.

    Returns:
        [C, k] int64 column indices.
    """
    num_rows, n = block.shape
    stride = 8
    if n < 4 * stride * k:
        return _smallest_k_by_partition(block, k)
    bound = np.partition(block[:, ::stride], k - 1, axis=1)[:, k - 1 : k]  # [C, 1]
    # Row-major, columns increasing within a row (a flat scan: np.nonzero of 2-d is ~6x slower).
    rows, cols = np.divmod(np.flatnonzero(block <= bound), n)
    counts = np.bincount(rows, minlength=num_rows)
    width = int(counts.max())
    if width > n // 4:  # many ties at the bound: no gain
        return _smallest_k_by_partition(block, k)
    slot = np.arange(rows.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_cols = np.full((num_rows, width), n, np.int64)  # padding sorts after every column
    cand_vals = np.full((num_rows, width), np.inf, block.dtype)
    cand_cols[rows, slot] = cols
    cand_vals[rows, slot] = block[rows, cols]
    order = np.lexsort((cand_cols, cand_vals), axis=-1)[:, :k]  # by value, then column
    return np.take_along_axis(cand_cols, order, axis=1)


def _smallest_k_by_partition(block: np.ndarray, k: int) -> np.ndarray:
    """`smallest_k` by one partition of the whole rows."""
    num_rows = block.shape[0]
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


def smallest_k_of_parts(parts: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """`smallest_k` of rows split into column parts: [R, n_1 + n_2 + ...] never exists.

    Args:
        parts: [R, n_p] blocks; the columns of part p follow those of parts before it.
        k: 1 <= k <= sum(n_p).

    Returns:
        [R, k] int64 columns and [R, k] their values, ordered by (value, column).
    """
    idx, vals, offset = [], [], 0
    for part in parts:
        top = smallest_k(part, min(k, part.shape[1]))
        vals.append(np.take_along_axis(part, top, axis=1))
        idx.append(top + offset)
        offset += part.shape[1]
    idx, vals = np.concatenate(idx, axis=1), np.concatenate(vals, axis=1)
    order = np.lexsort((idx, vals), axis=-1)[:, :k]  # a part's top k holds its share of all k
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _reciprocal_mask(neighbors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[R, K] bool: row rows[r] is among the neighbours of its neighbour neighbors[rows[r], a]."""
    fwd = neighbors[rows]  # [R, K]
    return (neighbors[fwd] == rows[:, None, None]).any(axis=2)


def expanded_sets(
    neighbors: np.ndarray, k1: int, chunk_entries: int = DEFAULT_CHUNK_ENTRIES
) -> SparseRows:
    """Step 2: the expanded k-reciprocal set of every row (a pattern, no values).

    R(i) = {j in N(i, k1) : i in N(j, k1)}, N(i, k) the first k + 1 neighbours (i itself
    included). Every j in R(i) adds its own k1/2-reciprocal set R_half(j) (k = round(k1 / 2))
    when more than 2/3 of R_half(j) lies in R(i) (paper, Eq. 10).

    Args:
        neighbors: [N, K] nearest neighbours of every row, nearest first (K >= k1 + 1 unless N
            is smaller).
        k1: the k1 parameter.
        chunk_entries: bounds the temporaries (~3 bytes per entry): rows at once times
            (k1 + 1)^2 (k1 / 2 + 1).

    Returns:
        The sets as `SparseRows` with `data=None`.
    """
    n = neighbors.shape[0]
    full = neighbors[:, : min(k1 + 1, n)]  # [N, K1]
    half = neighbors[:, : min(int(np.around(k1 / 2.0)) + 1, n)]  # [N, Kh]
    half_recip = np.concatenate(
        [_reciprocal_mask(half, np.arange(s, min(s + 4096, n))) for s in range(0, n, 4096)]
    )  # [N, Kh]
    half_len = half_recip.sum(axis=1)
    sentinel = n
    chunk = max(1, chunk_entries // (full.shape[1] ** 2 * half.shape[1]))
    counts, cols = [], []
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
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
        keep = members != sentinel
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        counts.append(keep.sum(axis=1))
        cols.append(members[keep].astype(np.int32))
    return SparseRows.from_chunks(counts, cols)


def kernel_rows(sets: SparseRows, dist_values: np.ndarray) -> SparseRows:
    """Step 3: V[i, j] = exp(-d[i, j]) over each expanded set, normalised to sum 1 per row.

    Args:
        sets: the expanded sets (`expanded_sets`).
        dist_values: [E] float32 d[i, j] of every entry of `sets`, in its order.

    Returns:
        V as `SparseRows` with float32 values.
    """
    rows = sets.row_ids()
    weights = np.exp(-dist_values)
    row_sum = np.bincount(rows, weights=weights, minlength=sets.num_rows).astype(np.float32)
    data = (weights / row_sum[rows]).astype(np.float32)
    return SparseRows(sets.indptr, sets.indices, data)


def local_query_expansion(
    v: SparseRows, neighbors: np.ndarray, k2: int, chunk_entries: int = DEFAULT_CHUNK_ENTRIES
) -> SparseRows:
    """Step 4: V[i] <- mean(V[neighbors[i, :k2]]) (paper, Eq. 13); V itself for k2 = 1.

    Args:
        v: V as `SparseRows`.
        neighbors: [N, K] nearest neighbours, K >= min(k2, N).
        k2: rows averaged.
        chunk_entries: gathered entries per chunk (bounds the temporaries, ~40 B each).

    Returns:
        The expanded V as `SparseRows`.
    """
    n = v.num_rows
    k2 = min(k2, n)
    if k2 == 1:
        return v
    nnz = np.diff(v.indptr)
    chunk = max(1, chunk_entries // max(int(nnz.max(initial=1)) * k2, 1))
    counts, cols, values = [], [], []
    for s in range(0, n, chunk):
        i = np.arange(s, min(s + chunk, n))
        src = neighbors[i, :k2].reshape(-1)  # [c * k2] rows of V to average
        owner = np.repeat(i - s, k2)
        fan = nnz[src]
        starts = np.repeat(v.indptr[src], fan)
        within = np.arange(fan.sum()) - np.repeat(np.cumsum(fan) - fan, fan)
        entry = starts + within
        key = np.repeat(owner, fan).astype(np.int64) * n + v.indices[entry]
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=v.data[entry], minlength=uniq.size)
        counts.append(np.bincount(uniq // n, minlength=i.size))
        cols.append((uniq % n).astype(np.int32))
        values.append((summed / k2).astype(np.float32))
    return SparseRows.from_chunks(counts, cols, values)


class JaccardBlocks:
    """Steps 5-6 for blocks of queries: final = (1 - lambda) jaccard + lambda d (Eq. 11, 14).

    jaccard(i, j) = 1 - s / (2 - s), s = sum_k min(V[i, k], V[j, k]), computed through the
    columns of the gallery rows of V: a query entry (i, k) meets every gallery entry of column k.

    Args:
        v: V (after local query expansion) over the N = Q + G images, queries first.
        num_query: Q.
        chunk_entries: (query entry, gallery entry) meetings handled at once (~40 B each).
    """

    def __init__(self, v: SparseRows, num_query: int, chunk_entries: int = DEFAULT_CHUNK_ENTRIES):
        n = v.num_rows
        self.num_query, self.num_gallery = num_query, n - num_query
        start = v.indptr[num_query]
        g_cols = v.indices[start:]
        order = np.argsort(g_cols, kind="stable")  # by column, then gallery row
        g_counts = np.diff(v.indptr[num_query:])
        g_rows = np.repeat(np.arange(self.num_gallery, dtype=np.int32), g_counts)
        self.g_rows, self.g_data = g_rows[order], v.data[start:][order]
        del g_rows, order
        self.col_ptr = np.concatenate(
            [[0], np.cumsum(np.bincount(g_cols, minlength=n), dtype=np.int64)]
        )
        self.q_ptr = v.indptr[: num_query + 1]
        self.q_cols, self.q_data = v.indices[: v.indptr[num_query]], v.data[: v.indptr[num_query]]
        self.chunk_entries = int(chunk_entries)

    def shared(self, rows: slice) -> np.ndarray:
        """[R, G] float64: sum_k min(V[i, k], V[Q + g, k]) for the queries `rows`."""
        num_g, start, stop = self.num_gallery, rows.start, rows.stop
        out = np.zeros((stop - start) * num_g, dtype=np.float64)
        ptr = self.q_ptr[start : stop + 1]  # the block's query entries are ptr[0]:ptr[-1]
        fan_out = np.diff(self.col_ptr)[self.q_cols[ptr[0] : ptr[-1]]]  # meetings per entry
        # Sub-blocks of whole query rows with at most `chunk_entries` meetings (one row at least).
        meetings = np.concatenate([[0], np.cumsum(fan_out)])[ptr - ptr[0]]  # [R + 1] cumulative
        bounds = [0]
        while bounds[-1] < stop - start:
            limit = meetings[bounds[-1]] + self.chunk_entries
            bounds.append(max(int(np.searchsorted(meetings, limit, "right")) - 1, bounds[-1] + 1))
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            a, b = ptr[r0], ptr[r1]  # query entries of rows start + r0 .. start + r1 - 1
            counts = fan_out[a - ptr[0] : b - ptr[0]]
            entry = np.repeat(self.col_ptr[self.q_cols[a:b]], counts) + (
                np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            )
            mins = np.minimum(np.repeat(self.q_data[a:b], counts), self.g_data[entry])
            owner = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(ptr[r0 : r1 + 1]))
            key = np.repeat(owner, counts) * num_g + self.g_rows[entry]
            lo, hi = r0 * num_g, r1 * num_g
            out[lo:hi] = np.bincount(key, weights=mins, minlength=hi - lo)
        return out.reshape(stop - start, num_g)

    def final(self, rows: slice, d_block: np.ndarray, lambda_value: float) -> np.ndarray:
        """[R, G] float32 final distances of the queries `rows`.

        Args:
            rows: query rows.
            d_block: [R, G] float32 d[i, Q + g], the normalised original distances.
            lambda_value: weight of the original distance.
        """
        shared = self.shared(rows)
        out = np.subtract(2.0, shared)
        np.divide(shared, out, out=out)
        del shared
        np.subtract(1.0, out, out=out)  # the Jaccard distance
        lam = float(lambda_value)  # a Python float: lam * d_block is computed in float32
        out *= 1.0 - lam
        out += lam * d_block
        return out.astype(np.float32)
