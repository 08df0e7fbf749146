"""MAT's matcher against a naive per-pair loop, and through the evaluation driver."""

import numpy as np
import pytest

from occreid_jax.evaluation import evaluate_distance_blocks, evaluate_rank
from occreid_jax.evaluation.mat_matching import mat_matcher


def _features(rng, n, parts=4, dim=8):
    visibility = rng.random((n, parts)).astype(np.float32)
    visibility[0, :] = 0.0  # an image with every part hidden
    visibility[1, 1] = 0.0
    return {
        "global": rng.normal(size=(n, dim)).astype(np.float32),
        "parts": rng.normal(size=(n, parts, dim)).astype(np.float32),
        "visibility": visibility,
    }


def _distance(a, b, metric):
    if metric == "cosine":
        return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(((a - b) ** 2).sum())


def _naive(q, g, metric, part_weight):
    out = np.zeros((len(q["global"]), len(g["global"])))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            d = _distance(q["global"][i], g["global"][j], metric)
            num = den = 0.0
            for k in range(q["parts"].shape[1]):
                w = float(q["visibility"][i, k]) * float(g["visibility"][j, k])
                num += w * _distance(q["parts"][i, k], g["parts"][j, k], metric)
                den += w
            out[i, j] = d + (part_weight * num / den if den > 0 else 0.0)
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("part_weight", [1.0, 0.5])
def test_matches_a_naive_per_pair_loop(metric, part_weight):
    rng = np.random.default_rng(0)
    q, g = _features(rng, 7), _features(rng, 11)
    block = mat_matcher(q, g, {"metric": metric, "part_weight": part_weight})
    expected = _naive(q, g, metric, part_weight)
    got = np.concatenate([block(slice(0, 3)), block(slice(3, 7))])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert got.dtype == np.float32


def test_a_hidden_part_does_not_count():
    rng = np.random.default_rng(1)
    q, g = _features(rng, 3), _features(rng, 5)
    g2 = {k: v.copy() for k, v in g.items()}
    g2["parts"][:, 1] = 100.0  # part 1 of the gallery changes wildly ...
    q["visibility"][:, 1] = 0.0  # ... but it is hidden in every query
    settings = {"metric": "cosine"}
    np.testing.assert_allclose(
        mat_matcher(q, g, settings)(slice(0, 3)), mat_matcher(q, g2, settings)(slice(0, 3))
    )


def test_through_the_block_driver():
    rng = np.random.default_rng(2)
    q, g = _features(rng, 9), _features(rng, 13)
    q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 4, 13)
    q_cams, g_cams = np.zeros(9, int), np.ones(13, int)
    block = mat_matcher(q, g, {"metric": "cosine"})
    metrics = evaluate_distance_blocks(block, q_pids, g_pids, q_cams, g_cams, 5, chunk_size=4)
    full = evaluate_rank(_naive(q, g, "cosine", 1.0), q_pids, g_pids, q_cams, g_cams, 5)
    np.testing.assert_allclose(metrics["mAP"], full["mAP"], rtol=1e-6)
    np.testing.assert_allclose(metrics["cmc"], full["cmc"])


def test_missing_embeddings_are_named():
    rng = np.random.default_rng(3)
    q, g = _features(rng, 2), _features(rng, 2)
    del q["visibility"]
    with pytest.raises(ValueError, match="visibility"):
        mat_matcher(q, g, {"metric": "cosine"})
