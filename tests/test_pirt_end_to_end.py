"""Pirt through the real loop on the tiny synthetic set: train, eval, export, extract."""

import numpy as np
import pytest

from occreid_jax import experiment
from occreid_jax.errors import UserError
from occreid_jax.evaluation import evaluate_distance_blocks
from occreid_jax.evaluation.pirt_matching import pirt_distance

pytestmark = [pytest.mark.slow, pytest.mark.full_xla]


def test_pirt_trains_evaluates_exports_and_extracts_with_its_own_matching(
    tiny_config, tmp_path, dense_rule_rerank
):
    config = tiny_config("pirt")
    workdir = str(tmp_path / "run")
    record = experiment.train_and_evaluate(config, workdir)
    assert record["step"] == 4
    results = record["results"]
    for row in ("occluded queries", "holistic queries"):
        assert 0.0 < results[row]["mAP"] <= 1.0

    # The exported bundle carries the matching settings and reproduces the metrics.
    bundle = experiment.export_bundle(config, workdir)
    other = tiny_config("pirt")
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
    ids = [arrays[f"{s}_{k}"] for k in ("pids", "camids") for s in ("query", "gallery")]
    metrics = evaluate_distance_blocks(pirt_distance(q, g, {"top_n": 5}), *ids)
    np.testing.assert_allclose(metrics["mAP"], results["occluded queries"]["mAP"], rtol=1e-6)

    # Re-ranking and query expansion by Pirt's own rule: rows next to the plain ones (which do
    # not change); the re-ranked row is the dense reference on the extracted embeddings.
    config.eval.rerank = config.eval.aqe = True
    rows = experiment.evaluate(config, workdir)
    for row in ("occluded queries", "holistic queries"):
        np.testing.assert_allclose(rows[row]["mAP"], results[row]["mAP"], rtol=1e-6)
        for suffix in (" +AQE", " +re-rank", " +AQE +re-rank"):
            assert 0.0 < rows[row + suffix]["mAP"] <= 1.0
    dense = dense_rule_rerank(lambda a, b: pirt_distance(a, b, {"top_n": 5}), q, g, ids)
    np.testing.assert_allclose(rows["occluded queries +re-rank"]["mAP"], dense["mAP"], rtol=1e-6)


def test_pirt_without_heatmaps_is_a_clear_error(tiny_config, tmp_path):
    config = tiny_config("pirt")
    config.pose.source = "none"
    with pytest.raises(UserError, match="pose-guided but pose.source is none"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
    config.pose.source = "ground_truth"
    config.eval.confidence = "both"
    with pytest.raises(UserError, match="unknown confidence 'both'"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
