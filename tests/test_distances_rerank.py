"""Distances against direct numpy; k-reciprocal re-ranking against a slow dense transcription."""

import numpy as np
import pytest

from occreid_jax.evaluation import (
    FeatureDistance,
    cosine_distance,
    evaluate_features,
    evaluate_rank,
    l2_normalize,
    pairwise_distance,
    re_ranking,
    squared_euclidean_distance,
)
from occreid_jax.evaluation.rerank import _transpose_inplace, smallest_k


def _feats(seed, n, dim=12, scale=3.0):
    return (np.random.default_rng(seed).standard_normal((n, dim)) * scale).astype(np.float32)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert l2_normalize(x).dtype == np.float32


def test_cosine_and_euclidean_against_numpy():
    q, g = _feats(0, 7), _feats(1, 11)
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    gn = g64 / np.linalg.norm(g64, axis=1, keepdims=True)
    cos = cosine_distance(q, g)
    assert cos.shape == (7, 11) and cos.dtype == np.float32
    np.testing.assert_allclose(cos, 1.0 - qn @ gn.T, atol=2e-6)
    euc = squared_euclidean_distance(q, g)
    expected = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(euc, expected, rtol=1e-5, atol=1e-4)
    # Identical vectors: exactly 0 (clipped), not a small negative number.
    assert np.all(squared_euclidean_distance(q, q).diagonal() >= 0)


def test_distance_blocks_match_whole_matrix():
    q, g = _feats(2, 9), _feats(3, 5)
    for metric in ("cosine", "euclidean"):
        whole = pairwise_distance(q, g, metric, chunk_size=4)
        dist = FeatureDistance(q.astype(np.float64), g, metric)
        # BLAS may sum in another order for another block height: equal up to rounding.
        np.testing.assert_allclose(dist(slice(3, 7)), whole[3:7], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dist(np.array([8, 0])), whole[[8, 0]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        FeatureDistance(q, g, "l1")
    with pytest.raises(ValueError, match="dim"):
        FeatureDistance(q, g[:, :3])


def test_transpose_inplace():
    a = np.arange(49, dtype=np.float32).reshape(7, 7)
    b = a.copy()
    _transpose_inplace(b, block=3)
    np.testing.assert_array_equal(b, a.T)


def test_smallest_k_is_a_stable_argsort_prefix():
    rng = np.random.default_rng(0)
    x = np.round(rng.random((40, 30)), 1).astype(np.float32)  # many ties at the k-th value
    for k in (1, 5, 11, 30):
        np.testing.assert_array_equal(smallest_k(x, k), np.argsort(x, axis=1, kind="stable")[:, :k])


def slow_re_ranking(q_g, q_q, g_g, k1, k2, lam):
    """Dense transcription of the authors' algorithm, loops and sets, stable neighbour order."""
    m = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
    d = (m / m.max(axis=0)).T
    n, nq = d.shape[0], q_g.shape[0]
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2.0 / 3 * len(rc):
                expanded |= set(rc)
        idx = np.array(sorted(expanded), dtype=int)
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.empty((nq, n))
    for i in range(nq):
        shared = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    return ((1 - lam) * jaccard + lam * d[:nq])[:, nq:]


def _blocks(q, g, metric="euclidean"):
    return (
        pairwise_distance(q, g, metric),
        pairwise_distance(q, q, metric),
        pairwise_distance(g, g, metric),
    )


@pytest.mark.parametrize(
    ("num_q", "num_g", "k1", "k2", "lam"),
    [(6, 30, 20, 6, 0.3), (6, 40, 6, 3, 0.3), (8, 50, 10, 1, 0.5), (3, 8, 20, 6, 0.3)],
)
def test_re_ranking_matches_slow_reference(num_q, num_g, k1, k2, lam):
    # Clustered features so that reciprocal sets and expansions are non-trivial.
    rng = np.random.default_rng(num_g)
    centers = _feats(num_q, 4, dim=6)
    q = centers[rng.integers(0, 4, num_q)] + _feats(7, num_q, dim=6, scale=0.5)
    g = centers[rng.integers(0, 4, num_g)] + _feats(8, num_g, dim=6, scale=0.5)
    blocks = _blocks(q, g)
    got = re_ranking(*blocks, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (num_q, num_g) and got.dtype == np.float32
    np.testing.assert_allclose(got, slow_re_ranking(*blocks, k1, k2, lam), atol=2e-6)


def test_re_ranking_with_duplicate_images():
    # Exact duplicates tie at distance 0: neighbour order must follow the stable rule.
    g = _feats(4, 10, dim=5)
    g = np.concatenate([g, g[:4]])
    q = g[[0, 5, 12]].copy()
    blocks = _blocks(q, g, "cosine")
    got = re_ranking(*blocks, k1=4, k2=2)
    np.testing.assert_allclose(got, slow_re_ranking(*blocks, 4, 2, 0.3), atol=2e-6)
    # A query's own duplicates are its best matches after re-ranking.
    assert set(np.argsort(got[0], kind="stable")[:2]) == {0, 10}


def test_re_ranking_lambda_one_is_the_normalised_original():
    q, g = _feats(5, 4), _feats(6, 15)
    q_g, q_q, g_g = _blocks(q, g)
    got = re_ranking(q_g, q_q, g_g, lambda_value=1.0)
    col_max = np.maximum(q_q.max(axis=0), q_g.max(axis=1))  # max of each query column
    np.testing.assert_allclose(got, q_g / col_max[:, None], rtol=1e-6)


def test_evaluate_features_with_rerank():
    q, g = _feats(9, 6), _feats(10, 25)
    q_pids, g_pids = np.arange(6) % 3, np.arange(25) % 5
    q_cams, g_cams = np.zeros(6, int), np.ones(25, int)
    r = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric="cosine", rerank=True)
    final = re_ranking(*_blocks(q, g, "cosine"))
    expected = evaluate_rank(final, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(r["AP"], expected["AP"])
    assert r["cmc"].shape == (25,)
