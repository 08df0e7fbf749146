"""k-reciprocal re-ranking in blocks: the results of `rerank.py` without the (Q+G)^2 matrix.

Zhong et al., CVPR 2017, with the steps of `rerank.py`. The input is M, the (Q+G) x (Q+G)
distances by rows (`set_pairs.py`: row a is image a as the probe against every image), and
d = M / (row maxima of M). This is `rerank.k_reciprocal_rerank(M.T)`, which equals
`k_reciprocal_rerank(M)` for a symmetric M: the authors divide each column by its maximum
and transpose. For features, `FeatureSetPairs` computes the rows as the dense version's
columns, bit for bit.

Three passes, none holding more than a block of rows of M:

1. neighbours: for each block of probes, the rows of M, their maxima, d, and the
   K = max(k1 + 1, k2) nearest of every row with their d (ties by index);
2. expansion: the expanded k-reciprocal sets from the neighbour lists alone; the d[i, j] of
   their pairs, from the lists when j is among i's K nearest (most pairs), else computed pair
   by pair (features) or read in a second pass over the row blocks (a rule); V and its local
   query expansion as sparse rows (`kreciprocal.py`);
3. final distances, for a block of queries at a time, when the ranking asks for it: the
   Jaccard distance through the gallery columns of V, plus lambda times d[q, Q:].

Memory: half of `memory_mib` for blocks of rows, half for chunks of the sparse steps, plus
the neighbour lists (N x K int64 and float32), the row maxima and the sparse V (~8 bytes per
entry, about a hundred entries per row). Time: one pass of M for features (two for a rule),
where the dense version fills the matrix, then scans it.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tqdm

from occreid_jax.evaluation import kreciprocal
from occreid_jax.evaluation.blocks import DEFAULT_MEMORY_MIB
from occreid_jax.evaluation.scaled_nearest import nearest_scaled
from occreid_jax.evaluation.set_pairs import FeatureSetPairs, SetPairs, probe_slices

# Working bytes per (query, gallery) distance of a final block: the shared sums and their
# Jaccard (float64), the block and its ranking (float32); and per Jaccard meeting.
FINAL_BYTES_PER_DISTANCE = 32
BYTES_PER_ENTRY = 48


class BlockedReRanking:
    """Re-ranked query-gallery distances, a block of queries at a time.

    Passes 1 and 2 run at construction; `self(rows)` runs pass 3 for the queries `rows`,
    the `distance_block` that `protocol.evaluate_distance_blocks` ranks.

    Args:
        pairs: the rows of M (`FeatureSetPairs` or `RuleSetPairs`).
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
        memory_mib: working memory of the blocks (default 256 MiB).
        block_rows: probe rows per block (overrides the budget).
        backend: "numpy" or "jax" (the neighbour pass and the query-gallery distances of
            features on the default device).
        progress: progress bars.

    Attributes:
        timings: seconds spent in "neighbours", "expansion" and "jaccard" (pass 3 so far).
        block_rows: the probe rows per block used.
    """

    def __init__(
        self,
        pairs: SetPairs,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        memory_mib: float | None = None,
        block_rows: int | None = None,
        backend: str = "numpy",
        progress: bool = False,
    ):
        if k1 < 1 or k2 < 1:
            raise ValueError(f"k1 and k2 must be >= 1, got {k1}, {k2}")
        self.pairs, self.lambda_value = pairs, float(lambda_value)
        n, num_q = pairs.num_images, pairs.num_query
        budget = int((memory_mib or DEFAULT_MEMORY_MIB) * 2**20)
        by_budget = budget_rows(pairs, memory_mib)  # (checks the budget)
        self.block_rows = int(block_rows or by_budget)
        self.chunk_entries = max(1024, budget // (2 * BYTES_PER_ENTRY))
        self.progress = progress
        self.timings = {"neighbours": 0.0, "expansion": 0.0, "jaccard": 0.0}
        self._device = None
        if backend == "jax" and isinstance(pairs, FeatureSetPairs):
            from occreid_jax.evaluation.neighbour_device import DeviceNeighbours

            self._device = DeviceNeighbours(pairs.q, pairs.g, pairs.metric, self.block_rows)

        t0 = time.perf_counter()
        k = min(max(k1 + 1, k2), n)
        neighbors, near_d, self.row_max = self._neighbours(k)
        t1 = time.perf_counter()
        sets = kreciprocal.expanded_sets(neighbors, k1, self.chunk_entries)
        v = kreciprocal.kernel_rows(sets, self._set_distances(sets, neighbors, near_d))
        del sets, near_d
        v = kreciprocal.local_query_expansion(v, neighbors, k2, self.chunk_entries)
        del neighbors
        self.jaccard = kreciprocal.JaccardBlocks(v, num_q, self.chunk_entries)
        self.timings.update(neighbours=t1 - t0, expansion=time.perf_counter() - t1)

    @property
    def shape(self) -> tuple[int, int]:
        """(Q, G)."""
        return self.pairs.num_query, self.pairs.num_gallery

    def _slices(self) -> list[slice]:
        return probe_slices(self.pairs.num_query, self.pairs.num_gallery, self.block_rows)

    def _bar(self, desc: str):
        return tqdm.tqdm(
            total=self.pairs.num_images, unit="image", desc=desc, leave=False,
            disable=not self.progress,
        )  # fmt: skip

    def _neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return neighbour_pass(self.pairs, self.block_rows, k, self._device, self.progress)

    def _set_distances(
        self, sets: kreciprocal.SparseRows, neighbors: np.ndarray, near_d: np.ndarray
    ) -> np.ndarray:
        """[E] float32 d[i, j] of the entries of `sets`: from the neighbour lists when j is
        there (most entries), else computed pair by pair or read in a second pass."""
        rows = sets.row_ids()
        out = np.empty(rows.shape[0], np.float32)
        missing = []
        step = max(1, self.chunk_entries // neighbors.shape[1])
        for s in range(0, rows.shape[0], step):
            r, c = rows[s : s + step], sets.indices[s : s + step]
            hit = neighbors[r] == c[:, None]  # [e, k], at most one True per entry
            found = hit.any(axis=1)
            out[s : s + step][found] = near_d[r[found], hit[found].argmax(axis=1)]
            missing.append(s + np.flatnonzero(~found))
        missing = np.concatenate(missing)
        values = self.pairs.pair_values(
            rows[missing], sets.indices[missing], self.chunk_entries * BYTES_PER_ENTRY
        )
        if values is None:
            values = self._gathered(rows[missing], sets.indices[missing])
        out[missing] = values / self.row_max[rows[missing]]
        return out

    def _gathered(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[E] float32 M[rows, cols] (rows non-decreasing) from a second pass over the blocks."""
        out = np.empty(rows.shape[0], np.float32)
        num_q = self.pairs.num_query
        with self._bar("re-ranking: values") as bar:
            for block in self._slices():
                a, b = np.searchsorted(rows, [block.start, block.stop])
                if b > a:
                    to_q, to_g = self.pairs.block(block)
                    r, c = rows[a:b] - block.start, cols[a:b]
                    in_q = c < num_q
                    out[a:b][in_q] = to_q[r[in_q], c[in_q]]
                    out[a:b][~in_q] = to_g[r[~in_q], c[~in_q] - num_q]
                bar.update(block.stop - block.start)
        return out

    def _to_gallery(self, rows: slice) -> np.ndarray:
        """[R, G] float32 M[rows, Q:] for a block of queries."""
        if self._device is not None:
            return self._device.to_gallery(rows)
        return self.pairs.query_gallery(rows)

    def __call__(self, rows: slice) -> np.ndarray:
        """[R, G] float32 re-ranked distances of the queries `rows` (a slice)."""
        t0 = time.perf_counter()
        d_block = self._to_gallery(rows)
        d_block /= self.row_max[rows, None]
        out = self.jaccard.final(rows, d_block, self.lambda_value)
        self.timings["jaccard"] += time.perf_counter() - t0
        return out


