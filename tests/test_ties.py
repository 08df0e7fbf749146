"""Tied distances: scored as the mean over all their orders, by hand and by brute force."""

import itertools
import math
import warnings

import numpy as np
import pytest

from occreid_jax.evaluation import (
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_rank,
    ranking,
    ties,
)


def _stable_walk(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per-query CMC rows, AP, INP of valid queries: stable argsort, junk dropped, a plain walk."""
    cmcs, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        ranks = [n + 1 for n, j in enumerate(kept) if g_pids[j] == q_pids[i]]
        if not ranks:
            continue
        aps.append(sum((m + 1) / r for m, r in enumerate(ranks)) / len(ranks))
        inps.append(len(ranks) / ranks[-1])
        cmcs.append([float(ranks[0] <= k + 1) for k in range(max_rank)])
    return np.array(cmcs), np.array(aps), np.array(inps)


def _mean_over_gallery_orders(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The tie rule by brute force: every storage order of the gallery, ties by that order."""
    totals = None
    perms = list(itertools.permutations(range(dist.shape[1])))
    for perm in perms:
        perm = np.array(perm)
        got = _stable_walk(dist[:, perm], q_pids, g_pids[perm], q_cams, g_cams[perm], max_rank)
        totals = got if totals is None else [a + b for a, b in zip(totals, got, strict=True)]
    return [a / len(perms) for a in totals]


def test_all_tied_by_hand():
    # Query pid 7 cam 0; kept gallery g0(-) g1(+) g3(-) g4(+), g2 is junk; all distances equal.
    # The 6 placements of 2 positives among 4 places give AP 1, 5/6, 3/4, 7/12, 1/2, 5/12 (mean
    # 49/72), INP 1, 2/3, 1/2, 2/3, 1/2, 1/2 (mean 23/36), a positive first in 3 of 6, within
    # the first 2 in 5 of 6.
    g_pids, g_cams = np.array([5, 7, 7, 6, 7]), np.array([1, 1, 0, 1, 2])
    with pytest.warns(ranking.TiedDistancesWarning, match="1 of 1 queries"):
        r = evaluate_rank(np.zeros((1, 5)), [7], g_pids, [0], g_cams)
    np.testing.assert_allclose(r["AP"], [49 / 72])
    np.testing.assert_allclose(r["INP"], [23 / 36])
    np.testing.assert_allclose(r["cmc"], [1 / 2, 5 / 6, 1, 1, 1])


def test_a_tie_behind_a_closer_positive_by_hand():
    # Kept: g0(+) at 0.1, then g1(+) g2(-) g3(-) tied at 0.5 (ranks 2..4), g4(+) at 0.9 (rank 5).
    # g1 at rank 2, 3, 4: precision 2/2, 2/3, 2/4 -> AP (1 + 13/18 + 3/5) / 3; the first
    # positive is untied (CMC 1 from rank 1), the last one at rank 5 (INP 3/5).
    dist = np.array([[0.1, 0.5, 0.5, 0.5, 0.9]])
    g_pids, g_cams = np.array([1, 1, 2, 3, 1]), np.array([1, 1, 1, 1, 1])
    r = evaluate_rank(dist, [1], g_pids, [0], g_cams)
    np.testing.assert_allclose(r["AP"], [(1 + 13 / 18 + 3 / 5) / 3])
    np.testing.assert_allclose(r["INP"], [3 / 5])
    np.testing.assert_allclose(r["cmc"], [1, 1, 1, 1, 1])


@pytest.mark.parametrize("seed", range(8))
def test_equals_the_mean_over_all_gallery_orders(seed):
    """Small galleries with many ties (positives, junk and negatives inside the same tie)."""
    rng = np.random.default_rng(seed)
    num_q, num_g = 5, int(rng.integers(4, 7))
    dist = rng.integers(0, 3, (num_q, num_g)).astype((np.float32, np.float64)[seed % 2])
    q_pids, g_pids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q_cams, g_cams = rng.integers(0, 2, num_q), rng.integers(0, 3, num_g)
    cmc, aps, inps = _mean_over_gallery_orders(dist, q_pids, g_pids, q_cams, g_cams, num_g)
    if aps.size == 0:
        pytest.skip("no valid query drawn")
    r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=num_g)
    np.testing.assert_allclose(r["AP"], aps, atol=1e-12)
    np.testing.assert_allclose(r["INP"], inps, atol=1e-12)
    np.testing.assert_allclose(r["cmc"], cmc.mean(axis=0), atol=1e-12)


