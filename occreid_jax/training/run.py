"""One run's shared setup: its datasets, model, checkpoints and embedding function.

Every mode (`experiment.py`) and the training loop (`train_loop.py`) start from a `Run`: the
config is checked before anything is read, the datasets are prepared on first use, the model
is built from its family record and the workdir's checkpoints are restored.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import ml_collections

from occreid_jax import distributed, families
from occreid_jax.data import datasets
from occreid_jax.distributed import replicate
from occreid_jax.errors import UserError
from occreid_jax.evaluation.features import eval_dataset
from occreid_jax.training import optim, pose
from occreid_jax.training.checkpointing import Checkpointer
from occreid_jax.training.config_checks import check_config
from occreid_jax.training.train import create_train_state, parallel_embed


def signature(config: ml_collections.ConfigDict, kwargs: dict) -> dict:
    """What a checkpoint must match to be restored into this run's model."""
    return {
        "model": config.model.name,
        "model_kwargs": kwargs,
        "image_size": list(config.data.image_size),
    }


class Run:
    """Dataset, model and checkpoints of one run, shared by every mode."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        check_config(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        if workdir and os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise UserError(f"--workdir={workdir} is a file, not a folder; choose another path")
        self.num_devices = jax.device_count()  # of all processes
        self.family = families.get(config.model.name)

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

    def train_split(self) -> datasets.Split:
        """The training split, with its heatmaps when the pose source provides them."""
        source = self.config.pose.source
        split = datasets.load_split(self.builder, "train", with_heatmaps=source == "ground_truth")
        if source == "precomputed":
            store = pose.store(self.config, self.config.data.name, self.config.data.builder_config)
            split.heatmaps = store.read("train", split.filenames)
        return split

    @functools.cached_property
    def online_pose_fn(self):
        """Normalised images [D, b, H, W, 3] -> heatmaps with the frozen pose net, or None
        unless `pose.source` is online."""
        if self.config.pose.source != "online":
            return None
        module, variables = pose.load_pose_net(self.config)
        return pose.parallel_pose_fn(module, variables)

    def model_and_checkpointer(self, num_classes: int, cleanup_tmp: bool = False):
        """(model, its constructor kwargs, the workdir's Checkpointer for that model);
        `cleanup_tmp` for the holder of the workdir's lock (training)."""
        kwargs = families.model_kwargs(self.config, num_classes)
        model = self.family.module(**kwargs)
        fields = dataclasses.fields(self.family.module)
        checkpointer = Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            signature(self.config, kwargs),
            max_to_keep=self.config.train.max_checkpoints,
            model_defaults={f.name: f.default for f in fields if isinstance(f.default, str | int)},
            cleanup_tmp=cleanup_tmp,
        )
        return model, kwargs, checkpointer

    def saved_num_classes(self) -> int:
        """Number of training identities recorded in the workdir's latest checkpoint."""
        folder = os.path.join(self.workdir, "checkpoints")
        saved = None
        if os.path.isdir(folder):  # (not made here: the workdir may be read-only)
            probe = Checkpointer(folder, {})
            try:
                saved = probe.saved_signature()
            finally:
                probe.close()
        if saved is None:
            raise UserError(
                f"no checkpoint in {self.workdir}/checkpoints; train first "
                "(--mode=train) or pass --export=PATH to evaluate an export"
            )
        return int(saved["model_kwargs"]["num_classes"])

    def restored_state(self):
        """(model, kwargs, state) from the latest checkpoint, for eval/export/extract."""
        model, kwargs, checkpointer = self.model_and_checkpointer(self.saved_num_classes())
        tx = optim.make_optimizer(self.config.train, optim.make_schedule(self.config.train, 1))
        state = create_train_state(
            model, tx, jax.random.PRNGKey(self.config.seed), self.config.data.image_size
        )
        try:
            state = checkpointer.restore_latest(state)
        finally:
            checkpointer.close()  # on every path: an open manager's threads outlive the error
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
    from occreid_jax.nets import convert

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
