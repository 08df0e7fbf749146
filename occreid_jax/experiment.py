"""What each `--mode` of `python -m occreid_jax.main` does: train, eval, export, extract.

Every mode starts the same way: prepare the dataset, build the model from `config.model`,
and (except train from scratch) restore the workdir's latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from occreid_jax import distributed, evaluation, export, flow_probe, matching, nets, optim, pose
from occreid_jax.checkpointing import Checkpointer
from occreid_jax.data import datasets, heatmap_store, pipeline
from occreid_jax.data.sampler import IdentitySampler, check_batch_layout
from occreid_jax.errors import UserError
from occreid_jax.evaluation import pirt_matching
from occreid_jax.features import (
    eval_dataset,
    evaluate_splits,
    extract_features,
)
from occreid_jax.losses.objectives import loss_settings, make_objective
from occreid_jax.metrics_log import MetricsLog
from occreid_jax.train import (
    create_train_state,
    make_forward,
    parallel_embed,
    parallel_train_step,
    replicate,
)

TRIPLET_METRICS = ("euclidean", "sqeuclidean", "cosine")
# Backbones with converters for ImageNet checkpoints (occreid_jax/convert.py).
PRETRAINED_BACKBONES = ("resnet50", "resnet50_ibn_a")
# config.model fields that are not constructor arguments of the model.
NON_MODEL_FIELDS = ("name", "backbone_init")


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """Constructor arguments of the configured model (JSON-able, stored in checkpoints).

    Fields the model does not take are left out, so one config can switch `model.name` (e.g.
    the `baseline` row of Pirt's ablation table keeps Pirt's other fields).
    """
    accepted = set(nets.MODELS[config.model.name].__dataclass_fields__)
    kwargs = {k: v for k, v in config.model.items() if k not in NON_MODEL_FIELDS and k in accepted}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    return {**kwargs, "num_classes": int(num_classes), "dtype": config.train.dtype}


def _signature(config, kwargs: dict) -> dict:
    return {
        "model": config.model.name,
        "model_kwargs": kwargs,
        "image_size": list(config.data.image_size),
    }


# Config fields that must be positive integers (None allowed where noted in the config).
POSITIVE_FIELDS = (
    ("train", "epochs"),
    ("train", "log_every_steps"),
    ("train", "checkpoint_every_steps"),
    ("train", "eval_every_epochs"),
    ("train", "max_checkpoints"),
    ("train", "steps_per_epoch"),
    ("eval", "max_rank"),
    ("eval", "query_chunk"),
    ("data", "eval_batch_size"),
)


PAIR_EXAMPLES = {"image_size": (256, 128), "adam_betas": (0.9, 0.999)}


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    for section, name in POSITIVE_FIELDS:
        value = config[section][name]
        if value is None and name in ("steps_per_epoch", "query_chunk"):
            continue
        if not isinstance(value, int) or value < 1:
            raise UserError(
                f"{section}.{name}={value!r} must be a positive integer; "
                f"set --config.{section}.{name}"
            )
    for section, name in (("data", "image_size"), ("train", "adam_betas")):
        if len(config[section][name]) != 2:
            raise UserError(
                f"{section}.{name}={tuple(config[section][name])} needs two values; "
                f"e.g. --config.{section}.{name}='{PAIR_EXAMPLES[name]}'"
            )
    if not config.eval.memory_mib > 0:
        raise UserError(
            f"eval.memory_mib={config.eval.memory_mib!r} must be positive; "
            "set --config.eval.memory_mib"
        )
    devices = jax.device_count()  # of all processes
    if config.data.eval_batch_size % devices:
        raise UserError(
            f"data.eval_batch_size={config.data.eval_batch_size} is not divisible by the "
            f"{devices} devices; set --config.data.eval_batch_size to a multiple of {devices}"
        )


def _check_config(config: ml_collections.ConfigDict) -> None:
    _check_numbers(config)
    if config.model.name not in nets.MODELS:
        raise UserError(
            f"unknown model.name {config.model.name!r}; use one of {', '.join(nets.MODELS)}"
        )
    if config.train.dtype not in ("float32", "bfloat16"):
        raise UserError(
            f"train.dtype={config.train.dtype!r} is not supported; use float32 or bfloat16"
        )
    if config.model.backbone_init and config.model.backbone not in PRETRAINED_BACKBONES:
        raise UserError(
            f"model.backbone_init is set but there are no pretrained weights for backbone "
            f"{config.model.backbone!r}; use one of {', '.join(PRETRAINED_BACKBONES)} or clear it"
        )
    pose.check(config)
    takes_pose = "use_pose" in nets.MODELS[config.model.name].__dataclass_fields__
    if takes_pose and config.model.use_pose and config.pose.source == "none":
        raise UserError(
            f"{config.model.name} is pose-guided but pose.source is none; set "
            "--config.pose.source=precomputed (after --mode=heatmaps), online, or ground_truth "
            "(synthetic), or --config.model.use_pose=False"
        )
    # Model settings are checked by the model's constructor (one-line UserErrors), before any
    # data is read.
    nets.build_model(config.model.name, **model_kwargs(config, num_classes=1))
    mat_reads_pose = config.model.name == "mat" and config.model.keypoints == "heatmaps"
    if mat_reads_pose and config.pose.source == "none":
        raise UserError(
            "model.keypoints=heatmaps reads pose heatmaps but pose.source is none; set "
            "--config.pose.source=ground_truth (synthetic), precomputed (after "
            "--mode=heatmaps) or online, or --config.model.keypoints=self_supervised"
        )
    if config.model.name == "pirt":
        try:
            pirt_matching.check_settings(
                {k: config.eval[k] for k in pirt_matching.DEFAULT_SETTINGS if k in config.eval}
            )
        except ValueError as error:
            raise UserError(f"{error}; fix the --config.eval field") from None
    check_batch_layout(config.data.batch_size, config.data.instances_per_id, jax.device_count())
    optim.make_optimizer(config.train, optim.make_schedule(config.train, 1))  # names checked
    if config.eval.metric not in evaluation.METRICS:
        raise UserError(
            f"unknown eval.metric {config.eval.metric!r}; "
            f"use one of {', '.join(evaluation.METRICS)}"
        )
    if config.loss.triplet_metric not in TRIPLET_METRICS:
        raise UserError(
            f"unknown loss.triplet_metric {config.loss.triplet_metric!r}; "
            f"use one of {', '.join(TRIPLET_METRICS)}"
        )
    height, width = config.data.image_size
    if height % 32 or width % 32:
        raise UserError(
            f"data.image_size={tuple(config.data.image_size)} must be multiples of 32; "
            "e.g. --config.data.image_size='(256, 128)'"
        )


# ----------------------------------------------------------------------------- setup


class Experiment:
    """Dataset, model and checkpoints of one run, shared by every mode."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        _check_config(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.num_devices = jax.device_count()  # of all processes

    @functools.cached_property
    def builder(self):
        """The training dataset's tfds builder, prepared (built on first use)."""
        data = self.config.data
        with distributed.main_process_first(f"prepare {data.name}"):  # one build, then reads
            return datasets.prepare(
                data.name, data.builder_config, data.data_dir, data.manual_dir, data.strict
            )

    @functools.cached_property
    def eval_builder(self):
        """The evaluated dataset's builder: `data.test_name` if set, else the training one."""
        data = self.config.data
        if not data.test_name or data.test_name == data.name:
            return self.builder
        with distributed.main_process_first(f"prepare {data.test_name}"):
            return datasets.prepare(
                data.test_name,
                data.test_builder_config,
                data.data_dir,
                data.test_manual_dir,
                data.strict,
            )

    @functools.cached_property
    def eval_splits(self) -> dict[str, datasets.Split]:
        """Every split the evaluation rows need, in memory."""
        rows = datasets.eval_sets(eval_dataset(self.config))
        needed = {split for pair in rows.values() for split in pair}
        source = self.config.pose.source
        splits = {
            name: datasets.load_split(
                self.eval_builder, name, with_heatmaps=source == "ground_truth"
            )
            for name in needed
        }
        if source == "precomputed":
            data = self.config.data
            builder_config = data.test_builder_config if data.test_name else data.builder_config
            store = pose.store(self.config, eval_dataset(self.config), builder_config)
            for name, split in splits.items():
                split.heatmaps = store.read(name, split.filenames)
        return splits

    @functools.cached_property
    def online_pose_fn(self):
        """Normalised images [D, b, H, W, 3] -> heatmaps with the frozen pose net, or None
        unless `pose.source` is online."""
        if self.config.pose.source != "online":
            return None
        module, variables = pose.load_pose_net(self.config)
        return pose.parallel_pose_fn(module, variables)

    def model_and_checkpointer(self, num_classes: int):
        kwargs = model_kwargs(self.config, num_classes)
        model = nets.build_model(self.config.model.name, **kwargs)
        fields = dataclasses.fields(nets.MODELS[self.config.model.name])
        checkpointer = Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            _signature(self.config, kwargs),
            max_to_keep=self.config.train.max_checkpoints,
            model_defaults={f.name: f.default for f in fields if isinstance(f.default, str | int)},
        )
        return model, kwargs, checkpointer

    def saved_num_classes(self) -> int:
        """Number of training identities recorded in the workdir's latest checkpoint."""
        probe = Checkpointer(os.path.join(self.workdir, "checkpoints"), {})
        signature = probe.saved_signature()
        if signature is None:
            raise UserError(
                f"no checkpoint in {self.workdir}/checkpoints; train first "
                "(--mode=train) or pass --export=PATH to evaluate an export"
            )
        return int(signature["model_kwargs"]["num_classes"])

    def restored_state(self):
        """(model, kwargs, state) from the latest checkpoint, for eval/export/extract."""
        model, kwargs, checkpointer = self.model_and_checkpointer(self.saved_num_classes())
        tx = optim.make_optimizer(self.config.train, optim.make_schedule(self.config.train, 1))
        state = create_train_state(
            model, tx, jax.random.PRNGKey(self.config.seed), self.config.data.image_size
        )
        state = checkpointer.restore_latest(state)
        checkpointer.close()
        return model, kwargs, replicate(state)

    def embedder(self, model, state):
        """(images [D, b, H, W, 3], heatmaps or None) -> embeddings, with the state's weights.

        With `pose.source = online` the heatmaps come from the frozen pose net.
        """
        p_embed = parallel_embed(model)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        pose_fn = self.online_pose_fn

        def embed(images, heatmaps=None):
            if pose_fn is not None:
                heatmaps = pose_fn(images)
            return p_embed(variables, images, heatmaps)

        return embed