def test_the_formulas_against_enumeration():
    """ties.py's closed forms against enumerating the C(t, p) placements of p positives."""
    for s, t, p, b in [(0, 2, 1, 0), (3, 5, 2, 1), (1, 6, 6, 1), (10, 7, 3, 4), (0, 9, 4, 0)]:
        placements = list(itertools.combinations(range(1, t + 1), p))
        precision = np.mean([
            np.mean([(b + 1 + n) / (s + r) for n, r in enumerate(places)]) for places in placements
        ])  # fmt: skip
        last = np.mean([1 / (s + places[-1]) for places in placements])
        hits = [np.mean([s + places[0] <= k for places in placements]) for k in range(1, 20)]
        args = (np.array([s]), np.array([t]), np.array([p]))
        assert ties.expected_precision(*args, np.array([b]))[0] == pytest.approx(precision)
        assert ties.expected_inverse_last_rank(s, t, p) == pytest.approx(last)
        np.testing.assert_allclose(ties.expected_hits(*args, 19)[0], hits, atol=1e-12)
    assert math.isclose(ties.harmonic_gaps(np.array([2]), np.array([2]))[0], 1 / 3 + 1 / 4)


def _collapsed_problem(seed=0, num_q=12, num_g=40):
    rng = np.random.default_rng(seed)
    g_pids = np.sort(rng.integers(0, 6, num_g))  # stored in identity order, as real datasets
    q_pids = rng.integers(0, 6, num_q)
    return q_pids, g_pids, rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_a_collapsed_model_scores_chance_whatever_the_gallery_order(backend):
    q_pids, g_pids, q_cams, g_cams = _collapsed_problem()
    q = np.ones((12, 4), np.float32)
    g = np.ones((40, 4), np.float32)
    with pytest.warns(ranking.TiedDistancesWarning):
        r = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, backend=backend)
    # Chance: rank 1 is a positive with probability positives / kept entries, for each query.
    keep = ~((g_pids[None] == q_pids[:, None]) & (g_cams[None] == q_cams[:, None]))
    pos = (g_pids[None] == q_pids[:, None]) & keep
    valid = pos.any(axis=1)
    chance_r1 = (pos.sum(1) / keep.sum(1))[valid].mean()
    assert r["cmc"][0] == pytest.approx(chance_r1)
    # The storage order changes nothing, however it is shuffled (also in tiles).
    perm = np.random.default_rng(1).permutation(40)
    with pytest.warns(ranking.TiedDistancesWarning):
        shuffled = evaluate_features(
            q, g, q_pids, g_pids[perm], q_cams, g_cams[perm], backend=backend, memory_mib=0.0005
        )
    for key in ("cmc", "AP", "INP"):
        np.testing.assert_allclose(shuffled[key], r[key], rtol=1e-12)


def test_one_positive_in_a_collapsed_gallery_has_the_harmonic_ap():
    g_pids, g_cams = np.array([1, 2, 3, 4, 5, 6]), np.ones(6, int)
    with pytest.warns(ranking.TiedDistancesWarning):
        r = evaluate_rank(np.full((1, 6), 0.3), [4], g_pids, [0], g_cams)
    harmonic = sum(1 / n for n in range(1, 7)) / 6
    np.testing.assert_allclose(r["AP"], [harmonic])
    np.testing.assert_allclose(r["INP"], [harmonic])
    np.testing.assert_allclose(r["cmc"], np.arange(1, 7) / 6)


def test_a_rule_through_the_block_driver_is_tie_aware():
    """A model's own rule (any distance function) is scored by the same path."""
    q_pids, g_pids, q_cams, g_cams = _collapsed_problem(2)
    perm = np.random.default_rng(3).permutation(40)

    def rule(rows):  # two distance levels only: half the gallery ties at each
        return np.tile((np.arange(40) % 2).astype(np.float32), (rows.stop - rows.start, 1))

    with pytest.warns(ranking.TiedDistancesWarning):
        got = evaluate_distance_blocks(rule, q_pids, g_pids, q_cams, g_cams, chunk_size=5)
        full = rule(slice(0, 12))
        expected = evaluate_rank(full, q_pids, g_pids, q_cams, g_cams)
        shuffled = evaluate_rank(full[:, perm], q_pids, g_pids[perm], q_cams, g_cams[perm])
    np.testing.assert_array_equal(got["AP"], expected["AP"])
    np.testing.assert_allclose(shuffled["AP"], expected["AP"], rtol=1e-12)  # storage order
    np.testing.assert_allclose(shuffled["cmc"], expected["cmc"], rtol=1e-12)


def test_no_warning_without_ties():
    rng = np.random.default_rng(0)
    q_pids, g_pids, q_cams, g_cams = _collapsed_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_rank(rng.random((12, 40)), q_pids, g_pids, q_cams, g_cams)


def test_queries_without_a_positive_are_left_out_with_one_warning():
    """Query 1's id is in the gallery only under its own camera (junk): no positive."""
    d = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4], [0.7, 0.1, 0.8]], np.float32)
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 0, 0])
    g_pids, g_cams = np.array([1, 2, 3]), np.array([1, 0, 1])
    with pytest.warns(ranking.QueriesLeftOutWarning, match="1 of 3 queries have no positive"):
        metrics = ranking.evaluate_rank(d, q_pids, g_pids, q_cams, g_cams)
    assert metrics["num_valid"] == 2
    assert metrics["AP"].tolist() == [1.0, 1 / 3]  # query 3: its positive (0.8) ranks third
