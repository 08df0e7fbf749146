"""MAT through the real loop on the tiny synthetic set: train, evaluate by its own matching rule,
visualize, export and evaluate the export."""

import json
import os

import cv2
import numpy as np
import pytest

from occreid_jax import experiment, families
from occreid_jax.data import datasets
from occreid_jax.evaluation import evaluate_distance_blocks
from occreid_jax.evaluation.mat_matching import mat_matcher
from occreid_jax.nets.mat import COCO_GROUPS
from occreid_jax.pictures import visualize
from occreid_jax.probes import flow_probe
from occreid_jax.training.run import Run

pytestmark = pytest.mark.slow


def test_train_eval_visualize_export(tiny_config, tmp_path, dense_rule_rerank):
    config = tiny_config("mat")
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
    run = Run(config, workdir)
    model, _, state = run.restored_state()
    split = datasets.load_split(run.builder, "train", with_heatmaps=False)
    groups = flow_probe.collect_groups(config, split, 4)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    aux = flow_probe.model_outputs(model.apply, variables, groups.images.reshape(16, 64, 32, 3))
    scores = flow_probe.flow_scores(
        aux, groups, families.get("mat").loss_settings(config), (64, 32), COCO_GROUPS[3]
    )
    assert np.isfinite(list(scores.values())).all() and len(scores) == 11
    verdict = flow_probe.gate(scores, 0.05)
    best_global = min(scores[name] for name in flow_probe.GLOBAL_MOTIONS)
    best_parts = min(scores[name] for name in flow_probe.GROUND_TRUTH)
    assert verdict["passed"] == (best_parts <= (1 - 0.05) * best_global)

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
    # The part term is in the rule's distances (after two steps it may not reorder them).
    rows = slice(0, len(q["global"]))
    own_distances = mat_matcher(q, g, {"metric": "cosine"})(rows)
    global_only = mat_matcher(q, g, {"metric": "cosine", "part_weight": 0.0})(rows)
    assert np.abs(own_distances - global_only).max() > 1e-4

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