def init_backbone(state, config):
    """Loads ImageNet weights (`model.backbone_init`) into `params/batch_stats["backbone"]`."""
    if not config.model.backbone_init:
        return state
    from occreid_jax import convert

    pretrained = convert.load_variables(config.model.backbone, config.model.backbone_init)
    for collection, current in (("params", state.params), ("batch_stats", state.batch_stats)):
        expected = jax.tree.map(lambda x: x.shape, current["backbone"])
        got = jax.tree.map(lambda x: x.shape, pretrained[collection])
        if expected != got:
            raise UserError(
                f"the weights in {config.model.backbone_init} do not fit backbone "
                f"{config.model.backbone!r} ({collection} differ); check model.backbone"
            )
    return state.replace(
        params={**state.params, "backbone": pretrained["params"]},
        batch_stats={**state.batch_stats, "backbone": pretrained["batch_stats"]},
    )


# ----------------------------------------------------------------------------- modes


def precompute_heatmaps(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Runs the frozen pose net over every split the run reads and stores the heatmaps.

    Resumable: rerunning continues each split where it stopped. Returns the store folders.
    """
    del workdir  # the stores live with the datasets, not with one run
    if jax.process_count() > 1:
        raise UserError("--mode=heatmaps runs in one process; run it without --num_processes")
    if config.pose.net not in pose.POSE_NETS:
        raise UserError(f"unknown pose.net {config.pose.net!r}; use one of {pose.POSE_NETS}")
    exp = Experiment(config, workdir="")
    module, variables = pose.load_pose_net(config)
    pose_fn = pose.parallel_pose_fn(module, variables)
    data = config.data
    jobs = [(data.name, data.builder_config, exp.builder, ["train"])]
    eval_name = eval_dataset(config)
    eval_splits = sorted({s for pair in datasets.eval_sets(eval_name).values() for s in pair})
    if exp.eval_builder is exp.builder:
        jobs[0][3].extend(eval_splits)
    else:
        jobs.append((eval_name, data.test_builder_config, exp.eval_builder, eval_splits))
    roots = []
    for dataset, builder_config, builder, split_names in jobs:
        store = pose.store(config, dataset, builder_config)
        for name in split_names:
            split = datasets.load_split(builder, name, with_heatmaps=False)
            batches = pipeline.eval_batches(
                split,
                image_size=data.image_size,
                batch_size=data.eval_batch_size,
                num_devices=exp.num_devices,
            )
            heatmap_store.precompute(
                store, name, split.filenames, batches, pose_fn, data.eval_batch_size
            )
        roots.append(store.root)
    return roots


def mat_parts_reported(config: ml_collections.ConfigDict) -> bool:
    """Whether evaluations also report MAT's part statistics (a MAT with both branches and
    self-supervised keypoints)."""
    model = config.model
    return model.name == "mat" and model.segmentation and model.keypoints == "self_supervised"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, writes results.json."""
    exp = Experiment(config, workdir)
    exp.eval_splits  # noqa: B018  (a missing or bad test set fails now, not after an epoch)
    source = config.pose.source
    train_split = datasets.load_split(exp.builder, "train", with_heatmaps=source == "ground_truth")
    if source == "precomputed":
        store = pose.store(config, config.data.name, config.data.builder_config)
        train_split.heatmaps = store.read("train", train_split.filenames)
    sampler = IdentitySampler(
        train_split.labels,
        config.data.batch_size,
        config.data.instances_per_id,
        exp.num_devices,
        seed=config.seed,
        steps_per_epoch=config.train.steps_per_epoch,
        camids=train_split.camids,
        same_camera_pairs=config.data.same_camera_pairs,
    )
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = config.train.epochs * steps_per_epoch
    model, kwargs, checkpointer = exp.model_and_checkpointer(train_split.num_classes)
    train_model = model.clone(bn_axis_name="batch")
    schedule = optim.make_schedule(config.train, steps_per_epoch)
    tx = optim.make_optimizer(config.train, schedule)
    state = create_train_state(
        train_model, tx, jax.random.PRNGKey(config.seed), config.data.image_size
    )
    if checkpointer.latest_step() is None:  # a resumed run takes every weight from its checkpoint
        state = init_backbone(state, config)
    state = replicate(checkpointer.restore_latest(state))
    start_step = int(state.step)
    main_process = distributed.is_main_process()  # the one that prints and writes files
    log = MetricsLog(exp.workdir, enabled=main_process)
    results_path = os.path.join(exp.workdir, "results.json")
    # Process 0's record: every process must take the same decisions (e.g. redo an evaluation).
    record = distributed.broadcast_json(_read_json(results_path) if main_process else None)
    record = record or {"history": []}
    embed = functools.partial(exp.embedder, model)

    def is_eval_step(step: int) -> bool:
        epoch, within = divmod(step, steps_per_epoch)
        last = step == total_steps
        return step > 0 and within == 0 and (epoch % config.train.eval_every_epochs == 0 or last)

    part_groups = None

    def run_eval(step, key="results"):
        nonlocal part_groups
        results = evaluate_splits(embed(state), config.model.name, exp.eval_splits, config)
        log.write("eval", step, results)
        if mat_parts_reported(config):  # MAT: are its parts real (flow_probe.part_report)?
            part_groups = part_groups or flow_probe.collect_groups(
                config, train_split, flow_probe.REPORT_GROUPS
            )
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            report = flow_probe.part_report(
                model.apply, variables, exp.eval_splits["gallery"], part_groups, settings,
                config.data.image_size,
            )  # fmt: skip
            log.write("parts", step, report)
            record.setdefault("parts", {})[str(step)] = report
        record[key] = results
        if key == "results":
            record["history"].append({"step": step, "epoch": step / steps_per_epoch, **results})
        record.update(step=step, epoch=step / steps_per_epoch, total_steps=total_steps)
        if main_process:
            _write_json(results_path, record)
        return results

    if main_process:
        print(
            f"training {config.model.name} ({kwargs.get('backbone', '')}) on {config.data.name}: "
            f"{len(train_split)} images, {train_split.num_classes} identities, "
            f"{distributed.describe()}, {steps_per_epoch} steps/epoch x "
            f"{config.train.epochs} epochs"
            + (f", resuming at step {start_step}" if start_step else "")
        )
    settings = loss_settings(config)
    objective = make_objective(config, settings)
    forward = make_forward(config.model.name, settings)
    pose_apply, pose_variables = None, None
    if source == "online":
        pose_module, pose_variables = pose.load_pose_net(config)
        pose_apply = functools.partial(pose_module.apply, train=False)
        pose_variables = replicate(pose_variables)
    p_step = parallel_train_step(objective, pose_apply, forward)
    batches = pipeline.train_batches(
        train_split,
        sampler,
        start_step=start_step,
        image_size=config.data.image_size,
        num_devices=exp.num_devices,
        pad=config.data.pad,
        flip_prob=config.data.flip_prob,
        erasing_prob=config.data.erasing_prob,
        seed=config.seed,
        with_heatmaps=source in ("ground_truth", "precomputed"),
        shard=distributed.shard(),
        pair_geometry=config.data.same_camera_pairs,
    )
    step = start_step
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        disable=not main_process,
    )
    window_start, window_images = time.perf_counter(), 0
    try:
        if start_step == 0 and config.train.eval_at_start:
            record["untrained"] = run_eval(0, key="untrained")
        if is_eval_step(start_step) and record.get("step") != start_step:
            run_eval(start_step)  # the evaluation an interrupted run did not finish
        while step < total_steps:
            state, metrics = p_step(state, next(batches), pose_variables)
            step += 1
            window_images += config.data.batch_size
            bar.update(1)
            if step % config.train.log_every_steps == 0 or step == total_steps:
                metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                metrics["images_per_sec"] = window_images / max(elapsed, 1e-9)
                metrics["lr"] = float(schedule(step - 1))  # the rate this step used
                log.write("train", step, metrics)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3f}", img_s=f"{metrics['images_per_sec']:.0f}"
                )
                window_start, window_images = time.perf_counter(), 0
            if step % config.train.checkpoint_every_steps == 0 or is_eval_step(step):
                checkpointer.save(step, state)
            if is_eval_step(step):
                bar.clear()
                results = run_eval(step)
                if main_process:
                    tqdm.write(f"epoch {step // steps_per_epoch}: " + _short(results))
    except KeyboardInterrupt:
        if jax.process_count() > 1:  # the other processes are not here to join a save
            raise UserError(
                f"interrupted at step {step}; rerun the same commands to resume from the last "
                f"checkpoint in {exp.workdir}/checkpoints"
            ) from None
        checkpointer.save(step, state)
        raise UserError(
            f"interrupted at step {step}; saved a checkpoint in {exp.workdir}/checkpoints, "
            "rerun the same command to resume"
        ) from None
    finally:
        bar.close()
        checkpointer.close()  # waits for asynchronous saves, whatever ended the loop
    if record.get("step") != step or "results" not in record:
        run_eval(step)
    return record


