"""The training loop: `train_and_evaluate` drives `train.train_step` over the run's batches.

It resumes from the workdir's latest checkpoint, logs metrics every `train.log_every_steps`
(metrics.jsonl, TensorBoard), saves every `train.checkpoint_every_steps` and at evaluation
steps, evaluates every `train.eval_every_epochs` and at the end, and keeps results.json (the
latest evaluation and its history). Ctrl-C saves a checkpoint before it exits; a diverging
loss stops the run before anything is saved (`divergence.py`).
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from occreid_jax import distributed
from occreid_jax.data import pipeline
from occreid_jax.data.device_prefetch import prefetch_to_devices
from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.distributed import replicate
from occreid_jax.errors import UserError
from occreid_jax.evaluation.features import evaluate_splits
from occreid_jax.probes import flow_probe
from occreid_jax.training import optim, pose, workdir_lock
from occreid_jax.training.divergence import DivergenceGuard
from occreid_jax.training.metrics_log import MetricsLog
from occreid_jax.training.progress import CompletedSteps
from occreid_jax.training.run import Run, init_backbone
from occreid_jax.training.signals import SignalShield
from occreid_jax.training.train import create_train_state, parallel_train_step


class _Record:
    """results.json: the latest evaluation, its history and (optionally) the untrained row.

    Process 0's copy is broadcast, so that every process takes the same decisions (e.g. redo
    an evaluation an interrupted run did not finish); only process 0 writes the file.
    """

    def __init__(self, run: Run, model, log: MetricsLog, steps_per_epoch: int, total_steps: int):
        self.run, self.log = run, log
        self.embed = functools.partial(run.embedder, model)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.path = os.path.join(run.workdir, "results.json")
        self.main_process = distributed.is_main_process()
        saved = distributed.broadcast_json(_read_json(self.path) if self.main_process else None)
        self.data = saved or {"history": []}
        self.part_report = None  # MAT: fn(state) -> its parts' figures, see `_part_reporter`

    def is_eval_step(self, step: int) -> bool:
        """Whether `step` ends an evaluation epoch (or the run)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        last = step == self.total_steps
        every = self.run.config.train.eval_every_epochs
        return step > 0 and within == 0 and (epoch % every == 0 or last)

    def evaluate(self, state, step: int, key: str = "results") -> dict:
        """Evaluates `state`, logs it and records it under `key` (history for "results")."""
        config = self.run.config
        results = evaluate_splits(
            self.embed(state), self.run.family.matching, self.run.eval_splits, config
        )
        self.log.write("eval", step, results)
        if self.part_report is not None:
            report = self.part_report(state)
            self.log.write("parts", step, report)
            self.data.setdefault("parts", {})[str(step)] = report
        self.data[key] = results
        epoch = step / self.steps_per_epoch
        if key == "results":  # a resumed run redoes the evaluations after its checkpoint
            history = [h for h in self.data["history"] if h["step"] < step]
            self.data["history"] = [*history, {"step": step, "epoch": epoch, **results}]
        self.data.update(step=step, epoch=epoch, total_steps=self.total_steps)
        if self.main_process:
            _write_json(self.path, self.data)
        return results


def _part_reporter(run: Run, model, train_split):
    """For a MAT with parts and self-supervised keypoints, fn(state) -> the part figures
    `flow_probe.part_report` measures at each evaluation; None for every other model."""
    if not flow_probe.reports_parts(run.config):
        return None
    config = run.config
    settings = run.family.loss_settings(config)
    groups = []

    def report(state) -> dict:
        if not groups:  # drawn once, at the first evaluation
            groups.append(flow_probe.collect_groups(config, train_split, flow_probe.REPORT_GROUPS))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return flow_probe.part_report(
            model.apply, variables, run.eval_splits["gallery"], groups[0], settings,
            config.data.image_size,
        )  # fmt: skip

    return report


