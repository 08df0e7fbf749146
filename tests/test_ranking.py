"""CMC / mAP / mINP: hand-computed cases and parity with a brute-force per-query evaluator."""

import numpy as np
import pytest

from occreid_jax.errors import UserError
from occreid_jax.evaluation import (
    FeatureDistance,
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_rank,
    format_results_table,
)

# 6 gallery images: person ids and cameras.
G_PIDS = np.array([1, 1, 2, 1, 3, 2])
G_CAMS = np.array([0, 1, 1, 0, 2, 0])
# q0: pid 1 cam 0 -> junk g0, g3 (same id, same camera); positive g1.
# q1: pid 1 cam 2 -> no junk; positives g0, g1, g3.
# q2: pid 3 cam 2 -> its only same-id image g4 is junk: no positive, skipped.
Q_PIDS = np.array([1, 1, 3])
Q_CAMS = np.array([0, 2, 2])
DIST = np.array(
    [
        # stable order g3(junk) g4 g2 g0(junk, tied with g1, lower index) g1(+) g5
        # kept: g4 g2 g1 -> the positive is 3rd.
        [0.4, 0.4, 0.3, 0.1, 0.2, 0.6],
        # g3(+) at rank 1, then g0(+) g2 g4 tied at 0.2 (ranks 2..4 in some order), g1(+) at
        # rank 5, g5.
        [0.2, 0.7, 0.2, 0.1, 0.2, 0.9],
        [0.5, 0.1, 0.2, 0.3, 0.4, 0.0],
    ],
    dtype=np.float32,
)


def test_hand_computed_case():
    r = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    np.testing.assert_array_equal(r["valid"], [True, True, False])
    assert r["num_valid"] == 2
    # q0: one positive at rank 3 (its tie with g0 is with junk, removed) -> AP 1/3, INP 1/3.
    # q1: g0 is at rank 2, 3 or 4 with probability 1/3 each: precision 2/2, 2/3 or 2/4, mean
    # 13/18 -> AP (1 + 13/18 + 3/5) / 3 = 209/270, INP 3/5.
    np.testing.assert_allclose(r["AP"], [1 / 3, 209 / 270])
    np.testing.assert_allclose(r["INP"], [1 / 3, 3 / 5])
    assert r["mAP"] == pytest.approx((1 / 3 + 209 / 270) / 2)
    assert r["mINP"] == pytest.approx((1 / 3 + 3 / 5) / 2)
    # max_rank 50 is clipped to the 6 gallery images.
    np.testing.assert_allclose(r["cmc"], [0.5, 0.5, 1, 1, 1, 1])


def test_hand_computed_case_float64_and_chunks():
    for chunk in (1, 2, 3):
        r = evaluate_rank(DIST.astype(np.float64), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, 3, chunk)
        np.testing.assert_allclose(r["cmc"], [0.5, 0.5, 1])
        assert r["mAP"] == pytest.approx(299 / 540)


