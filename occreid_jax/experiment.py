"""What each `--mode` of `python -m occreid_jax.main` does: train, eval, export, extract,
heatmaps.

Every mode starts from a `Run` (`run.py`): the config checked, the dataset prepared, the model
built from its family record and (except train from scratch) the workdir's latest checkpoint
restored. Training itself is `train_loop.train_and_evaluate`.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from occreid_jax import distributed
from occreid_jax.bundles import atomic, export
from occreid_jax.bundles.export import load_export
from occreid_jax.data import datasets, heatmap_store, pipeline
from occreid_jax.errors import UserError, check_writable
from occreid_jax.evaluation.features import eval_dataset, evaluate_splits, extract_features
from occreid_jax.training import pose, workdir_lock
from occreid_jax.training.run import Run
from occreid_jax.training.train_loop import train_and_evaluate

__all__ = ["evaluate", "export_bundle", "extract", "precompute_heatmaps", "train_and_evaluate"]


def precompute_heatmaps(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Runs the frozen pose net over every split the run reads and stores the heatmaps.

    Resumable: rerunning continues each split where it stopped. Returns the store folders.
    """
    del workdir  # the stores live with the datasets, not with one run
    if jax.process_count() > 1:
        raise UserError("--mode=heatmaps runs in one process; run it without --num_processes")
    if config.pose.net not in pose.POSE_NETS:
        raise UserError(f"unknown pose.net {config.pose.net!r}; use one of {pose.POSE_NETS}")
    run = Run(config, workdir="")
    module, variables = pose.load_pose_net(config)
    pose_fn = pose.parallel_pose_fn(module, variables)
    data = config.data
    jobs = [(data.name, data.builder_config, run.builder, ["train"])]
    eval_name = eval_dataset(config)
    eval_splits = sorted({s for pair in datasets.eval_sets(eval_name).values() for s in pair})
    if run.eval_builder is run.builder:
        jobs[0][3].extend(eval_splits)
    else:
        jobs.append((eval_name, data.test_builder_config, run.eval_builder, eval_splits))
    roots = []
    for dataset, builder_config, builder, split_names in jobs:
        store = pose.store(config, dataset, builder_config)
        for name in split_names:
            split = datasets.load_split(builder, name, with_heatmaps=False)
            batches = pipeline.eval_batches(
                split,
                image_size=data.image_size,
                batch_size=data.eval_batch_size,
                num_devices=run.num_devices,
            )
            heatmap_store.precompute(
                store, name, split.filenames, batches, pose_fn, data.eval_batch_size
            )
        roots.append(store.root)
    return roots


def evaluate(config: ml_collections.ConfigDict, workdir: str, export_path: str = "") -> dict:
    """Evaluates the workdir's latest checkpoint, or an export bundle if `export_path` is set."""
    run = Run(config, workdir)
    if export_path:
        embed, matching, config = load_export(config, run, export_path)
        return evaluate_splits(embed, matching, run.eval_splits, config)
    model, _, state = run.restored_state()  # before the dataset: fail fast without a checkpoint
    with workdir_lock.held(run.workdir, "eval", reads_only=True):
        embed = run.embedder(model, state)
        return evaluate_splits(embed, run.family.matching, run.eval_splits, config)


def export_bundle(config: ml_collections.ConfigDict, workdir: str, path: str = "") -> str:
    """Writes the latest checkpoint as an inference bundle (default `<workdir>/export`)."""
    run = Run(config, workdir)
    if path:  # (the default is in the workdir, whose lock says whether it can be written)
        check_writable(os.path.dirname(os.path.abspath(path)), "--output")
    _, kwargs, state = run.restored_state()
    path = path or os.path.join(run.workdir, "export")
    if not distributed.is_main_process():
        return path
    with workdir_lock.held(run.workdir, "export"):
        return _write_export(config, run, kwargs, state, path)


def _write_export(config, run: Run, kwargs: dict, state, path: str) -> str:
    return export.write(
        path,
        model_name=config.model.name,
        model_kwargs=kwargs,
        variables={"params": state.params, "batch_stats": state.batch_stats},
        image_size=tuple(config.data.image_size),
        matching=run.family.matching.stored_settings(config.eval),
    )


def extract(config: ml_collections.ConfigDict, workdir: str, path: str = "") -> str:
    """Writes query and gallery features, pids, camids to `.npz` (default `<workdir>/features.npz`).

    Keys: `query_features` / `gallery_features` [N, D] (the features the model's matching rule
    compares), `query_pids`, `query_camids`, `gallery_pids`, `gallery_camids`,
    `query_filenames`, `gallery_filenames`, and every embedding as `query_<name>` /
    `gallery_<name>`. Datasets with several query sets add them with their split name.
    """
    run = Run(config, workdir)
    output = path or os.path.join(run.workdir, "features.npz")
    check_writable(os.path.dirname(os.path.abspath(output)), "--output")  # before any work
    model, _, state = run.restored_state()
    with workdir_lock.held(run.workdir, "extract", reads_only=bool(path)):
        return _extract(config, run, model, state, path)


def _extract(config, run: Run, model, state, path: str) -> str:
    embed = run.embedder(model, state)
    arrays = {}
    for split_name, split in run.eval_splits.items():
        prefix = "query" if split_name == "query" else split_name
        features = extract_features(embed, split, config, desc=f"embed {split_name}")
        arrays[f"{prefix}_features"] = run.family.matching.global_feature(features)
        for key, value in features.items():
            arrays[f"{prefix}_{key}"] = value
        arrays[f"{prefix}_pids"] = split.pids
        arrays[f"{prefix}_camids"] = split.camids
        arrays[f"{prefix}_filenames"] = split.filenames
    path = path or os.path.join(run.workdir, "features.npz")
    if not distributed.is_main_process():
        return path
    return atomic.write_npz(path, arrays)
