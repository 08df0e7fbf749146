"""Average query expansion: a hand-computed case, and parity with fast-reid's loop."""

import numpy as np
import pytest

from occreid_jax.evaluation import average_query_expansion


def test_hand_computed_expansion():
    """Query x0 = (1, 0); gallery x1 = (2, 0), x2 = (0, 3), x3 = (3, 4); k = 2, alpha = 3.

    Cosine similarities: s(x0, x1) = 1, s(x2, x3) = 0.8, s(x0, x3) = s(x1, x3) = 0.6, else 0.
    T(0) = T(1) = {0, 1} (tied at 1, self or not); T(2) = {2, 3}; T(3) = {3, 2}. So
    x0' = x1' = (1 (1, 0) + 1 (2, 0)) / 2 = (1.5, 0),
    x2' = ((0, 3) + 0.8^3 (3, 4)) / 2 = (0.768, 2.524),
    x3' = ((3, 4) + 0.8^3 (0, 3)) / 2 = (1.5, 2.768).
    With k = 1 the tie at similarity 1 goes to the lower index: x1' = x0 = (1, 0).
    """
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0]], np.float32)
    new_q, new_g = average_query_expansion(q, g, k=2, alpha=3.0)
    np.testing.assert_allclose(new_q, [[1.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(new_g, [[1.5, 0.0], [0.768, 2.524], [1.5, 2.768]], rtol=1e-6)
    _, new_g = average_query_expansion(q, g, k=1, alpha=3.0)
    np.testing.assert_allclose(new_g[0], [1.0, 0.0], rtol=1e-6)


def fastreid_aqe(q, g, k, alpha, rounds):
    """fast-reid's `aqe` in numpy (its loop over images), ties in the top-k by index."""
    feats = np.concatenate([q, g])
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for _ in range(rounds):
        expanded = []
        for sim in unit @ unit.T:
            top = np.argsort(-sim, kind="stable")[:k]
            weights = np.power(sim[top], alpha)[:, None]
            expanded.append(np.mean(feats[top] * weights, axis=0))
        feats = np.stack(expanded)
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return feats[: len(q)], feats[len(q) :]


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("block_rows", [1, 6, None])
def test_matches_fastreid_loop(backend, block_rows):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))
    q = (centres[rng.integers(0, 5, 13)] + 0.5 * rng.normal(size=(13, 12))).astype(np.float32)
    g = (centres[rng.integers(0, 5, 40)] + 0.5 * rng.normal(size=(40, 12))).astype(np.float32)
    for k, alpha, rounds in ((5, 3.0, 1), (3, 1.0, 2)):
        expected = fastreid_aqe(q, g, k, alpha, rounds)
        got = average_query_expansion(
            q, g, k, alpha, rounds, block_rows=block_rows, backend=backend
        )
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    q, g = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="k must be in"):
        average_query_expansion(q, g, k=7)
    with pytest.raises(ValueError, match="dim"):
        average_query_expansion(q, g[:, :2])