def evaluate(config: ml_collections.ConfigDict, workdir: str, export_path: str = "") -> dict:
    """Evaluates the workdir's latest checkpoint, or an export bundle if `export_path` is set."""
    exp = Experiment(config, workdir)
    if export_path:
        bundle = export.load(export_path)
        if tuple(bundle.image_size) != tuple(config.data.image_size):
            raise UserError(
                f"the export takes {tuple(bundle.image_size)} images but data.image_size is "
                f"{tuple(config.data.image_size)}; pass --config.data.image_size to match"
            )

        # An export is evaluated with the matching settings stored with it.
        config = ml_collections.ConfigDict(config.to_dict())
        for key, value in bundle.matching.items():
            config.eval[key] = value
        pose_fn = exp.online_pose_fn

        def embed(images, heatmaps=None):
            if pose_fn is not None:
                heatmaps = pose_fn(images)
            lead = images.shape[:2]
            if heatmaps is not None:
                heatmaps = heatmaps.reshape(-1, *heatmaps.shape[2:])
            features = bundle.embed_normalized(images.reshape(-1, *images.shape[2:]), heatmaps)
            return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), features)

        return evaluate_splits(embed, bundle.model_name, exp.eval_splits, config)
    model, _, state = exp.restored_state()  # before the dataset: fail fast without a checkpoint
    return evaluate_splits(exp.embedder(model, state), config.model.name, exp.eval_splits, config)


