"""Blocked k-reciprocal re-ranking against the dense reference (`rerank.py`), a hand-checked
k-reciprocal case, the memory bound, and the rules' same-set pairs."""

import tracemalloc

import numpy as np
import pytest

from occreid_jax.evaluation import (
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_rank,
    kreciprocal,
    pairwise_distance,
)
from occreid_jax.evaluation.mat_matching import mat_matcher
from occreid_jax.evaluation.pirt_matching import pirt_distance
from occreid_jax.evaluation.rerank import k_reciprocal_rerank
from occreid_jax.evaluation.rerank_blocks import BlockedReRanking
from occreid_jax.evaluation.set_pairs import FeatureSetPairs, RuleSetPairs, probe_slices


def _integer_problem(num_q=23, num_g=120, dim=6, seed=0):
    """Small-integer features: exact squared Euclidean distances with many ties."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
    g = rng.integers(-2, 3, (num_g, dim)).astype(np.float32)
    ids = (rng.integers(0, 8, num_q), rng.integers(0, 8, num_g), rng.integers(0, 3, num_q),
           rng.integers(0, 3, num_g))  # fmt: skip
    return q, g, ids


def _final(reranked):
    """[Q, G] re-ranked distances, queried in the blocks the evaluation uses."""
    num_q, step = reranked.shape[0], reranked.block_rows
    return np.concatenate([reranked(slice(s, min(s + step, num_q))) for s in range(0, num_q, step)])


def _assert_same_metrics(got, expected):
    for key in ("valid", "cmc", "AP", "INP"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert got["mAP"] == expected["mAP"] and got["mINP"] == expected["mINP"]


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("block_rows", [1, 7, 13, None])  # 23 + 120 rows: 7 and 13 do not divide
@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (6, 3, 0.3), (10, 1, 0.5)])
def test_blocked_equals_dense_on_exact_distances(backend, block_rows, k1, k2, lam):
    q, g, ids = _integer_problem()
    everything = np.concatenate([q, g])
    dense = k_reciprocal_rerank(
        pairwise_distance(everything, everything, "euclidean"), 23, k1, k2, lam
    )
    reranked = BlockedReRanking(
        FeatureSetPairs(q, g, "euclidean"), k1, k2, lam, block_rows=block_rows, backend=backend
    )
    np.testing.assert_array_equal(_final(reranked), dense)
    got = evaluate_features(q, g, *ids, metric="euclidean", rerank=True, k1=k1, k2=k2,
                            lambda_value=lam, chunk_size=block_rows, backend=backend)  # fmt: skip
    _assert_same_metrics(got, evaluate_rank(dense, *ids))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_blocked_reads_the_dense_values_on_continuous_features(metric):
    """The dense input's columns, bit for bit: the same neighbours, V to float rounding."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 16))
    q = (centres[rng.integers(0, 10, 40)] + 0.6 * rng.normal(size=(40, 16))).astype(np.float32)
    g = (centres[rng.integers(0, 10, 300)] + 0.6 * rng.normal(size=(300, 16))).astype(np.float32)
    everything = np.concatenate([q, g])
    dense = k_reciprocal_rerank(pairwise_distance(everything, everything, metric), 40)
    for block_rows in (5, 64, None):
        reranked = BlockedReRanking(FeatureSetPairs(q, g, metric), block_rows=block_rows)
        np.testing.assert_allclose(_final(reranked), dense, rtol=0, atol=1.5e-7)


def test_small_chunks_of_the_sparse_steps_change_nothing():
    q, g, ids = _integer_problem(seed=2)
    whole = BlockedReRanking(FeatureSetPairs(q, g, "euclidean"))
    chunked = BlockedReRanking(FeatureSetPairs(q, g, "euclidean"))
    chunked.jaccard.chunk_entries = 1  # one query row per sub-block of the Jaccard sums
    np.testing.assert_array_equal(_final(whole), _final(chunked))
    everything = np.concatenate([q, g])
    neighbors = kreciprocal.smallest_k(pairwise_distance(everything, everything, "euclidean"), 21)
    sets = kreciprocal.expanded_sets(neighbors, 20)
    v = kreciprocal.kernel_rows(sets, np.ones(sets.indices.shape, np.float32))
    whole = kreciprocal.local_query_expansion(v, neighbors, 6)
    chunked = kreciprocal.local_query_expansion(v, neighbors, 6, chunk_entries=1)
    for field in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(chunked, field))


