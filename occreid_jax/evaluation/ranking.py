"""Exact CMC, mAP and mINP from a query x gallery distance matrix, without ranking whole rows.

The protocol is the standard Market-1501 one (fast-reid's `eval_market1501`, torchreid's
`eval_market1501`):

* for each query, gallery entries with the SAME person id AND the SAME camera id are junk and
  are removed before ranking; same-id entries from other cameras are the positives;
* a query with no positive left is skipped: it counts in no average (a warning counts them);
* CMC(k) is 1 if a positive is among the first k kept gallery entries, averaged over the valid
  queries, for k = 1..max_rank (max_rank is clipped to the gallery size);
* AP is the mean over the positives of the precision at the rank of each positive;
* INP = (number of positives) / (1-based rank of the last positive).

Ties: entries at exactly the same distance are scored as the expectation over all orders of
the tie (`ties.py`: McSherry and Najork, ECIR 2008, for AP; the same reasoning for rank-k hits
and INP), so no storage order or sort rule can change a figure, and a collapsed model scores
chance. On distinct distances every figure is bit for bit the plain one (fast-reid and
torchreid's unstable `np.argsort` leaves tie order unspecified). A warning says when a
positive ties with a large share of the gallery.

How it is fast: every metric depends only on where the positives fall: for a positive p,
#{kept j : d_j < d_p} and #{kept j : d_j == d_p}. We sort each row's VALUES (a SIMD sort, ~10x
faster than an argsort), count both with `searchsorted` (left and right) and subtract the junk
entries counted in them. Queries go in row blocks: memory stays at a few copies of one block.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from occreid_jax.errors import UserError
from occreid_jax.evaluation import ties

# A query warns when one of its positives ties with this share of the gallery or more.
TIE_WARNING_SHARE = 0.1
# Row blocks hold about this many distances (float32: 64 MiB) unless the caller says otherwise.
DEFAULT_BLOCK_ELEMENTS = 1 << 24


def default_chunk_size(num_gallery: int, num_query: int | None = None) -> int:
    """Rows per block so that a [rows, num_gallery] block holds ~16M distances (64 MiB float32)."""
    rows = max(16, DEFAULT_BLOCK_ELEMENTS // max(num_gallery, 1))
    if num_query is not None:
        rows = min(rows, max(num_query, 1))
    return int(rows)


class NaNDistancesError(UserError, ValueError):
    """NaN in a distance matrix (NaN features: a diverged model); main prints it as one line."""

    def __init__(self, what: str = "the distance matrix"):
        super().__init__(
            f"{what} contains NaN (NaN features: a diverged checkpoint?); check the features "
            "and the distance function, or retrain with a lower --config.train.lr"
        )


class QueriesLeftOutWarning(UserWarning):
    """Some queries have no positive in the gallery: the metrics leave them out."""


class TiedDistancesWarning(UserWarning):
    """Many gallery entries sit at exactly a positive's distance (see `summarize_ranks`)."""


