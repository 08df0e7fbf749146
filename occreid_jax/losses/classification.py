"""Identity classification loss: cross-entropy with label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError

SMOOTHING_MODES = ("fastreid", "uniform")


def cross_entropy_label_smoothing(
    logits: jax.Array,
    labels: jax.Array,
    epsilon: float = 0.1,
    mode: str = "fastreid",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy against label-smoothed targets, computed in float32.

    Two smoothing conventions exist in Re-ID code:
      "fastreid" (default; fast-reid's `cross_entropy_loss`, used by the released Pirt code):
        target 1 - epsilon on the true class and epsilon / (C - 1) on each other class.
      "uniform" (Szegedy et al.; BoT's `CrossEntropyLabelSmooth`, `optax.smooth_labels`):
        target (1 - epsilon) * onehot + epsilon / C.
    fast-reid divides the summed loss by the number of non-zero per-sample losses; with
    epsilon > 0 every per-sample loss is positive, so that is the batch mean used here.

    Args:
      logits: [B, C] class scores, any float dtype.
      labels: [B] int class indices in [0, C).
      epsilon: smoothing mass; 0 gives plain cross-entropy.
      mode: "fastreid" or "uniform", see above.
      weights: optional [B] per-sample weights multiplied into the per-sample losses before
        the mean (as the `conf` argument of Pirt's fast-reid fork).

    Returns:
      Scalar float32 loss.
    """
    if mode not in SMOOTHING_MODES:
        raise UserError(f"Unknown label smoothing mode {mode!r}; use one of {SMOOTHING_MODES}.")
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if mode == "fastreid":
        off = epsilon / max(num_classes - 1, 1)
        targets = onehot * (1.0 - epsilon) + (1.0 - onehot) * off
    else:
        targets = onehot * (1.0 - epsilon) + epsilon / num_classes
    per_sample = -jnp.sum(targets * log_probs, axis=-1)
    if weights is not None:
        per_sample = per_sample * weights.astype(jnp.float32)
    return jnp.mean(per_sample)
