"""MAT through the real loop on the tiny synthetic set: train, evaluate by its own matching rule,
visualize, export and evaluate the export."""

import os

import cv2
import numpy as np
import pytest

from occreid_jax import experiment, visualize
from occreid_jax.evaluation import evaluate_distance_blocks, evaluate_features
from occreid_jax.evaluation.mat_matching import mat_matcher

pytestmark = pytest.mark.slow


def test_train_eval_visualize_export(tiny_config, tmp_path, dense_rule_rerank):
    config = tiny_config("mat")
    workdir = str(tmp_path / "run")
    record = experiment.train_and_evaluate(config, workdir)
    assert record["step"] == 2
    for row in ("occluded queries", "holistic queries"):
        assert 0.0 < record["results"][row]["mAP"] <= 1.0

    # Evaluation used MAT's own rule (global + visibility-weighted parts): the rule on the
    # extracted embeddings reproduces the training figure, and differs from global-only.
    arrays = np.load(experiment.extract(config, workdir))
    q = {k: arrays[f"query_{k}"] for k in ("global", "parts", "visibility")}
    g = {k: arrays[f"gallery_{k}"] for k in ("global", "parts", "visibility")}
    ids = [arrays[f"{s}_{k}"] for k in ("pids",) for s in ("query", "gallery")]
    ids += [arrays[f"{s}_camids"] for s in ("query", "gallery")]
    own = evaluate_distance_blocks(mat_matcher(q, g, {"metric": "cosine"}), *ids)
    occluded = record["results"]["occluded queries"]
    np.testing.assert_allclose(own["mAP"], occluded["mAP"], rtol=1e-6)
    global_only = evaluate_features(q["global"], g["global"], *ids, metric="cosine")
    assert global_only["mAP"] != own["mAP"]

    # Re-ranking by MAT's own rule (rows next to the plain ones): the dense reference on the
    # extracted embeddings.
    config.eval.rerank = True
    rows = experiment.evaluate(config, workdir)
    np.testing.assert_allclose(rows["occluded queries"]["mAP"], occluded["mAP"], rtol=1e-6)
    dense = dense_rule_rerank(lambda a, b: mat_matcher(a, b, {"metric": "cosine"}), q, g, ids)
    np.testing.assert_allclose(rows["occluded queries +re-rank"]["mAP"], dense["mAP"], rtol=1e-6)
    config.eval.rerank = False

    paths = visualize.visualize(config, workdir, num_queries=2)
    assert os.path.basename(paths[-1]) == "sheet.png"
    strip = cv2.imread(paths[0])
    assert strip.shape == (64 * 2, 4 * 32 * 2, 3)  # four panels, upscaled x2
    assert len(paths) >= 3 and np.ptp(strip) > 0

    bundle_path = experiment.export_bundle(config, workdir)
    exported = experiment.evaluate(config, workdir, export_path=bundle_path)
    for row, metrics in exported.items():
        np.testing.assert_allclose(metrics["mAP"], record["results"][row]["mAP"], rtol=1e-4)
