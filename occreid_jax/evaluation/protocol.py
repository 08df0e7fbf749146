"""From features (or any distance function) to CMC / mAP / mINP, one block of queries at a time.

Two entries:

* `evaluate_distance_blocks(distance_block, ...)`: the general driver. `distance_block(rows)`
  returns the [len(rows), G] distances of the queries `rows` (a slice) to the whole gallery;
  each block is ranked as soon as it is computed and dropped, so the Q x G matrix never exists.
  A model with its own matching rule (e.g. Pirt: global distance plus a part distance re-ranked
  over each query's top-N gallery images) plugs in here and keeps the chunking and progress bar.
  A block returned as a JAX array on an accelerator is ranked there (`device.py`).
* `evaluate_features(q_feats, g_feats, ...)`: the standard case, cosine or squared Euclidean
  distances of embeddings, in tiles that fit `memory_mib` whatever the gallery size, on the
  accelerator when there is one (`blocks.py`); optionally with k-reciprocal re-ranking.
* `evaluate_reranked(pairs, ...)`: k-reciprocal re-ranking of any distance over all Q + G images
  (`set_pairs.py`: features or a model's own rule) in blocks (`rerank_blocks.py`), its
  query-gallery blocks ranked by `evaluate_distance_blocks` as they are produced.

Both return the dict of `ranking.evaluate_rank`, exactly (no approximation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm

from occreid_jax.evaluation import blocks as tiling
from occreid_jax.evaluation import distances, ranking
from occreid_jax.evaluation.rerank_blocks import BlockedReRanking
from occreid_jax.evaluation.set_pairs import FeatureSetPairs, SetPairs

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
    memory_mib: float | None = None,
) -> dict:
    """Ranks query blocks as a distance function produces them.

    Args:
        distance_block: `rows: slice -> [len(rows), G]` distances (numpy or jax array, float32
            or float64; smaller is more similar). Called once per block, in query order. A
            JAX array on an accelerator is ranked on it; anything else on the host.
        q_pids: [Q] query person ids.
        g_pids: [G] gallery person ids.
        q_camids: [Q] query camera ids.
        g_camids: [G] gallery camera ids.
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: queries per block; default: as many as fit `memory_mib`.
        progress: show a tqdm progress bar over the queries.
        memory_mib: working memory of a block's ranking (default 256 MiB); at least one
            query row per block.

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
    budget = memory_mib or tiling.DEFAULT_MEMORY_MIB
    step = chunk_size or max(1, int(budget * 2**20) // (tiling.BYTES_PER_DISTANCE["jax"] * num_g))
    blocks = []
    bar = tqdm.tqdm(total=num_q, unit="query", disable=not progress, desc="ranking", leave=False)
    with bar:
        for start in range(0, num_q, step):
            rows = slice(start, min(start + step, num_q))
            dist = distance_block(rows)
            expected = (rows.stop - rows.start, num_g)
            if tuple(dist.shape) != expected:
                raise ValueError(
                    f"distance_block({rows}) returned shape {dist.shape}, expected {expected}"
                )
            if _on_accelerator(dist):
                from occreid_jax.evaluation import device

                pairs = ranking.BlockPairs.build(q_pids[rows], q_camids[rows], gallery)
                vals, smaller, smaller_equal = device.rank_given_block(dist, pairs)
                pos = ~pairs.junk
                blocks.append(ranking.finish_block(pairs, vals, smaller[pos], smaller_equal[pos]))
            else:
                dist = np.asarray(dist)
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
    memory_mib: float | None = None,
    backend: str = "auto",
) -> dict:
    """CMC / mAP / mINP of query and gallery embeddings, exactly, in bounded memory.

    Memory is the features plus about `memory_mib` of distance tiles, whatever the gallery
    size (see `blocks.py`); with `rerank=True`, plus the neighbour lists and sparse rows of
    the re-ranking (`rerank_blocks.py`), never the (Q+G)^2 matrix.

    Args:
        q_feats: [Q, D] query embeddings (flip-averaging, if any, is the caller's job).
        g_feats: [G, D] gallery embeddings.
        q_pids, g_pids, q_camids, g_camids: [Q] / [G] person and camera ids.
        metric: "cosine" (1 - cos) or "euclidean" (squared).
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: queries per block, each against the whole gallery (overrides the budget;
            with `rerank`, images per block in every pass).
        rerank: apply k-reciprocal re-ranking (k1, k2, lambda_value) first.
        k1, k2, lambda_value: re-ranking parameters (paper: 20, 6, 0.3).
        progress: show a progress bar.
        memory_mib: working memory of the distance tiles and their ranking (default 256 MiB;
            on an accelerator, its memory).
        backend: "auto" (on the accelerator when JAX has one, else numpy), "numpy" or "jax".

    Returns:
        The metrics dict of `evaluate_rank`.
    """
    dist = distances.FeatureDistance(q_feats, g_feats, metric)
    num_q, num_g = dist.shape
    q_pids, g_pids, q_camids, g_camids = ranking.check_ids(
        q_pids, g_pids, q_camids, g_camids, num_q, num_g
    )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    backend = tiling.resolve_backend(backend)
    if rerank:
        pairs = FeatureSetPairs(dist.q, dist.g, metric)
        ids = (q_pids, g_pids, q_camids, g_camids)
        return evaluate_reranked(
            pairs, *ids, k1=k1, k2=k2, lambda_value=lambda_value, max_rank=max_rank,
            chunk_size=chunk_size, progress=progress, memory_mib=memory_mib, backend=backend,
        )  # fmt: skip
    if chunk_size:
        rows, cols = min(chunk_size, num_q), num_g
    else:
        budget = memory_mib or tiling.DEFAULT_MEMORY_MIB
        bytes_per = tiling.BYTES_PER_DISTANCE[backend]
        rows, cols = tiling.block_shape(num_q, num_g, budget, bytes_per)
    gallery = ranking.GalleryIndex.build(g_pids, g_camids)
    blocks = tiling.rank_features(dist, q_pids, q_camids, gallery, rows, cols, backend, progress)
    return ranking.summarize_ranks(blocks, max_rank, num_g)


