"""The neighbour selection of blocked re-ranking: the k nearest by d = M / row max, exactly.

The reference is independent of the module: numpy's stable argsort of the divided rows.
"""

import numpy as np
import pytest

from occreid_jax.evaluation import scaled_nearest
from occreid_jax.evaluation.ranking import NaNDistancesError
from occreid_jax.evaluation.rerank_blocks import neighbour_pass
from occreid_jax.evaluation.set_pairs import FeatureSetPairs, probe_slices


def _reference(parts, k):
    m = np.concatenate(parts, axis=1)
    row_max = m.max(axis=1)
    d = m / row_max[:, None]
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1), row_max


@pytest.mark.parametrize("decimals", [None, 1, 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_a_stable_argsort_of_the_divided_rows(decimals, dtype):
    """Continuous values and heavy ties (rounded), two parts, short and long rows."""
    rng = np.random.default_rng(0 if decimals is None else decimals)
    for _ in range(40):
        rows, k = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        widths = [int(rng.integers(1, 300)), int(rng.integers(k, 2500))]
        parts = [(rng.random((rows, w)) * rng.choice([0.01, 1.0, 40.0])).astype(dtype) + 0.5
                 for w in widths]  # fmt: skip
        if decimals is not None:
            parts = [np.round(p, decimals) for p in parts]
        got = scaled_nearest.nearest_scaled(parts, k)
        for a, b in zip(got, _reference(parts, k), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def _collapsing_max(v: np.float32) -> np.float32:
    """A row maximum r > v for which fl(v / r) == fl(next(v) / r)."""
    above = np.nextafter(v, np.float32(np.inf))
    for r in np.linspace(2.1, 3.5, 4001, dtype=np.float32):
        if np.float32(v / r) == np.float32(above / r):
            return r
    raise AssertionError("no collapsing maximum found")


def test_a_tie_created_by_the_division_outside_the_candidates_is_found(monkeypatch):
    """k = 1, 64 columns. Column 8 (sampled) holds v, the sample's smallest, so the
    candidates are the entries <= v: column 8 alone. Column 3 (not sampled) holds the next
    float above v, which divides to the same d: the tie goes to column 3, outside the
    candidates. The row is redone by the full division and the answer is column 3."""
    v = np.float32(1.9)  # ulp 2^-23, above quotients near 0.7 (ulp 2^-24): they can merge
    r = _collapsing_max(v)
    row = np.full(64, (r + v) / 2, np.float32)
    row[8], row[3], row[40] = v, np.nextafter(v, np.float32(np.inf)), r
    redone = []
    full = scaled_nearest._by_division
    monkeypatch.setattr(
        scaled_nearest, "_by_division", lambda p, m, k: redone.append(1) or full(p, m, k)
    )
    idx, d, row_max = scaled_nearest.nearest_scaled([row[None, :10], row[None, 10:]], 1)
    assert redone, "the tie outside the candidates was not detected"
    assert idx[0, 0] == 3 and row_max[0] == r
    assert d[0, 0] == np.float32(v / r) == np.float32(row[3] / r)


def test_a_nan_distance_is_an_error():
    parts = [np.ones((3, 200), np.float32), np.ones((3, 100), np.float32)]
    parts[1][2, 7] = np.nan
    with pytest.raises(NaNDistancesError):
        scaled_nearest.nearest_scaled(parts, 5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_the_pass_with_blocks_in_flight_equals_one_block_at_a_time(metric):
    """Two threads, BLAS held to its share: the lists of the whole (Q+G) matrix at once."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(30, 24)).astype(np.float32)
    g = rng.normal(size=(410, 24)).astype(np.float32)
    pairs = FeatureSetPairs(q, g, metric)
    got = neighbour_pass(pairs, block_rows=17, k=21)
    blocks = [np.concatenate(pairs.block(s), axis=1) for s in probe_slices(30, 410, 440)]
    expected = _reference([np.concatenate(blocks)], 21)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
