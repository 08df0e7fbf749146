"""Pirt through the real loop on the tiny synthetic set: train, eval, export, extract."""

import numpy as np
import pytest

from occreid_jax import experiment
from occreid_jax.config_files import load_config_file
from occreid_jax.errors import UserError
from occreid_jax.evaluation import evaluate_distance_blocks
from occreid_jax.evaluation.pirt_matching import pirt_distance

pytestmark = pytest.mark.slow


def _config(data_dir):
    config = load_config_file("configs/pirt.py").get_config("synthetic")
    config.data.builder_config = "tiny"
    config.data.data_dir = data_dir
    config.data.image_size = (64, 32)
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.model.irm_width = 32
    config.model.ffn_dim = 32
    config.model.csm_width = 16
    config.model.num_layers = 1
    config.train.epochs = 2
    config.train.steps_per_epoch = 2
    config.train.warmup_epochs = 1
    config.train.cosine_start_epoch = 1
    config.train.eval_every_epochs = 2
    config.train.eval_at_start = False
    config.train.log_every_steps = 1
    config.eval.top_n = 5
    return config


def test_pirt_trains_evaluates_exports_and_extracts_with_its_own_matching(tmp_path):
    config = _config(str(tmp_path / "tfds"))
    workdir = str(tmp_path / "run")
    record = experiment.train_and_evaluate(config, workdir)
    assert record["step"] == 4
    results = record["results"]
    for row in ("occluded queries", "holistic queries"):
        assert 0.0 < results[row]["mAP"] <= 1.0

    # The exported bundle carries the matching settings and reproduces the metrics.
    bundle = experiment.export_bundle(config, workdir)
    other = _config(str(tmp_path / "tfds"))
    other.eval.top_n = 100  # ignored: the bundle's own settings win
    from_bundle = experiment.evaluate(other, workdir, export_path=bundle)
    for row, metrics in results.items():
        np.testing.assert_allclose(from_bundle[row]["mAP"], metrics["mAP"], rtol=1e-4)

    # extract writes the global feature, part features and confidences; Pirt's rule on them
    # reproduces the metrics of training.
    arrays = np.load(experiment.extract(config, workdir))
    q = {k: arrays[f"query_{k}"] for k in ("stripe", "patch", "parts", "confidence")}
    g = {k: arrays[f"gallery_{k}"] for k in ("stripe", "patch", "parts", "confidence")}
    assert arrays["query_features"].shape[1] == 2 * q["stripe"].shape[1]
    np.testing.assert_allclose(q["confidence"].sum(-1), 1.0, rtol=1e-5)
    metrics = evaluate_distance_blocks(
        pirt_distance(q, g, {"top_n": 5}),
        arrays["query_pids"],
        arrays["gallery_pids"],
        arrays["query_camids"],
        arrays["gallery_camids"],
    )
    np.testing.assert_allclose(metrics["mAP"], results["occluded queries"]["mAP"], rtol=1e-6)


def test_pirt_without_heatmaps_is_a_clear_error(tmp_path):
    config = _config(str(tmp_path / "tfds"))
    config.pose.source = "none"
    with pytest.raises(UserError, match="pose-guided but pose.source is none"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
    config.pose.source = "ground_truth"
    config.eval.confidence = "both"
    with pytest.raises(UserError, match="unknown confidence 'both'"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
