"""MAT through the real loop on the tiny synthetic set: train, evaluate by its own matching rule,
visualize, export and evaluate the export."""

import json
import os

import cv2
import numpy as np
import pytest

from configs import mat
from occreid_jax import experiment, matching, visualize

pytestmark = pytest.mark.slow


def _config(data_dir):
    config = mat.get_config("synthetic")
    config.model.d_model = 16
    config.model.num_heads = 2
    config.model.ffn_dim = 32
    config.model.encoder_layers = 1
    config.model.num_parts = 3
    config.data.builder_config = "tiny"
    config.data.data_dir = data_dir
    config.data.image_size = (64, 32)
    config.data.batch_size = 8  # P=2 x K=4: one identity group per device
    config.data.eval_batch_size = 16
    config.train.epochs = 1
    config.train.steps_per_epoch = 2
    config.train.warmup_epochs = 0
    config.train.milestones = (1,)
    config.train.eval_every_epochs = 1
    config.train.eval_at_start = False
    config.train.checkpoint_every_steps = 2
    config.train.log_every_steps = 1
    return config


def test_train_eval_visualize_export(tmp_path):
    config = _config(str(tmp_path / "tfds"))
    workdir = str(tmp_path / "run")
    record = experiment.train_and_evaluate(config, workdir)
    assert record["step"] == 2
    for row in ("occluded queries", "holistic queries"):
        assert 0.0 < record["results"][row]["mAP"] <= 1.0

    # Every evaluation also reports the parts (eval mode, gallery and training groups).
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        parts = [r for r in map(json.loads, f) if r["kind"] == "parts"]
    assert [r["step"] for r in parts] == [2]
    assert 1.0 / 4 - 1e-6 <= parts[0]["gallery_part_confidence"] <= 1.0
    assert 0 <= parts[0]["gallery_parts_overall"] <= 3
    for name in ("learned", "no_motion", "uniform_segmentation", "best_single_part"):
        assert parts[0][f"lfc_{name}"] >= 0.0

    # The flow probe on the trained model: every reference flow scores a finite L_fc.
    from occreid_jax import flow_probe
    from occreid_jax.data import datasets
    from occreid_jax.losses.objectives import loss_settings
    from occreid_jax.nets.mat import COCO_GROUPS

    exp = experiment.Experiment(config, workdir)
    model, _, state = exp.restored_state()
    split = datasets.load_split(exp.builder, "train", with_heatmaps=False)
    groups = flow_probe.collect_groups(config, split, 4)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    aux = flow_probe.model_outputs(model.apply, variables, groups.images.reshape(16, 64, 32, 3))
    scores = flow_probe.flow_scores(aux, groups, loss_settings(config), (64, 32), COCO_GROUPS[3])
    assert np.isfinite(list(scores.values())).all() and len(scores) == 11
    assert flow_probe.gate(scores, 0.05)["passed"] in (True, False)

    # Evaluation used MAT's own rule (global + visibility-weighted parts).
    assert matching.own_rule("mat", {"parts": 0, "visibility": 0}, config.eval) is not None

    paths = visualize.visualize(config, workdir, num_queries=2)
    assert os.path.basename(paths[-1]) == "sheet.png"
    strip = cv2.imread(paths[0])
    assert strip.shape == (64 * 2, 4 * 32 * 2, 3)  # four panels, upscaled x2
    assert len(paths) >= 3 and np.ptp(strip) > 0

    bundle_path = experiment.export_bundle(config, workdir)
    exported = experiment.evaluate(config, workdir, export_path=bundle_path)
    for row, metrics in exported.items():
        np.testing.assert_allclose(metrics["mAP"], record["results"][row]["mAP"], rtol=1e-4)
