"""Evaluation in tiles within a memory budget: exactly the metrics of the whole matrix."""

import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax.evaluation import blocks as tiling
from occreid_jax.evaluation import (
    device,
    evaluate_distance_blocks,
    evaluate_features,
    evaluate_rank,
    pairwise_distance,
    ranking,
)


def _integer_problem(num_q=37, num_g=300, dim=8, seed=0):
    """Small-integer features: every squared Euclidean distance is an exact float32 integer,
    whatever the tile shape, and many of them tie (the tie rule is exercised)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
    g = rng.integers(-2, 3, (num_g, dim)).astype(np.float32)
    ids = (
        rng.integers(0, 12, num_q),
        rng.integers(0, 12, num_g),
        rng.integers(0, 3, num_q),
        rng.integers(0, 3, num_g),
    )
    return q, g, ids


def _assert_same_metrics(got, expected):
    np.testing.assert_array_equal(got["valid"], expected["valid"])
    np.testing.assert_array_equal(got["cmc"], expected["cmc"])
    np.testing.assert_array_equal(got["AP"], expected["AP"])
    np.testing.assert_array_equal(got["INP"], expected["INP"])
    assert got["mAP"] == expected["mAP"] and got["mINP"] == expected["mINP"]


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize(
    "settings",
    [
        {"chunk_size": 10},  # whole gallery rows, 4 blocks
        {"memory_mib": 1.0},  # whole rows, one block
        {"memory_mib": 0.01},  # gallery tiles (numpy: 37 x 23, jax: 37 x 11), two passes
        {"memory_mib": 0.0001},  # tiles of a few entries
    ],
)
def test_tiles_rank_exactly_like_the_whole_matrix(backend, settings):
    q, g, ids = _integer_problem()
    expected = evaluate_rank(pairwise_distance(q, g, "euclidean"), *ids)
    got = evaluate_features(q, g, *ids, metric="euclidean", backend=backend, **settings)
    _assert_same_metrics(got, expected)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_cosine_tiles_agree_with_the_whole_matrix(backend):
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(50, 16)), rng.normal(size=(400, 16))
    ids = (rng.integers(0, 20, 50), rng.integers(0, 20, 400), rng.integers(0, 4, 50),
           rng.integers(0, 4, 400))  # fmt: skip
    expected = evaluate_rank(pairwise_distance(q, g, "cosine"), *ids)
    for memory in (1.0, 0.02):  # whole rows; tiles
        got = evaluate_features(q, g, *ids, backend=backend, memory_mib=memory)
        # Continuous features: no ties, so only float32 rounding of other block shapes differs.
        np.testing.assert_allclose(got["AP"], expected["AP"], rtol=1e-12)
        np.testing.assert_array_equal(got["cmc"], expected["cmc"])


def test_block_shape_by_hand():
    # 12 B per distance, 1 MiB: 87381 distances; 300 entries per row -> 291 whole rows.
    assert tiling.block_shape(1000, 300, 1.0, 12) == (291, 300)
    assert tiling.block_shape(37, 300, 1.0, 12) == (37, 300)
    # 0.01 MiB: 873 distances, 2 whole rows < 37: tiles of 37 rows x 23 entries.
    assert tiling.block_shape(37, 300, 0.01, 12) == (37, 23)
    # MSMT17 at the default 256 MiB: 22.4M distances, 272 whole rows of 82,161.
    assert tiling.block_shape(11659, 82161, 256, 12) == (272, 82161)
    # A gallery of 10M: 2 rows would fit, so tiles of 64 rows x 349,525 entries.
    assert tiling.block_shape(11659, 10_000_000, 256, 12) == (64, 349525)
    with pytest.raises(ValueError, match="positive"):
        tiling.block_shape(10, 10, 0, 12)


def test_memory_stays_within_the_budget_whatever_the_gallery_size():
    """Traced numpy allocations (tracemalloc sees them) while evaluating 128 x 100,000 (4 MiB:
    tiles of 64 x 5461, two passes; 80 MiB: whole rows, 69 at a time): the distance matrix
    alone would be 51 MB, and grows with the gallery; the tiles do not."""
    rng = np.random.default_rng(2)
    num_q, num_g = 128, 100_000
    q = rng.integers(-3, 4, (num_q, 8)).astype(np.float32)  # exact distances: see above
    g = rng.integers(-3, 4, (num_g, 8)).astype(np.float32)
    ids = (rng.integers(0, 500, num_q), rng.integers(0, 500, num_g), rng.integers(0, 6, num_q),
           rng.integers(0, 6, num_g))  # fmt: skip
    peaks = {}
    results = {}
    for budget in (4, 80):
        tracemalloc.start()
        results[budget] = evaluate_features(
            q, g, *ids, metric="euclidean", backend="numpy", memory_mib=budget
        )
        peaks[budget] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    # Budget plus the per-gallery arrays (ids, their grouping, norms: ~5 MiB here).
    assert peaks[4] < 4 + 8, peaks
    assert peaks[80] < 80 + 8, peaks
    _assert_same_metrics(results[4], results[80])


def test_blocks_of_a_distance_function_follow_the_budget():
    rng = np.random.default_rng(3)
    dist = rng.random((40, 1000)).astype(np.float32)
    ids = (rng.integers(0, 9, 40), rng.integers(0, 9, 1000), rng.integers(0, 2, 40),
           rng.integers(0, 2, 1000))  # fmt: skip
    seen = []

    def block(rows):
        seen.append(rows.stop - rows.start)
        return dist[rows]

    # 0.1 MiB at 24 B per distance: 4369 distances, 4 rows of 1000.
    got = evaluate_distance_blocks(block, *ids, memory_mib=0.1)
    assert seen == [4] * 10
    _assert_same_metrics(got, evaluate_rank(dist, *ids))


def test_a_distance_block_on_a_device_is_ranked_like_on_the_host():
    """The device ranking of a given block (what an accelerator does with a model's JAX
    distances) against the host one, on the CPU backend; integer distances with ties."""
    rng = np.random.default_rng(4)
    dist = rng.integers(0, 6, (30, 200)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 8, 30), rng.integers(0, 8, 200)
    q_camids, g_camids = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    gallery = ranking.GalleryIndex.build(g_pids, g_camids)
    pairs = ranking.BlockPairs.build(q_pids, q_camids, gallery)
    vals, smaller, smaller_equal = device.rank_given_block(jnp.asarray(dist), pairs)
    pos = ~pairs.junk
    got = ranking.finish_block(pairs, vals, smaller[pos], smaller_equal[pos])
    expected = ranking.rank_block(dist, q_pids, q_camids, gallery)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_distances_are_refused_in_tiles():
    q, g, ids = _integer_problem()
    g[5, 0] = np.nan
    for backend in ("numpy", "jax"):
        with pytest.raises(ValueError, match="NaN"):
            evaluate_features(q, g, *ids, metric="euclidean", backend=backend, memory_mib=0.01)