def export_bundle(config: ml_collections.ConfigDict, workdir: str, path: str = "") -> str:
    """Writes the latest checkpoint as an inference bundle (default `<workdir>/export`)."""
    exp = Experiment(config, workdir)
    _, kwargs, state = exp.restored_state()
    path = path or os.path.join(exp.workdir, "export")
    if not distributed.is_main_process():
        return path
    return export.write(
        path,
        model_name=config.model.name,
        model_kwargs=kwargs,
        variables={"params": state.params, "batch_stats": state.batch_stats},
        image_size=tuple(config.data.image_size),
        matching=matching.settings(config.eval),
    )


def extract(config: ml_collections.ConfigDict, workdir: str, path: str = "") -> str:
    """Writes query and gallery features, pids, camids to `.npz` (default `<workdir>/features.npz`).

    Keys: `query_features` / `gallery_features` [N, D] (the features the model's matching rule
    compares), `query_pids`, `query_camids`, `gallery_pids`, `gallery_camids`,
    `query_filenames`, `gallery_filenames`, and every embedding as `query_<name>` /
    `gallery_<name>`. Datasets with several query sets add them with their split name.
    """
    exp = Experiment(config, workdir)
    model, _, state = exp.restored_state()
    embed = exp.embedder(model, state)
    arrays = {}
    for split_name, split in exp.eval_splits.items():
        prefix = "query" if split_name == "query" else split_name
        features = extract_features(embed, split, config, desc=f"embed {split_name}")
        arrays[f"{prefix}_features"] = matching.global_features(config.model.name, features)
        for key, value in features.items():
            arrays[f"{prefix}_{key}"] = value
        arrays[f"{prefix}_pids"] = split.pids
        arrays[f"{prefix}_camids"] = split.camids
        arrays[f"{prefix}_filenames"] = split.filenames
    path = path or os.path.join(exp.workdir, "features.npz")
    if not distributed.is_main_process():
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- helpers


def _short(results: dict) -> str:
    return "; ".join(
        f"{row}: mAP {100 * m['mAP']:.1f}, R-1 {100 * m['rank1']:.1f}" for row, m in results.items()
    )


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)
