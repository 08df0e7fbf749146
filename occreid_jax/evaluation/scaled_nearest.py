"""The k nearest of each row by d = M / (row maximum), without dividing the whole row.

The neighbour pass of blocked re-ranking (`rerank_blocks.py`) needs, for every row of M, the
k columns of smallest d = M / max(M[row]) (ties by column) and their d, where d is the IEEE
float32 quotient the dense version computes. Dividing a whole block and then selecting reads
and writes it twice more than the distance product does; here the selection runs on M itself
and only the candidates are divided:

1. B: the k-th smallest M of every 8th column, an upper bound of the row's k-th smallest M;
2. candidates: the entries with M <= B (about 8k per row), found in one comparison and one
   flat scan of each part;
3. their d, computed as the dense version does, sorted by (d, column); the first k.

Exact, ties included: float division by a positive row maximum is monotone, so the k smallest
d lie among the k smallest M (all inside the candidates), and an entry outside has
M >= next float above B, so d >= fl(next(B) / max). A row whose k-th d reaches that value (a
tie could reach outside) is redone by the full division; so is a block whose rows are too
short for sampling, or whose candidates are many (ties at B).
"""

from __future__ import annotations

import numpy as np

from occreid_jax.evaluation.kreciprocal import smallest_k_of_parts
from occreid_jax.evaluation.ranking import NaNDistancesError

STRIDE = 8


def nearest_scaled(parts: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest of rows [part_1 | part_2 | ...] by d = M / row maximum.

    Args:
        parts: [R, n_p] float32 blocks of M, the columns of part p after those of the parts
            before it (not modified).
        k: neighbours per row, 1 <= k <= sum(n_p).

    Returns:
        [R, k] int64 columns ordered by (d, column), [R, k] float32 their d, [R] float32
        row maxima of M.
    """
    row_max = np.max([p.max(axis=1) for p in parts], axis=0)
    if np.isnan(row_max).any():  # the maximum of a row with a NaN is NaN
        raise NaNDistancesError()
    n = sum(p.shape[1] for p in parts)
    if n < 4 * STRIDE * k:
        return (*_by_division(parts, row_max, k), row_max)
    sample = np.concatenate([p[:, ::STRIDE] for p in parts], axis=1)
    bound = np.partition(sample, k - 1, axis=1)[:, k - 1]  # [R]
    del sample
    found = _candidates(parts, bound, row_max, n)
    if found is None:  # many ties at the bound: no gain
        return (*_by_division(parts, row_max, k), row_max)
    cols, d = found
    order = np.lexsort((cols, d), axis=-1)[:, :k]
    idx, vals = np.take_along_axis(cols, order, axis=1), np.take_along_axis(d, order, axis=1)
    # Outside the candidates, M >= next(B): d >= fl(next(B) / max). A k-th d below it is final.
    outside = np.nextafter(bound, np.array(np.inf, bound.dtype)) / row_max
    redo = np.flatnonzero(~(vals[:, -1] < outside))
    if redo.size:
        idx[redo], vals[redo] = _by_division([p[redo] for p in parts], row_max[redo], k)
    return idx, vals, row_max


def _candidates(
    parts: list[np.ndarray], bound: np.ndarray, row_max: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """([R, W] int64 columns, [R, W] d in the parts' dtype) of the entries with M <= bound
    per row, padded with column n and d = inf; None when a row has more than n / 4."""
    num_rows = bound.shape[0]
    found, offset = [], 0
    for part in parts:
        flat = np.flatnonzero(part <= bound[:, None])  # row-major: columns increase in a row
        rows, cols = np.divmod(flat, part.shape[1])
        found.append((rows, cols + offset, np.take(part, flat)))
        offset += part.shape[1]
    counts = [np.bincount(rows, minlength=num_rows) for rows, _, _ in found]
    width = int(np.sum(counts, axis=0).max())
    if width > n // 4:
        return None
    out_cols = np.full((num_rows, width), n, np.int64)  # padding sorts after every column
    out_d = None
    before = np.zeros(num_rows, np.int64)  # slots taken by earlier parts (lower columns)
    for (rows, cols, vals), count in zip(found, counts, strict=True):
        slot = before[rows] + np.arange(rows.shape[0]) - np.repeat(np.cumsum(count) - count, count)
        d = vals / row_max[rows]  # the IEEE quotient the full division gives
        if out_d is None:
            out_d = np.full((num_rows, width), np.inf, d.dtype)
        out_cols[rows, slot] = cols
        out_d[rows, slot] = d
        before += count
    return out_cols, out_d


def _by_division(
    parts: list[np.ndarray], row_max: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: divide whole rows (copies), then `smallest_k_of_parts`."""
    return smallest_k_of_parts([p / row_max[:, None] for p in parts], k)