def evaluate_reranked(
    pairs: SetPairs,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
    chunk_size: int | None = None,
    progress: bool = False,
    memory_mib: float | None = None,
    backend: str = "auto",
) -> dict:
    """CMC / mAP / mINP after k-reciprocal re-ranking, exactly, in bounded memory.

    Args:
        pairs: the distances of every image to both sets (`set_pairs.FeatureSetPairs` or
            `set_pairs.RuleSetPairs`).
        q_pids, g_pids, q_camids, g_camids: [Q] / [G] person and camera ids.
        k1, k2, lambda_value: re-ranking parameters (paper: 20, 6, 0.3).
        max_rank: length of the CMC curve; clipped to G.
        chunk_size: images per block in every pass (overrides the budget).
        progress: progress bars.
        memory_mib: working memory of the blocks (default 256 MiB).
        backend: "auto", "numpy" or "jax" (feature distances on the device; rules on the host).

    Returns:
        The metrics dict of `evaluate_rank`.
    """
    ranking.check_ids(q_pids, g_pids, q_camids, g_camids, pairs.num_query, pairs.num_gallery)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    reranked = BlockedReRanking(
        pairs, k1, k2, lambda_value, memory_mib=memory_mib, block_rows=chunk_size,
        backend=tiling.resolve_backend(backend), progress=progress,
    )  # fmt: skip
    return evaluate_distance_blocks(
        reranked, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
        chunk_size=reranked.block_rows, progress=progress, memory_mib=memory_mib,
    )  # fmt: skip


def _on_accelerator(block: Any) -> bool:
    """A JAX array on a GPU/TPU (ranked there rather than copied to the host)."""
    devices = getattr(block, "devices", None)
    if devices is None or isinstance(block, np.ndarray):
        return False
    return any(d.platform != "cpu" for d in devices())