def _initial_state(run: Run, model, tx, checkpointer):
    """A fresh state (ImageNet backbone if configured), or the latest checkpoint's."""
    config = run.config
    train_model = model.clone(bn_axis_name="batch")
    state = create_train_state(
        train_model, tx, jax.random.PRNGKey(config.seed), config.data.image_size
    )
    try:
        if checkpointer.latest_step() is None:  # a resumed run takes every weight from it
            state = init_backbone(state, config)
        return replicate(checkpointer.restore_latest(state, set_aside_broken=True))
    except BaseException:
        checkpointer.close()  # on every error path: an open manager's threads outlive it
        raise


def _step_function(run: Run):
    """(the pmapped train step of the run's family, the frozen pose net's weights or None)."""
    config = run.config
    settings = run.family.loss_settings(config)
    pose_apply, pose_variables = None, None
    if config.pose.source == "online":
        pose_module, pose_variables = pose.load_pose_net(config)
        pose_apply = functools.partial(pose_module.apply, train=False)
        pose_variables = replicate(pose_variables)
    step = parallel_train_step(
        run.family.bound_objective(settings), pose_apply, run.family.forward(settings)
    )
    return step, pose_variables


def _train_batches(run: Run, split, sampler: IdentitySampler, start_step: int):
    """The augmented training batches from `start_step` on, [D, b, ...] per step, copied to
    the devices two steps ahead (the copy overlaps the running step)."""
    config = run.config
    host_batches = pipeline.train_batches(
        split,
        sampler,
        start_step=start_step,
        image_size=config.data.image_size,
        num_devices=run.num_devices,
        pad=config.data.pad,
        flip_prob=config.data.flip_prob,
        erasing_prob=config.data.erasing_prob,
        seed=config.seed,
        with_heatmaps=config.pose.source in ("ground_truth", "precomputed"),
        shard=distributed.shard(),
        pair_geometry=config.data.same_camera_pairs,
    )
    return prefetch_to_devices(host_batches, size=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, writes results.json."""
    run = Run(config, workdir)
    run.eval_splits  # noqa: B018  (a missing or bad test set fails now, not after an epoch)
    train_split = run.train_split()
    with workdir_lock.held(run.workdir, "train"):  # the data is readable: now the workdir
        return _train(run, train_split)


def _train(run: Run, train_split) -> dict:
    """`train_and_evaluate` once the data is loaded and the workdir is locked."""
    config = run.config
    sampler = IdentitySampler(
        train_split.labels,
        config.data.batch_size,
        config.data.instances_per_id,
        run.num_devices,
        seed=config.seed,
        steps_per_epoch=config.train.steps_per_epoch,
        camids=train_split.camids,
        same_camera_pairs=config.data.same_camera_pairs,
    )
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = config.train.epochs * steps_per_epoch
    model, kwargs, checkpointer = run.model_and_checkpointer(
        train_split.num_classes, cleanup_tmp=True
    )  # (under the workdir's lock)
    schedule = optim.make_schedule(config.train, steps_per_epoch)
    state = _initial_state(run, model, optim.make_optimizer(config.train, schedule), checkpointer)
    start_step = int(state.step)
    main_process = distributed.is_main_process()  # the one that prints and writes files
    log = MetricsLog(run.workdir, enabled=main_process)
    record = _Record(run, model, log, steps_per_epoch, total_steps)
    record.part_report = _part_reporter(run, model, train_split)
    redo_eval = record.is_eval_step(start_step) and record.data.get("step") != start_step
    log.forget_after(start_step, ("eval", "parts") if redo_eval else ())  # each step once
    guard = DivergenceGuard(_start_loss(log))
    if main_process:
        print(
            f"training {config.model.name} ({kwargs.get('backbone', '')}) on {config.data.name}: "
            f"{len(train_split)} images, {train_split.num_classes} identities, "
            f"{distributed.describe()}, {steps_per_epoch} steps/epoch x "
            f"{config.train.epochs} epochs"
            + (f", resuming at step {start_step}" if start_step else "")
        )
        if start_step >= total_steps and start_step:
            print(
                f"note: the checkpoint in {run.workdir} is at step {start_step}, at or past the "
                f"{total_steps} steps of this schedule: nothing to train (raise "
                "--config.train.epochs to train on)"
            )
    p_step, pose_variables = _step_function(run)
    batches = _train_batches(run, train_split, sampler, start_step)
    step = start_step
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        disable=not main_process,
    )
    progress = CompletedSteps(bar, config.data.batch_size)  # advances as steps complete
    window_start, window_images = time.perf_counter(), 0
    logged_step = start_step
    shield = None
    try:
        if start_step == 0 and config.train.eval_at_start:
            record.data["untrained"] = record.evaluate(state, 0, key="untrained")
        if redo_eval:
            record.evaluate(state, start_step)  # the evaluation an interrupted run did not finish
        while step < total_steps:
            state, metrics = p_step(state, next(batches), pose_variables)
            step += 1
            window_images += config.data.batch_size
            progress.dispatched(metrics["loss"])
            saves = step % config.train.checkpoint_every_steps == 0 or record.is_eval_step(step)
            logs = step % config.train.log_every_steps == 0 or step == total_steps
            if logs or saves:  # before anything is written: a diverged state is never saved
                loss = float(jax.device_get(metrics["loss"])[0])
                guard.check(step, loss, float(schedule(step - 1)), checkpointer.latest_step())
            if logs:
                metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                metrics["images_per_sec"] = window_images / max(elapsed, 1e-9)
                metrics["lr"] = float(schedule(step - 1))  # the rate this step used
                log.write("train", step, metrics)
                logged_step = step
                progress.note(loss=f"{metrics['loss']:.3f}")
                window_start, window_images = time.perf_counter(), 0
            if saves:
                checkpointer.save(step, state)
            if record.is_eval_step(step):
                progress.drain()
                bar.clear()
                results = record.evaluate(state, step)
                if main_process:
                    tqdm.write(f"epoch {step // steps_per_epoch}: " + _short(results))
        progress.drain()
    except KeyboardInterrupt:
        shield = SignalShield()  # a second Ctrl-C or SIGTERM must not break the save
        if step > start_step:  # the Ctrl-C save is checked like any other save
            loss = float(np.asarray(jax.device_get(metrics["loss"])).reshape(-1)[0])
            guard.check(step, loss, float(schedule(step - 1)), checkpointer.latest_step())
            if step != logged_step:  # each step once: the interrupted step's metrics too
                log.write("train", step, _scalars(metrics))
        _save_on_interrupt(run, checkpointer, step, state)
    finally:
        bar.close()
        checkpointer.close()  # waits for asynchronous saves, whatever ended the loop
        if shield is not None:
            shield.restore()
    if record.data.get("step") != step or "results" not in record.data:
        record.evaluate(state, step)
    return record.data


def _scalars(metrics: dict) -> dict:
    """One step's metrics (device arrays, one value per device, or floats) as floats."""
    return {k: float(np.asarray(jax.device_get(v)).reshape(-1)[0]) for k, v in metrics.items()}


def _save_on_interrupt(run: Run, checkpointer, step: int, state) -> None:
    """Ctrl-C: save (one process) and exit with the line that says how to resume."""
    if jax.process_count() > 1:  # the other processes are not here to join a save
        raise UserError(
            f"interrupted at step {step}; rerun the same commands to resume from the last "
            f"checkpoint in {run.workdir}/checkpoints"
        ) from None
    if any(leaf.is_deleted() for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)):
        # Ctrl-C inside the step call: the state passed in was donated, its result never came.
        raise UserError(
            f"interrupted during step {step + 1}; rerun the same command to resume from the "
            f"last checkpoint in {run.workdir}/checkpoints"
        ) from None
    checkpointer.save(step, state)
    checkpointer.wait()  # claimed only once on disk (a failed save raises its own line)
    raise UserError(
        f"interrupted at step {step}; saved a checkpoint in {run.workdir}/checkpoints, "
        "rerun the same command to resume"
    ) from None


def _start_loss(log: MetricsLog) -> float | None:
    """The run's first logged training loss (process 0's metrics.jsonl, shared), or None."""
    first = None
    if distributed.is_main_process():
        first = next((r.get("loss") for r in log.records() if r.get("kind") == "train"), None)
    return distributed.broadcast_json(first)


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
