"""Re-ID evaluation: features -> distances -> CMC / mAP / mINP (no model; numpy, and JAX for
the accelerator path).

Public API:
    evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50) -> dict
    evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric="cosine",
                      max_rank=50, chunk_size=None, rerank=False, ..., memory_mib=None,
                      backend="auto") -> dict   (exact, within a memory budget, on the GPU
                      when there is one)
    evaluate_distance_blocks(distance_block, q_pids, g_pids, q_camids, g_camids, ...)
    evaluate_reranked(pairs, q_pids, g_pids, q_camids, g_camids, k1=20, k2=6,
                      lambda_value=0.3, ...) -> dict   (k-reciprocal re-ranking in blocks of
                      FeatureSetPairs or RuleSetPairs: features or a model's own rule)
    average_query_expansion(q_feats, g_feats, k=5, alpha=3.0) -> (q_feats, g_feats)
    re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3) -> [Q, G]
                      (dense reference: needs the (Q+G)^2 matrix)
    FeatureDistance, pairwise_distance, cosine_distance, squared_euclidean_distance, l2_normalize
    format_results_table(rows) -> str
"""

from occreid_jax.evaluation.distances import (
    METRICS,
    FeatureDistance,
    cosine_distance,
    l2_normalize,
    pairwise_distance,
    squared_euclidean_distance,
)
from occreid_jax.evaluation.protocol import (
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_reranked,
)
from occreid_jax.evaluation.query_expansion import average_query_expansion
from occreid_jax.evaluation.ranking import evaluate_rank
from occreid_jax.evaluation.report import format_results_table
from occreid_jax.evaluation.rerank import k_reciprocal_rerank, re_ranking
from occreid_jax.evaluation.set_pairs import FeatureSetPairs, RuleSetPairs

__all__ = [
    "METRICS",
    "FeatureDistance",
    "FeatureSetPairs",
    "RuleSetPairs",
    "average_query_expansion",
    "cosine_distance",
    "evaluate_distance_blocks",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_reranked",
    "format_results_table",
    "k_reciprocal_rerank",
    "l2_normalize",
    "pairwise_distance",
    "re_ranking",
    "squared_euclidean_distance",
]
