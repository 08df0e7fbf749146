"""Batch-hard triplet loss (Hermans et al. 2017, as implemented in fast-reid).

Mining happens within the arrays given: under pmap each device mines its own batch (the P x K
sampler gives every device whole identities). fast-reid instead all-gathers embeddings over
GPUs before mining; to reproduce that, pass `lax.all_gather(x, "batch", tiled=True)` inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError

METRICS = ("euclidean", "sqeuclidean", "cosine")


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, with a finite gradient at x = 0."""
    sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def pairwise_distance(x: jax.Array, y: jax.Array, metric: str = "euclidean") -> jax.Array:
    """Distance matrix between two sets of vectors, float32.

    Args:
      x: [N, D].
      y: [M, D].
      metric: "euclidean" (sqrt of the squared distance clamped at 1e-12, as fast-reid, which
        keeps the gradient finite where two vectors coincide), "sqeuclidean", or "cosine"
        (1 - cosine similarity).

    Returns:
      [N, M] distances.
    """
    if metric not in METRICS:
        raise UserError(f"Unknown triplet distance {metric!r}; use one of {METRICS}.")
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    if metric == "cosine":
        return 1.0 - _l2_normalize(x) @ _l2_normalize(y).T
    sq = jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    if metric == "sqeuclidean":
        return jnp.maximum(sq, 0.0)
    return jnp.sqrt(jnp.maximum(sq, 1e-12))


def hard_example_mining(dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Hardest positive and hardest negative distance per anchor.

    Args:
      dist: [B, B] distances.
      labels: [B] int identities.

    Returns:
      (d_ap, d_an), each [B]: max distance over samples with the anchor's label (the anchor
      itself included, as fast-reid), min distance over samples with another label
      (+inf when there is none, which makes that anchor's loss 0).
    """
    same = labels[:, None] == labels[None, :]
    d_ap = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    d_an = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    return d_ap, d_an


def triplet_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    margin: float = 0.3,
    soft_margin: bool = False,
    metric: str = "euclidean",
    normalize: bool = False,
) -> jax.Array:
    """Batch-hard triplet loss, mean over anchors. Pure jnp: jit-able and differentiable.

    Args:
      embeddings: [B, D] features (any float dtype; computed in float32).
      labels: [B] int identities.
      margin: hinge margin, `relu(d_ap - d_an + margin)`; ignored with `soft_margin`.
      soft_margin: use `softplus(d_ap - d_an)` = log(1 + exp(d_ap - d_an)) instead of the hinge
        (fast-reid's `F.soft_margin_loss`, selected there by margin 0; Pirt uses it).
      metric: "euclidean", "sqeuclidean" or "cosine", see `pairwise_distance`.
      normalize: L2-normalise the embeddings first.

    Returns:
      Scalar float32 loss.
    """
    x = embeddings.astype(jnp.float32)
    if normalize:
        x = _l2_normalize(x)
    dist = pairwise_distance(x, x, metric)
    d_ap, d_an = hard_example_mining(dist, labels)
    diff = d_ap - d_an
    per_anchor = jax.nn.softplus(diff) if soft_margin else jax.nn.relu(diff + margin)
    return jnp.mean(per_anchor)
