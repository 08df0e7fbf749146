"""Pose heatmap sources: the frozen pose net inside the step (online), and --mode=heatmaps
writing a complete store that training then reads (precomputed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import baseline
from occreid_jax import experiment
from occreid_jax.data import augment, datasets
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import LossConfig, baseline_objective
from occreid_jax.nets import convert
from occreid_jax.training import optim, pose
from occreid_jax.training.train import create_train_state, parallel_train_step


class HeatmapProbe(nn.Module):
    """A tiny model that reads heatmaps and reports their mean."""

    @nn.compact
    def __call__(self, x, train, heatmaps=None):
        if heatmaps is None:  # init
            heatmaps = jnp.zeros((x.shape[0], x.shape[1] // 4, x.shape[2] // 4, 17))
        features = jnp.concatenate([x.mean((1, 2)), heatmaps.mean((1, 2))], axis=-1)
        features = nn.Dense(8, name="embed")(features)
        aux = {
            "logits": nn.Dense(4, name="classifier")(features),
            "global_feat": features,
            "heatmap_mean": heatmaps.mean(),
        }
        return {"global": features}, aux


def _fake_pose(variables, images):
    """Heatmaps [b, H/4, W/4, 17] from images, scaled by a 'weight' of the pose net."""
    pooled = nn.avg_pool(images, (4, 4), strides=(4, 4)).mean(-1, keepdims=True)
    return variables["scale"] * jnp.repeat(jax.nn.relu(pooled), 17, axis=-1)


def test_online_pose_net_runs_inside_the_step_and_feeds_the_model():
    cfg = baseline.get_config("synthetic")
    tx = optim.make_optimizer(cfg.train, optim.make_schedule(cfg.train, 10))
    state = create_train_state(HeatmapProbe(), tx, jax.random.PRNGKey(0), (16, 8))

    def objective(aux, labels):
        loss, metrics = baseline_objective(aux, labels, cfg=LossConfig())
        return loss, {**metrics, "heatmap_mean": aux["heatmap_mean"]}

    step = parallel_train_step(objective, pose_apply=_fake_pose)
    images = np.random.default_rng(0).normal(size=(2, 4, 16, 8, 3)).astype(np.float32)
    batch = {"images": images, "labels": np.array([[0, 0, 1, 1], [2, 2, 3, 3]], np.int32)}
    pose_variables = {"scale": jnp.float32(3.0)}
    _, metrics = step(state, batch, pose_variables)
    expected = np.mean([_fake_pose(pose_variables, images[d]).mean() for d in range(2)])
    np.testing.assert_allclose(metrics["heatmap_mean"][0], expected, rtol=1e-5)
    assert expected > 0


@pytest.fixture(scope="module")
def hrnet_folder(tmp_path_factory):
    """A converted-checkpoint folder of a randomly initialised HRNet W32."""
    module = convert.build("hrnet_w32")
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)), train=False)
    # Random weights give heatmaps of ~1e7; scale the head so they peak near 1, as COCO's do.
    probe = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
    peak = float(np.abs(module.apply(variables, probe, train=False)).max())
    head = variables["params"]["final_layer"]
    head = {k: v / peak for k, v in head.items()}
    variables = {**variables, "params": {**variables["params"], "final_layer": head}}
    folder = str(tmp_path_factory.mktemp("pose") / "hrnet_w32")
    convert.save("hrnet_w32", variables, folder)
    return folder, module, variables


@pytest.mark.slow
def test_heatmaps_mode_fills_a_store_that_training_reads(hrnet_folder, tiny_config, tmp_path):
    folder, module, variables = hrnet_folder
    config = tiny_config("baseline")
    config.pose.store = str(tmp_path / "heatmaps")  # this test's own store
    config.pose.net = "hrnet_w32"
    config.pose.init = folder
    roots = experiment.precompute_heatmaps(config, str(tmp_path / "run"))
    assert len(roots) == 1

    store = pose.store(config, "synthetic", "tiny")
    assert store.root == config.pose.store
    builder = datasets.prepare("synthetic", "tiny", config.data.data_dir)
    query = datasets.load_split(builder, "query", with_heatmaps=False)
    for name in ("train", "query", "gallery", "query_holistic"):
        assert store.is_complete(name, datasets.load_split(builder, name, False).filenames)
    stored = store.read("query", query.filenames)
    import tensorflow as tf

    image = tf.image.resize(tf.io.decode_png(query.images[-1]), (64, 32), method="bicubic")
    image = augment.normalize(tf.clip_by_value(tf.cast(image, tf.float32), 0, 255))
    expected = np.maximum(module.apply(variables, image.numpy()[None], train=False)[0], 0)
    np.testing.assert_allclose(stored[-1], expected, atol=2e-3 * max(1.0, expected.max()))

    # A second run finds everything done; training reads the precomputed store.
    experiment.precompute_heatmaps(config, str(tmp_path / "run"))
    config.pose.source = "precomputed"
    config.train.epochs = 1
    config.train.steps_per_epoch = 1
    config.train.eval_at_start = False
    record = experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert record["step"] == 1


def test_pose_config_errors_are_one_line():
    config = baseline.get_config("market1501")
    config.pose.source = "ground_truth"
    with pytest.raises(UserError, match="ships no ground-truth heatmaps"):
        pose.check(config)
    config.pose.source = "online"
    with pytest.raises(UserError, match="pose.init is empty"):
        pose.load_pose_net(config)
    config.pose.source = "telepathy"
    with pytest.raises(UserError, match="unknown pose.source"):
        pose.check(config)
