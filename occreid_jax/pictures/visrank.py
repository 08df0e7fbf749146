"""`--mode=visrank`: pictures of the evaluation's ranked lists, where the model fails first.

For each evaluation row (query split, gallery split) of the evaluated dataset, the queries are
ranked by the model's own matching rule (as `--mode=eval`), their average precision computed
by the evaluation protocol, and for `vis.num_queries` of them, ordered by `vis.sort`
(`worst_ap`, `best_ap` or `index`), one picture: the query, then its `vis.top_k` nearest
gallery images with their distance and a border

    green  the same identity from another camera (a correct match);
    red    another identity;
    grey   junk under the protocol (the same identity and camera; not counted).

Pirt and MAT pictures also print each image's per-part confidence (Pirt) or visibility (MAT).
Written to `<workdir>/visrank/<row>/`, with an `index.html` listing the queries and their AP.

    python -m occreid_jax.main --config=configs/mat.py:synthetic --workdir=runs/mat \
        --mode=visrank --config.vis.sort=worst_ap
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from occreid_jax.bundles.export import load_export
from occreid_jax.bundles.gallery_search import top_k
from occreid_jax.data import datasets
from occreid_jax.data.image_files import decode_rgb
from occreid_jax.errors import UserError
from occreid_jax.evaluation.features import eval_dataset, extract_features, match_and_rank
from occreid_jax.pictures import rank_pictures
from occreid_jax.training.run import Run

SORTS = ("worst_ap", "best_ap", "index")
# Embeddings printed under each image: per-part confidence (Pirt) or visibility (MAT).
PART_SCORES = ("confidence", "visibility")


def border_colours(q_pid, q_camid, g_pids, g_camids) -> list[tuple[int, int, int]]:
    """Green (same id, other camera), grey (same id and camera: junk), red (other id)."""
    colours = []
    for pid, camid in zip(g_pids, g_camids, strict=True):
        if pid != q_pid:
            colours.append(rank_pictures.RED)
        else:
            colours.append(rank_pictures.GREY if camid == q_camid else rank_pictures.GREEN)
    return colours


def query_order(ap: np.ndarray, valid: np.ndarray, sort: str) -> np.ndarray:
    """Query indices to draw: valid queries by AP (worst or best first, ties by index) or all
    queries in index order.

    Args:
      ap: [num_valid] AP of the valid queries, in query order.
      valid: [Q] bool.
    """
    if sort not in SORTS:
        raise UserError(f"unknown vis.sort {sort!r}; use one of {', '.join(SORTS)}")
    if sort == "index":
        return np.arange(valid.shape[0])
    indices = np.flatnonzero(valid)
    key = ap if sort == "worst_ap" else -ap
    return indices[np.argsort(key, kind="stable")]


def _scores(features: dict, index: int) -> str:
    for key in PART_SCORES:
        if key in features:
            values = np.asarray(features[key][index]).reshape(-1)
            return key[:4] + " " + " ".join(f"{v:.2f}".lstrip("0") for v in values)
    return ""


def _embedding(config, workdir: str, export_path: str):
    """(embed_batch, matching rule, config with the matching settings, run): a checkpoint's
    or a bundle's (`bundles.export.load_export`)."""
    run = Run(config, workdir)
    if export_path:
        return (*load_export(config, run, export_path), run)
    model, _, state = run.restored_state()
    config = ml_collections.ConfigDict(config.to_dict())
    return run.embedder(model, state), run.family.matching, config, run


def visrank(config: ml_collections.ConfigDict, workdir: str, export_path: str = "") -> list[str]:
    """Writes the ranked-list pictures and an index.html per evaluation row; returns the pages."""
    vis = config.vis
    if vis.top_k < 1 or vis.num_queries < 1:
        raise UserError("vis.top_k and vis.num_queries must be at least 1")
    embed, matching, config, run = _embedding(config, workdir, export_path)
    settings = matching.stored_settings(config.eval)
    size = tuple(config.data.image_size)
    pages, cache = [], {}
    for row, (q_name, g_name) in datasets.eval_sets(eval_dataset(config)).items():
        for name in (q_name, g_name):
            if name not in cache:
                split = run.eval_splits[name]
                cache[name] = extract_features(embed, split, config, desc=f"embed {name}")
        q, g = run.eval_splits[q_name], run.eval_splits[g_name]
        qf, gf = cache[q_name], cache[g_name]
        metrics = match_and_rank(matching, qf, gf, q, g, config)
        ap = np.full(len(q), np.nan)
        ap[metrics["valid"]] = metrics["AP"]
        chosen = query_order(metrics["AP"], metrics["valid"], vis.sort)[: vis.num_queries]
        indices, distances = top_k(
            matching, settings, _rows(qf, chosen), gf, vis.top_k, config.eval.memory_mib
        )
        out_dir = os.path.join(run.workdir, "visrank", re.sub(r"[^A-Za-z0-9_.-]+", "_", row))
        os.makedirs(out_dir, exist_ok=True)
        for stale in os.listdir(out_dir):  # pictures of an earlier run with other settings
            if re.fullmatch(r"\d{5}_.*\.png", stale):
                os.remove(os.path.join(out_dir, stale))
        entries = []
        for n, (qi, row_idx, dists) in enumerate(zip(chosen, indices, distances, strict=True)):
            captions = [
                [f"#{r} {d:.3f}", f"id {g.pids[gi]} c{g.camids[gi]}", _scores(gf, gi)]
                for r, (gi, d) in enumerate(zip(row_idx, dists, strict=True), 1)
            ]
            strip = rank_pictures.ranked_strip(
                decode_rgb(q.images[qi], size),
                [decode_rgb(g.images[gi], size) for gi in row_idx],
                captions,
                border_colours(q.pids[qi], q.camids[qi], g.pids[row_idx], g.camids[row_idx]),
                query_caption=(
                    f"AP {ap[qi]:.3f}" if np.isfinite(ap[qi]) else "no positive",
                    f"id {q.pids[qi]} c{q.camids[qi]}",
                    _scores(qf, qi),
                ),
            )
            picture = rank_pictures.picture_name(n, q.filenames[qi])
            rank_pictures.write_png(os.path.join(out_dir, picture), strip)
            ap_text = f"AP {ap[qi]:.3f}" if np.isfinite(ap[qi]) else "no positive"
            entries.append((picture, f"query {qi} {q.filenames[qi]}: {ap_text}"))
        note = (
            f"mAP {metrics['mAP']:.4f}; {len(chosen)} of {len(q)} queries, sorted by {vis.sort}; "
            "border: green same identity, red other identity, grey junk (same identity and camera)"
        )
        pages.append(rank_pictures.write_index(out_dir, f"{row}: ranked lists", entries, note))
    return pages


def _rows(features: dict, rows: np.ndarray) -> dict:
    return {key: value[rows] for key, value in features.items()}
