"""The real loop on the tiny synthetic set: train, interrupt, resume, eval, export, extract."""

import json

import numpy as np
import pytest

from occreid_jax import experiment
from occreid_jax.data import pipeline
from occreid_jax.errors import UserError
from occreid_jax.training.run import Run

pytestmark = pytest.mark.slow


def _final_params(workdir, config):
    _, _, state = Run(config, workdir).restored_state()
    return state


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(
    tiny_config, tmp_path, monkeypatch
):
    config = tiny_config("baseline")
    straight = experiment.train_and_evaluate(config, str(tmp_path / "straight"))
    assert straight["step"] == 4
    for row in ("occluded queries", "holistic queries"):
        assert 0.0 < straight["results"][row]["mAP"] <= 1.0
    log = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in log]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]

    # Interrupt while the pipeline makes the fourth batch: the loop copies batches to the
    # devices two steps ahead, so that is during step 2, and Ctrl-C saves a checkpoint there.
    real_batches = pipeline.train_batches

    def interrupted(*args, **kwargs):
        for count, batch in enumerate(real_batches(*args, **kwargs)):
            if count == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", interrupted)
    with pytest.raises(UserError, match="interrupted at step 2.*rerun"):
        experiment.train_and_evaluate(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(pipeline, "train_batches", real_batches)
    resumed = experiment.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed["step"] == 4

    a = _final_params(str(tmp_path / "straight"), config)
    b = _final_params(str(tmp_path / "resumed"), config)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert resumed["results"] == straight["results"]

    # eval reproduces the final results; export -> eval of the bundle gives the same numbers.
    evaluated = experiment.evaluate(config, str(tmp_path / "straight"))
    for row, metrics in straight["results"].items():
        np.testing.assert_allclose(evaluated[row]["mAP"], metrics["mAP"], rtol=1e-6)
    bundle = experiment.export_bundle(config, str(tmp_path / "straight"))
    from_bundle = experiment.evaluate(config, str(tmp_path / "straight"), export_path=bundle)
    for row, metrics in straight["results"].items():
        np.testing.assert_allclose(from_bundle[row]["mAP"], metrics["mAP"], rtol=1e-4)

    # extract writes what external scripts need, aligned with the dataset.
    path = experiment.extract(config, str(tmp_path / "straight"))
    arrays = np.load(path)
    exp = Run(config, str(tmp_path / "straight"))
    np.testing.assert_array_equal(arrays["query_pids"], exp.eval_splits["query"].pids)
    np.testing.assert_array_equal(arrays["gallery_camids"], exp.eval_splits["gallery"].camids)
    assert arrays["query_features"].shape == (len(exp.eval_splits["query"]), 512)
    assert arrays["gallery_features"].shape[0] == len(exp.eval_splits["gallery"])
    from occreid_jax.evaluation import evaluate_features

    recomputed = evaluate_features(
        arrays["query_features"], arrays["gallery_features"], arrays["query_pids"],
        arrays["gallery_pids"], arrays["query_camids"], arrays["gallery_camids"],
    )  # fmt: skip
    np.testing.assert_allclose(
        recomputed["mAP"], straight["results"]["occluded queries"]["mAP"], rtol=1e-6
    )

    # Query expansion and re-ranking add rows; the dense reference (the whole matrix) on the
    # extracted features gives the expanded and re-ranked figure.
    from occreid_jax.evaluation import average_query_expansion, evaluate_rank, pairwise_distance
    from occreid_jax.evaluation.rerank import k_reciprocal_rerank

    config.eval.rerank = config.eval.aqe = True
    rows = experiment.evaluate(config, str(tmp_path / "straight"))
    assert set(rows) == {f"{r}{s}" for r in straight["results"] for s in ("", " +AQE",
                         " +re-rank", " +AQE +re-rank")}  # fmt: skip
    q, g = average_query_expansion(arrays["query_features"], arrays["gallery_features"])
    everything = np.concatenate([q, g])
    final = k_reciprocal_rerank(pairwise_distance(everything, everything), len(q))
    ids = [arrays[f"{s}_{k}"] for k in ("pids", "camids") for s in ("query", "gallery")]
    expected = evaluate_rank(final, *ids)["mAP"]
    np.testing.assert_allclose(rows["occluded queries +AQE +re-rank"]["mAP"], expected, rtol=1e-6)


def test_evaluating_an_empty_workdir_is_a_clear_error(tiny_config, tmp_path):
    with pytest.raises(UserError, match="no checkpoint in .*train first"):
        experiment.evaluate(tiny_config("baseline"), str(tmp_path / "empty"))


def test_a_checkpoint_from_another_model_is_refused(tiny_config, tmp_path):
    config = tiny_config("baseline")
    config.train.epochs = 1
    experiment.train_and_evaluate(config, str(tmp_path / "run"))
    config.model.backbone = "resnet_tiny_ibn_a"
    with pytest.raises(UserError, match="different model.*backbone"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))


def test_an_unreadable_image_is_named(tiny_data_dir):
    from occreid_jax.data import datasets

    builder = datasets.prepare("synthetic", "tiny", tiny_data_dir)
    split = datasets.load_split(builder, "query")
    split.images[3] = b"not an image"
    with pytest.raises(UserError, match=f"{split.filenames[3]}.*cannot be decoded"):
        list(pipeline.eval_batches(split, image_size=(64, 32), batch_size=8, num_devices=2))