def test_no_valid_query_and_bad_input():
    with pytest.raises(UserError, match="no query has a positive"):
        evaluate_rank(DIST[2:], Q_PIDS[2:], G_PIDS, Q_CAMS[2:], G_CAMS)
    with pytest.raises(ValueError, match="q_pids has 2 entries"):
        evaluate_rank(DIST, Q_PIDS[:2], G_PIDS, Q_CAMS, G_CAMS)
    bad = DIST.copy()
    bad[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(bad, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Independent per-query evaluator: stable argsort, drop junk, walk the list."""
    cmcs, aps, inps, valid = [], [], [], []
    max_rank = min(max_rank, dist.shape[1])
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [g_pids[j] == q_pids[i] for j in kept]
        valid.append(any(hits))
        if not any(hits):
            continue
        ranks = [n + 1 for n, hit in enumerate(hits) if hit]  # 1-based ranks of positives
        aps.append(sum((m + 1) / rank for m, rank in enumerate(ranks)) / len(ranks))
        inps.append(len(ranks) / ranks[-1])
        cmcs.append([1.0 if ranks[0] <= k + 1 else 0.0 for k in range(max_rank)])
    return np.mean(cmcs, axis=0), np.array(aps), np.array(inps), np.array(valid)


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_brute_force_on_distinct_distances(seed):
    """Without ties the tie rule never applies: the figures are those of a plain sorted walk."""
    rng = np.random.default_rng(seed)
    num_q, num_g = 23, int(rng.integers(20, 60))
    dtype = (np.float32, np.float64)[seed % 2]
    dist = rng.permutation(num_q * num_g).reshape(num_q, num_g).astype(dtype) / 7
    q_pids = rng.integers(0, 8, num_q)  # ids 6, 7 are missing from the gallery
    g_pids = rng.integers(0, 6, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    max_rank = int(rng.integers(1, 80))
    cmc, aps, inps, valid = brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    assert valid.any() and not valid.all()
    for chunk in (1, 4, 7, None):
        r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank, chunk)
        np.testing.assert_array_equal(r["valid"], valid)
        np.testing.assert_allclose(r["cmc"], cmc, atol=1e-12)
        np.testing.assert_allclose(r["AP"], aps, atol=1e-12)
        np.testing.assert_allclose(r["INP"], inps, atol=1e-12)
        assert r["mAP"] == pytest.approx(aps.mean(), abs=1e-12)
        assert r["mINP"] == pytest.approx(inps.mean(), abs=1e-12)
        assert r["num_valid"] == valid.sum()


def test_string_ids():
    r = evaluate_rank(DIST, Q_PIDS.astype(str), G_PIDS.astype(str), Q_CAMS, G_CAMS)
    assert r["mAP"] == pytest.approx(299 / 540)


def _random_setup(seed, num_q=37, num_g=90, dim=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((num_q, dim)).astype(np.float32)
    g = rng.standard_normal((num_g, dim)).astype(np.float32)
    g[:10] = q[:10] + 0.1 * g[:10]  # a few near matches
    ids = (rng.integers(0, 12, num_q), rng.integers(0, 12, num_g))
    cams = (rng.integers(0, 4, num_q), rng.integers(0, 4, num_g))
    return q, g, ids[0], ids[1], cams[0], cams[1]


def test_evaluate_features_equals_full_matrix():
    # Small-integer features: squared Euclidean distances are exact integers whatever order BLAS
    # sums in, so every block size must give bit-identical metrics (with many tied distances).
    q, g, q_pids, g_pids, q_cams, g_cams = _random_setup(0)
    q, g = np.round(q), np.round(g)
    full = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
    expected = evaluate_rank(full, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    for chunk in (1, 5, 64):
        r = evaluate_features(
            q, g, q_pids, g_pids, q_cams, g_cams, metric="euclidean", max_rank=20, chunk_size=chunk
        )
        for key in ("cmc", "AP", "INP", "valid"):
            np.testing.assert_array_equal(r[key], expected[key])
        assert r["mAP"] == expected["mAP"]


def test_evaluate_features_cosine():
    q, g, q_pids, g_pids, q_cams, g_cams = _random_setup(0)
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    full = (
        1
        - (q64 / np.linalg.norm(q64, axis=1, keepdims=True))
        @ (g64 / np.linalg.norm(g64, axis=1, keepdims=True)).T
    )
    expected = evaluate_rank(full, q_pids, g_pids, q_cams, g_cams)
    for chunk in (3, None):
        r = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
        assert r["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
        np.testing.assert_allclose(r["cmc"], expected["cmc"])


def test_distance_blocks_custom_function_and_progress():
    q, g, q_pids, g_pids, q_cams, g_cams = _random_setup(1)
    base = FeatureDistance(q, g, "cosine")
    calls = []

    def pirt_like(rows):  # a model-side rule: far gallery images get a constant penalty
        calls.append(rows)
        d = base(rows)
        far = d > np.sort(d, axis=1)[:, [9]]
        return d + np.where(far, 1000.0, 0.0)

    r = evaluate_distance_blocks(
        pirt_like, q_pids, g_pids, q_cams, g_cams, chunk_size=8, progress=True
    )
    full = np.concatenate([pirt_like(slice(s, s + 8)) for s in range(0, 37, 8)])
    expected = evaluate_rank(full, q_pids, g_pids, q_cams, g_cams)
    assert [c.start for c in calls[:5]] == [0, 8, 16, 24, 32]
    np.testing.assert_array_equal(r["AP"], expected["AP"])
    with pytest.raises(ValueError, match="expected"):
        evaluate_distance_blocks(lambda rows: np.zeros((2, 3)), q_pids, g_pids, q_cams, g_cams)


def test_format_results_table():
    r = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    short = {"cmc": np.array([0.25, 0.5]), "mAP": 0.125}
    table = format_results_table({"occluded queries": r, "x": short})
    lines = table.splitlines()
    assert lines[0].split() == ["name", "mAP", "mINP", "R-1", "R-5", "R-10", "R-20"]
    assert lines[1].split() == ["occluded", "queries", "55.4", "46.7", "50.0", "100.0", "-", "-"]
    assert lines[2].split() == ["x", "12.5", "-", "25.0", "-", "-", "-"]