def budget_rows(pairs: SetPairs, memory_mib: float | None) -> int:
    """Probe rows per block: half the budget (default 256 MiB) for blocks of rows of M."""
    budget = int((memory_mib or DEFAULT_MEMORY_MIB) * 2**20)
    if budget <= 0:
        raise ValueError(f"the memory budget must be positive, got {memory_mib} MiB")
    per_row = max(
        pairs.bytes_per_distance * pairs.num_images, FINAL_BYTES_PER_DISTANCE * pairs.num_gallery
    )
    return max(1, budget // (2 * per_row))


def neighbour_pass(
    pairs: SetPairs, block_rows: int, k: int, device=None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: the k nearest of every row of M by d = M / row maximum, block by block.

    Features on the host: two blocks in flight, each in its own thread with half the CPUs for
    its BLAS product, then its selection, so that no core idles while a block is selected
    (on 2 CPUs the pass takes 1.0-1.05x the bare two-thread product, against 1.16x with the
    selection after each product). Two blocks of ~6 bytes per distance (M, the comparison
    mask, the sample) stay within the 16 the budget counts per distance. Rows are
    independent: the same values, bit for bit.

    Args:
        pairs: the rows of M.
        block_rows: probe rows per block.
        k: neighbours per row.
        device: a `neighbour_device.DeviceNeighbours` of the same features, or None (host).
        progress: a progress bar.

    Returns:
        [N, k] int64 nearest by d (ties by index), [N, k] float32 their d, [N] float32 row
        maxima of M.
    """
    n = pairs.num_images
    neighbors, near_d = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    row_max = np.empty(n, np.float32)
    slices = probe_slices(pairs.num_query, pairs.num_gallery, block_rows)

    def nearest(rows: slice):
        if device is not None:
            return device.rerank_rows(rows, k)
        return nearest_scaled(list(pairs.block(rows)), k)

    in_flight = 2 if device is None and isinstance(pairs, FeatureSetPairs) else 1
    share = max(1, worker_count() // in_flight) if in_flight > 1 else None  # BLAS threads
    bar = tqdm.tqdm(
        total=n, unit="image", desc="re-ranking: neighbours", leave=False, disable=not progress
    )
    pool = ThreadPoolExecutor(in_flight)
    try:
        with bar, blas_threads(share):
            for rows, (idx, vals, maxima) in zip(slices, pool.map(nearest, slices), strict=True):
                neighbors[rows], near_d[rows], row_max[rows] = idx, vals, maxima
                bar.update(rows.stop - rows.start)
    finally:  # an error or Ctrl-C: the blocks not started are dropped, not computed
        pool.shutdown(wait=True, cancel_futures=True)
    return neighbors, near_d, row_max


def worker_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def blas_threads(limit: int | None):
    """Holds the BLAS libraries to `limit` threads inside the block (None: unchanged)."""
    if limit is None:
        yield
        return
    import threadpoolctl

    with threadpoolctl.threadpool_limits(limits=limit, user_api="blas"):
        yield
