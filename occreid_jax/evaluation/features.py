"""From a model's embedding function to metrics: features of each split, then matching.

`extract_features` runs the model over a split (its heatmaps too, for pose-guided models; with
several processes each embeds its shard and all get every feature); `evaluate_splits` ranks every
(query, gallery) pair of the evaluated dataset by the model family's `MatchingRule`
(`match_and_rank`). Used by every mode of `experiment.py` and by the training loop.
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
from occreid_jax.evaluation.protocol import evaluate_distance_blocks, evaluate_features


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
        return cache[split_name]

    results = {}
    for row, (query, gallery) in datasets.eval_sets(eval_dataset(config)).items():
        q, g = eval_splits[query], eval_splits[gallery]
        results[row] = summarize(
            match_and_rank(matching, features(query), features(gallery), q, g, config)
        )
    return results


def match_and_rank(
    matching: MatchingRule,
    q_features: dict,
    g_features: dict,
    query: datasets.Split,
    gallery: datasets.Split,
    config,
) -> dict:
    """Metrics of one query set against one gallery, by the model's own matching rule if it
    has one (Pirt, MAT), else by the distance of its global features."""
    rule = matching.own_distance(q_features, config.eval)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    if rule is not None:
        if config.eval.rerank:
            raise UserError(
                "eval.rerank is not available with the model's own matching rule; "
                "set --config.eval.rerank=False"
            )
        distance_block = rule(q_features, g_features)
        return evaluate_distance_blocks(
            distance_block,
            *ids,
            max_rank=config.eval.max_rank,
            chunk_size=config.eval.query_chunk,
            memory_mib=config.eval.memory_mib,
            progress=distributed.is_main_process(),
        )
    return evaluate_features(
        matching.global_feature(q_features),
        matching.global_feature(g_features),
        *ids,
        metric=config.eval.metric,
        max_rank=config.eval.max_rank,
        chunk_size=config.eval.query_chunk,
        rerank=config.eval.rerank,
        memory_mib=config.eval.memory_mib,
        progress=distributed.is_main_process(),
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
