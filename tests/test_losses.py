"""Label-smoothed cross-entropy and batch-hard triplet: hand-computed cases and torch parity."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax.errors import UserError
from occreid_jax.losses import cross_entropy_label_smoothing, pairwise_distance, triplet_loss


def _torch_twin():
    """benchmarks/torch_baseline.py (imports torch: call after importorskip)."""
    from benchmarks import torch_baseline

    return torch_baseline


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_two_classes_by_hand():
    # softmax([ln 3, 0]) = [3/4, 1/4]; true class 0; C = 2 so eps / (C - 1) = eps.
    logits = jnp.array([[math.log(3.0), 0.0]])
    labels = jnp.array([0])
    fastreid = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    uniform = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)  # noqa: E731
    close(cross_entropy_label_smoothing(logits, labels, 0.1), fastreid)
    close(cross_entropy_label_smoothing(logits, labels, 0.1, mode="uniform"), uniform)
    close(cross_entropy_label_smoothing(logits, labels, 0.0), -math.log(0.75))


def test_cross_entropy_three_classes_batch_and_weights():
    # Row 0: uniform logits -> every log-prob is -ln 3, whatever the target.
    # Row 1: softmax([0, ln 2, ln 5]) = [1/8, 2/8, 5/8], true class 2.
    logits = jnp.array([[1.0, 1.0, 1.0], [0.0, math.log(2.0), math.log(5.0)]])
    labels = jnp.array([1, 2])
    row0 = math.log(3.0)
    row1 = -(0.8 * math.log(5 / 8) + 0.1 * math.log(1 / 8) + 0.1 * math.log(2 / 8))
    np.testing.assert_allclose(
        cross_entropy_label_smoothing(logits, labels, 0.2), (row0 + row1) / 2, rtol=1e-6
    )
    weights = jnp.array([0.5, 2.0])
    np.testing.assert_allclose(
        cross_entropy_label_smoothing(logits, labels, 0.2, weights=weights),
        (0.5 * row0 + 2.0 * row1) / 2,
        rtol=1e-6,
    )


def test_cross_entropy_is_float32_and_jittable():
    logits = jnp.array([[2.0, -1.0, 0.5]], jnp.bfloat16)
    loss = jax.jit(cross_entropy_label_smoothing)(logits, jnp.array([0]))
    assert loss.dtype == jnp.float32 and loss.shape == ()
    with pytest.raises(UserError, match="smoothing mode"):
        cross_entropy_label_smoothing(logits, jnp.array([0]), mode="szegedy")


def test_cross_entropy_matches_fastreid_torch():
    torch = pytest.importorskip("torch")
    twin = _torch_twin()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=16)
    expected = twin.cross_entropy_loss(torch.from_numpy(logits), torch.from_numpy(labels), 0.1)
    np.testing.assert_allclose(
        cross_entropy_label_smoothing(logits, labels, 0.1), expected.item(), rtol=1e-5
    )


# ----------------------------------------------------------------------------- triplet

# Four points on a line, identities [0, 0, 1, 1]: x = 0, 2 | 3, 6.
# d(0,1)=2 d(0,2)=3 d(0,3)=6 d(1,2)=1 d(1,3)=4 d(2,3)=3.
# Anchor:      0    1    2    3
# d_ap:        2    2    3    3
# d_an:        3    1    1    4
# d_ap - d_an: -1   1    2   -1
POINTS = jnp.array([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
IDS = jnp.array([0, 0, 1, 1])


def test_triplet_hinge_by_hand():
    # relu(diff + 0.3) = [0, 1.3, 2.3, 0].
    np.testing.assert_allclose(triplet_loss(POINTS, IDS, margin=0.3), 3.6 / 4, rtol=1e-6)
    # Squared distances: d_ap [4, 4, 9, 9], d_an [9, 1, 1, 16] -> relu = [0, 3.3, 8.3, 0].
    np.testing.assert_allclose(
        triplet_loss(POINTS, IDS, margin=0.3, metric="sqeuclidean"), 11.6 / 4, rtol=1e-6
    )


def test_triplet_soft_margin_by_hand():
    expected = (2 * softplus(-1.0) + softplus(1.0) + softplus(2.0)) / 4
    np.testing.assert_allclose(triplet_loss(POINTS, IDS, soft_margin=True), expected, rtol=1e-6)


def test_triplet_cosine_and_normalize_by_hand():
    # Unit directions at 0, 60, 90 and 180 degrees; identities [0, 0, 1, 1].
    x = jnp.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0], [-3.0, 0.0]])
    # 1 - cos: d(0,1)=.5 d(0,2)=1 d(0,3)=2 d(1,2)=1-cos30 d(1,3)=1.5 d(2,3)=1.
    c30 = 1 - math.sqrt(3) / 2
    d_ap = np.array([0.5, 0.5, 1.0, 1.0])
    d_an = np.array([1.0, c30, c30, 1.5])
    expected = np.maximum(d_ap - d_an + 0.3, 0).mean()
    np.testing.assert_allclose(triplet_loss(x, IDS, metric="cosine"), expected, rtol=1e-5)
    # normalize=True with Euclidean: the chord length 2 sin(angle / 2) between unit vectors.
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    d_ap = np.array([chord(60), chord(60), chord(90), chord(90)])
    d_an = np.array([chord(90), chord(30), chord(30), chord(120)])
    expected = np.maximum(d_ap - d_an + 0.3, 0).mean()
    np.testing.assert_allclose(triplet_loss(x, IDS, normalize=True), expected, rtol=1e-5)


def test_pairwise_distance_rejects_unknown_metric():
    with pytest.raises(UserError, match="euclidean"):
        pairwise_distance(POINTS, POINTS, metric="manhattan")


def test_triplet_single_identity_batch_is_zero():
    labels = jnp.zeros(4, jnp.int32)  # No negatives: d_an = +inf, every hinge is 0.
    assert float(triplet_loss(POINTS, labels)) == 0.0
    assert float(triplet_loss(POINTS, labels, soft_margin=True)) == 0.0
    grads = jax.grad(triplet_loss)(POINTS, labels)
    assert bool(jnp.all(grads == 0))


@pytest.mark.parametrize("soft_margin", [False, True])
def test_triplet_matches_fastreid_torch(soft_margin):
    torch = pytest.importorskip("torch")
    twin = _torch_twin()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4)[rng.permutation(16)]  # P x K = 4 x 4, shuffled.
    margin = 0.0 if soft_margin else 0.3
    x_torch = torch.from_numpy(x).requires_grad_(True)
    expected = twin.triplet_loss(x_torch, torch.from_numpy(labels), margin)
    expected.backward()

    loss_fn = jax.jit(lambda e, y: triplet_loss(e, y, margin=0.3, soft_margin=soft_margin))
    loss, grads = jax.value_and_grad(loss_fn)(jnp.asarray(x), jnp.asarray(labels))
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grads, x_torch.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_gradient_finite_when_embeddings_coincide(metric, soft_margin, normalize):
    # Rows 0 and 1 coincide (same identity: d_ap = 0), rows 2 and 3 coincide with row 0's
    # opposite identity partner (d_an = 0): every distance-zero case at once.
    x = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    labels = jnp.array([0, 0, 1, 1])
    loss_fn = jax.jit(
        lambda e: triplet_loss(
            e, labels, metric=metric, soft_margin=soft_margin, normalize=normalize
        )
    )
    loss, grads = jax.value_and_grad(loss_fn)(x)
    assert bool(jnp.isfinite(loss))
    assert bool(jnp.all(jnp.isfinite(grads)))
    grads = jax.grad(loss_fn)(jnp.zeros((4, 3)))  # All-zero embeddings: still finite.
    assert bool(jnp.all(jnp.isfinite(grads)))