@dataclasses.dataclass(frozen=True)
class GalleryIndex:
    """Gallery person / camera ids, grouped by person id once for all queries.

    Attributes:
        pids: [G] gallery person ids.
        camids: [G] gallery camera ids.
        order: [G] gallery indices grouped by person id, increasing inside each group.
        group_pids: [U] the sorted distinct gallery person ids.
        group_starts: [U] where each id's group starts in `order`.
        group_sizes: [U] how many gallery entries carry each id.
    """

    pids: np.ndarray
    camids: np.ndarray
    order: np.ndarray
    group_pids: np.ndarray
    group_starts: np.ndarray
    group_sizes: np.ndarray

    @classmethod
    def build(cls, g_pids: Any, g_camids: Any) -> GalleryIndex:
        """Groups the gallery by person id. `g_pids`, `g_camids`: [G] (ints or strings)."""
        pids = np.asarray(g_pids).reshape(-1)
        camids = np.asarray(g_camids).reshape(-1)
        if pids.shape != camids.shape:
            raise ValueError(f"g_pids {pids.shape} and g_camids {camids.shape} differ in length")
        order = np.argsort(pids, kind="stable")
        group_pids, group_starts, group_sizes = np.unique(
            pids[order], return_index=True, return_counts=True
        )
        return cls(pids, camids, order, group_pids, group_starts, group_sizes)

    @property
    def size(self) -> int:
        return int(self.pids.shape[0])

    def same_id_pairs(
        self, q_pids: np.ndarray, q_camids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query, gallery) pairs that share a person id.

        Args:
            q_pids: [C] query person ids.
            q_camids: [C] query camera ids.

        Returns:
            rows [P] query positions (non-decreasing), cols [P] gallery indices (increasing
            within a row), junk [P] bool: True where the camera is also the same (removed),
            False for a positive.
        """
        n_groups = self.group_pids.shape[0]
        if n_groups == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=bool)
        slot = np.minimum(np.searchsorted(self.group_pids, q_pids), n_groups - 1)
        counts = np.where(self.group_pids[slot] == q_pids, self.group_sizes[slot], 0)
        rows = np.repeat(np.arange(q_pids.shape[0]), counts)
        first = np.cumsum(counts) - counts
        within = np.arange(rows.shape[0]) - np.repeat(first, counts)
        cols = self.order[np.repeat(self.group_starts[slot], counts) + within]
        junk = self.camids[cols] == q_camids[rows]
        return rows, cols, junk


class BlockRanks(NamedTuple):
    """Per-query results for one block of C queries (entries of invalid queries are unused).

    Attributes:
        valid: [C] bool, the query has at least one positive after junk removal.
        first_rank: [C] int64, kept entries strictly closer than the first positive (its
            0-based rank when it ties with nothing; -1 if invalid).
        first_tied: [C] int64, kept entries tied with the first positive, itself included.
        first_pos: [C] int64, positives among them.
        ap: [C] float64 average precision, expected over tie orders (NaN if invalid).
        inp: [C] float64 inverse negative penalty, expected over tie orders (NaN if invalid).
        max_tied: [C] int64, the largest tie group that holds a positive (1: no tie).
    """

    valid: np.ndarray
    first_rank: np.ndarray
    first_tied: np.ndarray
    first_pos: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    max_tied: np.ndarray


@dataclasses.dataclass(frozen=True)
class BlockPairs:
    """The (query, gallery) pairs of a block of C queries that the metrics depend on.

    Only queries with at least one positive keep their pairs (the others are skipped).

    Attributes:
        num_queries: C.
        valid: [C] bool, the query has a positive (same id, other camera).
        npos: [C] number of positives of each query.
        rows: [E] query positions in the block (non-decreasing).
        cols: [E] gallery indices (increasing within a row).
        junk: [E] bool, same id and same camera (removed from the ranking); else a positive.
    """

    num_queries: int
    valid: np.ndarray
    npos: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    junk: np.ndarray

    @classmethod
    def build(cls, q_pids: np.ndarray, q_camids: np.ndarray, gallery: GalleryIndex) -> BlockPairs:
        """Pairs of the queries `q_pids`, `q_camids` ([C] each) with the gallery."""
        num_q = q_pids.shape[0]
        rows, cols, junk = gallery.same_id_pairs(q_pids, q_camids)
        npos = np.bincount(rows[~junk], minlength=num_q)
        valid = npos > 0
        keep = valid[rows]  # the junk of skipped queries does not matter
        return cls(num_q, valid, npos, rows[keep], cols[keep], junk[keep])


def count_smaller(tile: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, ...]:
    """Entries of a distance tile's rows strictly below, and at or below, given values.

    Summed over the tiles of a row (whole rows or gallery ranges), the counts say where each
    value falls in the whole gallery: `smaller` entries before its tie group, `smaller_equal`
    up to the end of it.

    Args:
        tile: [C, T] distances of C queries to T gallery entries (any float dtype; not modified).
        rows: [E] rows of the tile (non-decreasing).
        vals: [E] the values, each compared with its row (bit for bit the same computation as
            the tile's own entries, so an entry's own value ties with itself).

    Returns:
        (smaller [E], smaller_equal [E]) int64 counts.

    Raises:
        NaNDistancesError: the tile contains NaN.
    """
    smaller = np.zeros(rows.shape[0], dtype=np.int64)
    smaller_equal = np.zeros(rows.shape[0], dtype=np.int64)
    if rows.shape[0] == 0:
        return smaller, smaller_equal
    # Sorted values of the rows with entries: a value sort, much faster than an argsort.
    needed = np.unique(rows)
    if needed.size == tile.shape[0]:
        srt = np.sort(tile, axis=1)
    else:
        srt = tile[needed]  # a copy, sorted in place
        srt.sort(axis=1)
    if np.isnan(srt[:, -1]).any():  # NaN sorts last, so the last column finds any NaN
        raise NaNDistancesError()
    srt_row = np.zeros(tile.shape[0], dtype=np.int64)
    srt_row[needed] = np.arange(needed.size)  # tile row -> row of `srt`
    bounds = np.flatnonzero(np.diff(rows)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    stops = np.concatenate([bounds, [rows.shape[0]]]).tolist()
    for a, b in zip(starts, stops, strict=True):  # the entries of a row are contiguous
        row_sorted = srt[srt_row[rows[a]]]
        smaller[a:b] = row_sorted.searchsorted(vals[a:b], side="left")
        smaller_equal[a:b] = row_sorted.searchsorted(vals[a:b], side="right")
    return smaller, smaller_equal


def _within_rows(counts: np.ndarray, group_rows: np.ndarray) -> np.ndarray:
    """Exclusive running sum of `counts` [N] restarted at each new row of `group_rows` [N]."""
    running = np.cumsum(counts) - counts
    new_row = np.ones(group_rows.shape[0], dtype=bool)
    new_row[1:] = group_rows[1:] != group_rows[:-1]
    first = np.maximum.accumulate(np.where(new_row, np.arange(group_rows.shape[0]), 0))
    return running - running[first]


def finish_block(
    pairs: BlockPairs, vals: np.ndarray, smaller: np.ndarray, smaller_equal: np.ndarray
) -> BlockRanks:
    """Per-query results from the distances of the pairs and where the positives fall.

    Args:
        pairs: the block's pairs.
        vals: [E] distance of every pair (positives and junk).
        smaller, smaller_equal: [number of positives] for each positive pair, in pair order, the
            gallery entries (junk included) strictly closer / at most as far (`count_smaller`).

    Returns:
        A `BlockRanks`; ties are scored as the expectation over their orders (`ties.py`).
    """
    num_q = pairs.num_queries
    first_rank = np.full(num_q, -1, dtype=np.int64)
    first_tied = np.zeros(num_q, dtype=np.int64)
    first_pos = np.zeros(num_q, dtype=np.int64)
    max_tied = np.zeros(num_q, dtype=np.int64)
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    valid, npos = pairs.valid, pairs.npos
    if not valid.any():
        return BlockRanks(valid, first_rank, first_tied, first_pos, ap, inp, max_tied)
    rows, cols, junk = pairs.rows, pairs.cols, pairs.junk
    pos = ~junk
    valid_rows = np.flatnonzero(valid)
    p_offsets = np.concatenate([[0], np.cumsum(npos)])

    # The pairs by (row, distance, gallery index); groups of equal (row, distance).
    order = np.lexsort((cols, vals, rows))
    rows_s, vals_s, junk_s = rows[order], vals[order], junk[order]
    new_group = np.ones(order.shape[0], dtype=bool)
    new_group[1:] = (rows_s[1:] != rows_s[:-1]) | (vals_s[1:] != vals_s[:-1])
    group = np.cumsum(new_group) - 1
    num_groups = int(group[-1]) + 1
    group_junk = np.bincount(group[junk_s], minlength=num_groups)
    group_pos = np.bincount(group[~junk_s], minlength=num_groups)
    group_rows = rows_s[new_group]
    junk_below = _within_rows(group_junk, group_rows)  # junk strictly closer, same row
    pos_below = _within_rows(group_pos, group_rows)  # positives strictly closer, same row

    # Each positive, in (row, distance, index) order: its group's s, t, p, b (see ties.py).
    pos_s = ~junk_s
    g = group[pos_s]
    pos_index = np.cumsum(pos) - 1  # flat entry -> index among positives
    at = pos_index[order[pos_s]]
    s = smaller[at] - junk_below[g]
    t = smaller_equal[at] - junk_below[g] - group_junk[g] - s
    p, b = group_pos[g], pos_below[g]
    ranks_rows = rows_s[pos_s]
    # Untied positives keep the plain formula (bit for bit the untied evaluation).
    precision = (b + 1) / (s + 1.0)
    tied = t > 1
    if tied.any():
        precision[tied] = ties.expected_precision(s[tied], t[tied], p[tied], b[tied])
    precision_sum = np.bincount(ranks_rows, weights=precision, minlength=num_q)
    ap[valid] = precision_sum[valid] / npos[valid]
    first = p_offsets[valid_rows]
    first_rank[valid], first_tied[valid], first_pos[valid] = s[first], t[first], p[first]
    max_tied[valid] = np.maximum.reduceat(t, first)
    last = p_offsets[valid_rows + 1] - 1
    inp[valid] = npos[valid] / (s[last] + 1.0)
    for q, e in zip(valid_rows.tolist(), last.tolist(), strict=True):
        if t[e] > 1:
            inp[q] = npos[q] * ties.expected_inverse_last_rank(int(s[e]), int(t[e]), int(p[e]))
    return BlockRanks(valid, first_rank, first_tied, first_pos, ap, inp, max_tied)


def rank_block(
    dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, gallery: GalleryIndex
) -> BlockRanks:
    """Ranks the positives of a block of queries exactly (ties: expectation over their orders).

    Args:
        dist: [C, G] distances of C queries to the whole gallery (any float dtype; not modified).
        q_pids: [C] query person ids.
        q_camids: [C] query camera ids.
        gallery: the gallery ids, see `GalleryIndex.build`.

    Returns:
        A `BlockRanks` for the C queries.
    """
    pairs = BlockPairs.build(q_pids, q_camids, gallery)
    vals = dist[pairs.rows, pairs.cols]
    pos = ~pairs.junk
    smaller, smaller_equal = count_smaller(dist, pairs.rows[pos], vals[pos])
    return finish_block(pairs, vals, smaller, smaller_equal)


def summarize_ranks(blocks: Sequence[BlockRanks], max_rank: int, num_gallery: int) -> dict:
    """Joins per-block results into the metrics dict (see `evaluate_rank` for the keys).

    Warns (`TiedDistancesWarning`) when, for at least one query, a positive ties with
    `TIE_WARNING_SHARE` or more of the gallery: the figures are then partly chance.
    """
    valid = np.concatenate([b.valid for b in blocks])
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise UserError(
            "no query has a positive in the gallery (same id, other camera): check that the "
            "query and gallery come from the same dataset split and carry comparable ids"
        )
    first, tied, npos_first = (
        np.concatenate([getattr(b, name) for b in blocks])[valid]
        for name in ("first_rank", "first_tied", "first_pos")
    )
    ap = np.concatenate([b.ap for b in blocks])[valid]
    inp = np.concatenate([b.inp for b in blocks])[valid]
    max_rank = min(int(max_rank), int(num_gallery))
    plain = tied == 1
    hits = np.bincount(np.minimum(first[plain], max_rank), minlength=max_rank + 1)[:max_rank]
    expected = ties.expected_hits(first[~plain], tied[~plain], npos_first[~plain], max_rank)
    max_tied = np.concatenate([b.max_tied for b in blocks])[valid]
    if num_valid < valid.shape[0]:
        warnings.warn(
            f"{valid.shape[0] - num_valid} of {valid.shape[0]} queries have no positive in the "
            "gallery (same id, other camera): left out of the metrics, as the protocol does",
            QueriesLeftOutWarning,
            stacklevel=2,
        )
    heavy = int(np.count_nonzero((max_tied > 1) & (max_tied >= TIE_WARNING_SHARE * num_gallery)))
    if heavy:
        warnings.warn(
            f"{heavy} of {num_valid} queries have a positive tied with at least "
            f"{TIE_WARNING_SHARE:.0%} of the gallery (equal distances; collapsed features?): "
            "ties are scored as the mean over their orders, so those figures are partly chance",
            TiedDistancesWarning,
            stacklevel=2,
        )
    return {
        "cmc": (np.cumsum(hits) + expected.sum(axis=0)) / num_valid,
        "mAP": float(ap.mean()),
        "mINP": float(inp.mean()),
        "AP": ap,
        "INP": inp,
        "valid": valid,
        "num_valid": num_valid,
    }


def check_ids(
    q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, num_query: int, num_gallery: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns the four id arrays as 1-D numpy arrays, or raises a one-line ValueError."""
    arrays = [np.asarray(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    names = ("q_pids", "g_pids", "q_camids", "g_camids")
    expected = (num_query, num_gallery, num_query, num_gallery)
    for name, arr, n in zip(names, arrays, expected, strict=True):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    if num_gallery == 0:
        raise ValueError("the gallery is empty")
    return arrays[0], arrays[1], arrays[2], arrays[3]


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> dict:
    """CMC, mAP and mINP of a query x gallery distance matrix (Market-1501 protocol).

    Tied distances are scored as the expectation over all their orders (module docstring).

    Args:
        distmat: [Q, G] distances, smaller is more similar (float32 or float64; kept as is).
        q_pids: [Q] query person ids.
        g_pids: [G] gallery person ids.
        q_camids: [Q] query camera ids.
        g_camids: [G] gallery camera ids.
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: queries per block (memory: ~2 blocks of [chunk_size, G]); default ~16M
            distances per block.

    Returns:
        A dict with
          "cmc": [min(max_rank, G)] float64, CMC(k) for k = 1.., over the valid queries
              (expected hits where the first positive ties);
          "mAP", "mINP": floats in [0, 1];
          "AP", "INP": [num_valid] float64 per valid query, in query order;
          "valid": [Q] bool, the query has a positive after junk removal;
          "num_valid": int.

    Raises:
        UserError: no query has a positive.
        ValueError: bad shapes, NaN distances, max_rank < 1.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be [num_query, num_gallery], got shape {distmat.shape}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = check_ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g)
    gallery = GalleryIndex.build(g_pids, g_camids)
    step = chunk_size or default_chunk_size(num_g, num_q)
    blocks = [
        rank_block(distmat[s : s + step], q_pids[s : s + step], q_camids[s : s + step], gallery)
        for s in range(0, num_q, step)
    ]
    return summarize_ranks(blocks, max_rank, num_g)