@pytest.mark.parametrize("decimals", [None, 2, 0])  # continuous, some ties, massive ties
def test_smallest_k_by_a_sampled_bound_is_a_stable_argsort_prefix(decimals):
    x = np.random.default_rng(6).random((30, 3000)).astype(np.float32)
    x = x if decimals is None else np.round(x, decimals)
    for k in (1, 21, 90):
        expected = np.argsort(x, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(kreciprocal.smallest_k(x, k), expected)


def _expanded(neighbors, k1):
    sets = kreciprocal.expanded_sets(np.asarray(neighbors), k1)
    return [
        set(sets.indices[sets.indptr[i] : sets.indptr[i + 1]].tolist())
        for i in range(len(neighbors))
    ]


def test_k_reciprocal_sets_by_hand():
    """Points on a line, k1 = 6 (N(i, 6): the 7 nearest, self included; R_half: the 4 nearest).

        l1=0.1  l2=1.2  l3=2  i=3        j=6  c1=6.5  c2=7.05  z=7.7

    * N(i, 6) = {i, l3, l2, l1, j, c1, c2}, all reciprocal: R(i) is that set; z is not in it.
    * N(z, 6) = {z, c2, c1, j, i, l3, l2}, but z is not among i's 7 nearest: i is a
      non-reciprocal neighbour of z, so R(z) = {z, c2, c1, j}.
    * R_half(j) = {j, c1, c2, z} (mutual 4-nearest); 3 of its 4 members are in R(i), more
      than 2/3: the expansion adds z to i's set. Every other R_half adds nothing to R(z).
    """
    x = np.array([0.1, 1.2, 2.0, 3.0, 6.0, 6.5, 7.05, 7.7], np.float32)[:, None]
    l1, l2, l3, i, j, c1, c2, z = range(8)
    neighbors = kreciprocal.smallest_k(pairwise_distance(x, x, "euclidean"), 7)
    assert set(neighbors[i].tolist()) == {i, l3, l2, l1, j, c1, c2}
    assert set(neighbors[z].tolist()) == {z, c2, c1, j, i, l3, l2}
    sets = _expanded(neighbors, 6)
    assert sets[i] == {i, l3, l2, l1, j, c1, c2, z}
    assert sets[z] == {z, c2, c1, j}


def test_the_two_thirds_rule_is_strict():
    """k1 = 4 (N(., 4): 5 entries; R_half from N(., 2): 3 entries), neighbour lists by hand.

    R(0) = {0, 1, 2, 3, 4}. R_half(1) = R_half(2) = {1, 2, 5}: two of its three members are in
    R(0), exactly 2/3, not more, so 5 is not added to 0's set.
    """
    neighbors = [
        [0, 1, 2, 3, 4],
        [1, 2, 5, 0, 3],
        [2, 1, 5, 0, 4],
        [3, 4, 0, 1, 2],
        [4, 3, 0, 2, 5],
        [5, 1, 2, 4, 3],
    ]
    assert _expanded(neighbors, 4)[0] == {0, 1, 2, 3, 4}


def test_memory_stays_within_the_budget():
    """500 x 3,500 images: the (Q+G)^2 float32 matrix would be 64 MB. Traced numpy arrays
    with a 4 MiB budget stay under the budget plus 6 MiB: the neighbour lists (4,000 x 21 x
    12 B = 1 MiB), the sparse V (~270k entries, 2 MiB) with its gallery columns, the ids."""
    q, g, ids = _integer_problem(num_q=500, num_g=3500, dim=8, seed=3)
    peaks, results = {}, {}
    for budget in (4, 16):
        tracemalloc.start()
        results[budget] = evaluate_features(
            q, g, *ids, metric="euclidean", rerank=True, memory_mib=budget, backend="numpy"
        )
        peaks[budget] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert peaks[4] < 4 + 6, peaks
    assert peaks[16] < 16 + 6, peaks
    _assert_same_metrics(results[4], results[16])


def _mat_features(rng, n):
    return {
        "global": rng.normal(size=(n, 8)).astype(np.float32),
        "parts": rng.normal(size=(n, 3, 8)).astype(np.float32),
        "visibility": rng.random((n, 3)).astype(np.float32),
    }


RULES = {
    "mat": lambda a, b: mat_matcher(a, b, {"metric": "cosine"}),
    "pirt": lambda a, b: pirt_distance(a, b, {"top_n": 10}),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("block_rows", [1, 5, None])
def test_rules_rerank_like_the_dense_reference(rule, block_rows, pirt_embeddings):
    make_features = {"mat": _mat_features, "pirt": pirt_embeddings}[rule]
    make_block = RULES[rule]
    rng = np.random.default_rng(4)
    q, g = make_features(rng, 12), make_features(rng, 60)
    ids = (rng.integers(0, 5, 12), rng.integers(0, 5, 60), np.zeros(12), np.ones(60))
    pairs = RuleSetPairs(make_block, q, g)
    reranked = BlockedReRanking(pairs, k1=6, k2=3, block_rows=block_rows)
    # The dense reference on the whole matrix of the same blocks (row a: image a as probe).
    whole = np.concatenate(
        [np.concatenate(pairs.block(s), axis=1) for s in probe_slices(12, 60, reranked.block_rows)]
    )
    dense = k_reciprocal_rerank(np.ascontiguousarray(whole.T), 12, k1=6, k2=3)
    np.testing.assert_array_equal(_final(reranked), dense)
    got = evaluate_distance_blocks(reranked, *ids, chunk_size=reranked.block_rows)
    _assert_same_metrics(got, evaluate_rank(dense, *ids))


def test_same_set_pairs_of_the_rules(pirt_embeddings):
    """Each rule applied as written with the probe in the query's role: the query-gallery
    block is the evaluation's own distance; MAT's rule is symmetric, so is its whole M; Pirt
    with top_n over everything and weights sqrt(c_a c_b) too, while "query" weighting reads
    the probe's confidences only."""
    rng = np.random.default_rng(5)
    rules = {
        "mat": (_mat_features, RULES["mat"]),
        "pirt": (pirt_embeddings, lambda a, b: pirt_distance(a, b, {"top_n": 100})),
    }
    for make_features, make_block in rules.values():
        q, g = make_features(rng, 6), make_features(rng, 15)
        pairs = RuleSetPairs(make_block, q, g)
        whole = np.concatenate(
            [np.concatenate(pairs.block(s), axis=1) for s in probe_slices(6, 15, 4)]
        )
        np.testing.assert_array_equal(whole[:6, 6:], make_block(q, g)(slice(0, 4)).tolist()
                                      + make_block(q, g)(slice(4, 6)).tolist())  # fmt: skip
        np.testing.assert_allclose(whole, whole.T, rtol=1e-5, atol=1e-5)
    # Pirt, "query" weighting, a gallery-gallery pair (a = gallery 2, b = gallery 7):
    # d = d_stripe + d_patch + sum_p ||k_ap - k_bp|| c_ap, every pair in the top-N.
    pairs = RuleSetPairs(
        lambda a, b: pirt_distance(a, b, {"top_n": 100, "confidence": "query"}), q, g
    )
    got = pairs.block(slice(6 + 2, 6 + 3))[1][0, 7]

    def cos(u, v):
        return 1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

    a, b = 2, 7
    keys = [g["parts"][n] / np.linalg.norm(g["parts"][n], axis=-1, keepdims=True) for n in (a, b)]
    local = (np.linalg.norm(keys[0] - keys[1], axis=-1) * g["confidence"][a]).sum()
    expected = cos(g["stripe"][a], g["stripe"][b]) + cos(g["patch"][a], g["patch"][b]) + local
    np.testing.assert_allclose(got, expected, rtol=1e-5)
