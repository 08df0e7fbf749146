"""From features (or any distance function) to CMC / mAP / mINP, one block of queries at a time.

Two entries:

* `evaluate_distance_blocks(distance_block, ...)`: the general driver. `distance_block(rows)`
  returns the [len(rows), G] distances of the queries `rows` (a slice) to the whole gallery;
  each block is ranked as soon as it is computed and dropped, so the Q x G matrix never exists.
  A model with its own matching rule (e.g. Pirt: global distance plus a part distance re-ranked
  over each query's top-N gallery images) plugs in here and keeps the chunking and progress bar.
* `evaluate_features(q_feats, g_feats, ...)`: the standard case, cosine or squared Euclidean
  distances of embeddings, optionally with k-reciprocal re-ranking (which does need the whole
  (Q+G)^2 matrix, see `rerank.py`).

Both return the dict of `ranking.evaluate_rank`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm

from occreid_jax.evaluation import distances, ranking
from occreid_jax.evaluation.rerank import k_reciprocal_rerank

DistanceBlockFn = Callable[[slice], Any]


def evaluate_distance_blocks(
    distance_block: DistanceBlockFn,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict:
    """Ranks query blocks as a distance function produces them.

    Args:
        distance_block: `rows: slice -> [len(rows), G]` distances (numpy or jax array, float32
            or float64; smaller is more similar). Called once per block, in query order.
        q_pids: [Q] query person ids.
        g_pids: [G] gallery person ids.
        q_camids: [Q] query camera ids.
        g_camids: [G] gallery camera ids.
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: queries per block; default ~16M distances per block (64 MiB float32).
        progress: show a tqdm progress bar over the queries.

    Returns:
        The metrics dict of `evaluate_rank`.
    """
    num_q, num_g = np.shape(q_pids)[0], np.shape(g_pids)[0]
    q_pids, g_pids, q_camids, g_camids = ranking.check_ids(
        q_pids, g_pids, q_camids, g_camids, num_q, num_g
    )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    gallery = ranking.GalleryIndex.build(g_pids, g_camids)
    step = chunk_size or ranking.default_chunk_size(num_g, num_q)
    blocks = []
    with tqdm.tqdm(total=num_q, unit="query", disable=not progress, desc="ranking") as bar:
        for start in range(0, num_q, step):
            rows = slice(start, min(start + step, num_q))
            dist = np.asarray(distance_block(rows))
            expected = (rows.stop - rows.start, num_g)
            if dist.shape != expected:
                raise ValueError(
                    f"distance_block({rows}) returned shape {dist.shape}, expected {expected}"
                )
            blocks.append(ranking.rank_block(dist, q_pids[rows], q_camids[rows], gallery))
            bar.update(expected[0])
    return ranking.summarize_ranks(blocks, max_rank, num_g)


def evaluate_features(
    q_feats: Any,
    g_feats: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    progress: bool = False,
) -> dict:
    """CMC / mAP / mINP of query and gallery embeddings.

    Without re-ranking, memory is the features plus ~3 blocks of [chunk_size, G] float32.
    With `rerank=True` the (Q+G)^2 float32 matrix is built (4 (Q+G)^2 bytes).

    Args:
        q_feats: [Q, D] query embeddings (flip-averaging, if any, is the caller's job).
        g_feats: [G, D] gallery embeddings.
        q_pids, g_pids, q_camids, g_camids: [Q] / [G] person and camera ids.
        metric: "cosine" (1 - cos) or "euclidean" (squared).
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: queries per block (default ~16M distances per block).
        rerank: apply k-reciprocal re-ranking (k1, k2, lambda_value) first.
        k1, k2, lambda_value: re-ranking parameters (paper: 20, 6, 0.3).
        progress: show a progress bar.

    Returns:
        The metrics dict of `evaluate_rank`.
    """
    dist = distances.FeatureDistance(q_feats, g_feats, metric)
    num_q = dist.shape[0]
    if not rerank:
        return evaluate_distance_blocks(
            dist, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size, progress
        )
    everything = np.concatenate([dist.q, dist.g])  # [Q+G, D]
    full = distances.pairwise_distance(everything, everything, metric)
    final = k_reciprocal_rerank(full, num_q, k1, k2, lambda_value, overwrite=True)
    del full
    return ranking.evaluate_rank(final, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size)
