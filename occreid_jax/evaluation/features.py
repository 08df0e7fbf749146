"""From a model's embedding function to metrics: features of each split, then matching.

`extract_features` runs the model over a split (its heatmaps too, for pose-guided models; with
several processes each embeds its shard and all get every feature); `evaluate_splits` ranks every
(query, gallery) pair of the evaluated dataset by the model family's `MatchingRule`
(`match_and_rank`), plus the rows with query expansion and re-ranking that `config.eval` asks
for. Used by every mode of `experiment.py` and by the training loop.
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from occreid_jax import distributed
from occreid_jax.data import datasets, pipeline
from occreid_jax.data.augment import COCO_FLIP_PERMUTATION
from occreid_jax.errors import UserError
from occreid_jax.evaluation.matching import MatchingRule
from occreid_jax.evaluation.protocol import (
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_reranked,
)
from occreid_jax.evaluation.query_expansion import average_query_expansion
from occreid_jax.evaluation.set_pairs import RuleSetPairs

# Rows added next to each plain row: (name suffix, query expansion, re-ranking).
VARIANTS = ((" +AQE", True, False), (" +re-rank", False, True), (" +AQE +re-rank", True, True))


def _mirror_heatmaps(heatmaps):
    """Heatmaps [..., h, w, 17] of the mirrored image: flipped, left and right joints swapped."""
    if heatmaps is None:
        return None
    return heatmaps[..., ::-1, :][..., list(COCO_FLIP_PERMUTATION)]


def extract_features(embed_batch, split: datasets.Split, config, desc: str) -> dict:
    """Runs the model over a split in order.

    Args:
      embed_batch: (images [D, b, H, W, 3] normalised, heatmaps [D, b, H/4, W/4, 17] or None)
        -> dict of [D, b, ...] features.
      split: the images to embed; its heatmaps (if loaded) go to the model too.
      config: the run config (data.image_size, data.eval_batch_size, eval.flip).
    Returns:
      dict of [N, ...] float32 numpy features; with eval.flip, the mean of the features of
      each image and its mirror (fast-reid's flip test). With several processes, each embeds
      its devices' rows of every batch and all get every feature (distributed.py).
    """
    num_devices, shard = jax.device_count(), distributed.shard()
    batches = pipeline.eval_batches(
        split,
        image_size=config.data.image_size,
        batch_size=config.data.eval_batch_size,
        num_devices=num_devices,
        shard=shard,
        with_heatmaps=split.heatmaps is not None,
    )
    chunks: dict[str, list] = {}
    total = -(-len(split) // config.data.eval_batch_size)
    quiet = not distributed.is_main_process()
    for batch in tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=quiet):
        heatmaps = batch.get("heatmaps")
        features = embed_batch(batch["images"], heatmaps)
        if config.eval.flip:
            mirrored = embed_batch(batch["images"][:, :, :, ::-1], _mirror_heatmaps(heatmaps))
            features = jax.tree.map(lambda a, b: (a + b) / 2, features, mirrored)
        mask = batch["mask"].reshape(-1)
        for key, value in jax.device_get(features).items():
            value = np.asarray(value)
            chunks.setdefault(key, []).append(value.reshape(-1, *value.shape[2:])[mask])
    features = {key: np.concatenate(parts) for key, parts in chunks.items()}
    order, valid = pipeline.eval_rows(len(split), config.data.eval_batch_size, num_devices, shard)
    return distributed.gather_rows(features, order[valid], len(split))


def evaluate_splits(embed_batch, matching: MatchingRule, eval_splits: dict, config) -> dict:
    """Metrics for every (query, gallery) pair of the dataset, keyed by row name."""
    cache: dict[str, dict] = {}

    def features(split_name):
        if split_name not in cache:
            cache[split_name] = extract_features(
                embed_batch, eval_splits[split_name], config, desc=f"embed {split_name}"
            )
            check_finite(cache[split_name], split_name)
        return cache[split_name]

    results = {}
    for row, (query, gallery) in datasets.eval_sets(eval_dataset(config)).items():
        q, g = eval_splits[query], eval_splits[gallery]
        plain = (features(query), features(gallery), None)
        rows = variants(config.eval)
        aqe_rows = any(aqe for _, aqe, _ in rows)
        expanded = expand_queries(matching, *plain[:2], config.eval) if aqe_rows else None
        for suffix, aqe, rerank in [("", False, False), *rows]:
            q_features, g_features, given = expanded if aqe else plain
            metrics = match_and_rank(matching, q_features, g_features, q, g, config, rerank, given)
            results[row + suffix] = summarize(metrics)
    return results


def variants(eval_config) -> list[tuple[str, bool, bool]]:
    """The extra rows `eval.aqe` and `eval.rerank` ask for (see `VARIANTS`)."""
    aqe, rerank = bool(eval_config.aqe), bool(eval_config.rerank)
    return [v for v in VARIANTS if (aqe or not v[1]) and (rerank or not v[2])]


def expand_queries(matching: MatchingRule, q_features: dict, g_features: dict, eval_config):
    """Average query expansion of the global features (`query_expansion.py`).

    Returns:
      (query embeddings, gallery embeddings, (query global [Q, D], gallery global [G, D])):
      the embeddings with the expanded global feature put back for the own rule to read.
    """
    q_global, g_global = average_query_expansion(
        matching.global_feature(q_features), matching.global_feature(g_features),
        k=eval_config.aqe_k, alpha=eval_config.aqe_alpha, memory_mib=eval_config.memory_mib,
        progress=distributed.is_main_process(),
    )  # fmt: skip
    return (
        matching.with_global(q_features, q_global),
        matching.with_global(g_features, g_global),
        (q_global, g_global),
    )


def match_and_rank(
    matching: MatchingRule,
    q_features: dict,
    g_features: dict,
    query: datasets.Split,
    gallery: datasets.Split,
    config,
    rerank: bool = False,
    global_features: tuple | None = None,
) -> dict:
    """Metrics of one query set against one gallery, by the model's own matching rule if it
    has one (Pirt, MAT), else by the distance of its global features (`global_features`
    when given, e.g. after query expansion); with k-reciprocal re-ranking if `rerank`."""
    ev = config.eval
    rule = matching.own_distance(q_features, ev)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    common = {
        "max_rank": ev.max_rank,
        "chunk_size": ev.query_chunk,
        "memory_mib": ev.memory_mib,
        "progress": distributed.is_main_process(),
    }
    if rerank:
        common.update(k1=ev.rerank_k1, k2=ev.rerank_k2, lambda_value=ev.rerank_lambda)
    if rule is None:
        q_global, g_global = global_features or (
            matching.global_feature(q_features),
            matching.global_feature(g_features),
        )
        return evaluate_features(
            q_global, g_global, *ids, metric=ev.metric, rerank=rerank, **common
        )
    if not rerank:
        return evaluate_distance_blocks(rule(q_features, g_features), *ids, **common)
    try:
        pairs = RuleSetPairs(rule, q_features, g_features)
    except ValueError as error:  # e.g. a setting that needs more candidates than probes
        raise UserError(f"re-ranking by the model's own rule: {error}") from None
    return evaluate_reranked(pairs, *ids, **common)


def check_finite(features: dict, split_name: str) -> None:
    """A one-line UserError when a model's features hold NaN or inf (a diverged checkpoint)."""
    for key, value in features.items():
        bad = ~np.isfinite(value).reshape(len(value), -1).all(axis=1)
        if bad.any():
            raise UserError(
                f"the model's {key!r} features of {bad.sum()} of {len(value)} {split_name} "
                "images are NaN or inf (a diverged checkpoint?); retrain with a lower "
                "--config.train.lr"
            )


def eval_dataset(config) -> str:
    """The dataset evaluated: `data.test_name` (cross-dataset protocol) or the training one."""
    return config.data.test_name or config.data.name


def summarize(metrics: dict) -> dict:
    """JSON-able metrics: mAP, mINP, Rank-1/5/10/20, the CMC curve, number of queries."""
    cmc = np.asarray(metrics["cmc"])
    summary = {"mAP": float(metrics["mAP"]), "mINP": float(metrics["mINP"])}
    for rank in (1, 5, 10, 20):
        summary[f"rank{rank}"] = float(cmc[min(rank, len(cmc)) - 1])
    summary["num_queries"] = int(metrics["num_valid"])
    summary["cmc"] = cmc.tolist()
    return summary
