"""Query x gallery distances from features, computed block by block with a float32 BLAS product.

Two metrics (the Re-ID conventions, see docs/protocols.md, "Distances"):

* "cosine": `1 - cos(q, g)`, i.e. `1 - <q/|q|, g/|g|>`, in [0, 2];
* "euclidean": squared Euclidean `|q|^2 + |g|^2 - 2 <q, g>`, clipped at 0 (the expansion can
  round slightly below 0 for near-identical features).

`FeatureDistance` is a callable `rows -> [rows, G]` block: the form every driver in
`occreid_jax.evaluation.protocol` takes, so a model with its own matching rule provides the same
kind of callable. It never holds more than one block of distances, and for float32 C-contiguous
gallery features it makes no copy of them (cosine scales the product by 1/|g| instead of
normalising the gallery).
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("cosine", "euclidean")


def l2_normalize(x: Any, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """`x / max(|x|, eps)` along `axis` (as torch's F.normalize); keeps a float dtype, else float32.

    Args:
        x: [..., D] features.
        axis: the feature axis.
        eps: lower bound of the norm, so all-zero rows stay zero.

    Returns:
        The normalised array, same shape.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True, dtype=np.float64))
    return (x / np.maximum(norm, eps)).astype(x.dtype, copy=False)


def _as_features(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [num_images, feature_dim], got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


class FeatureDistance:
    """Distance blocks between query and gallery features: `dist(rows) -> [len(rows), G]`.

    Args:
        q_feats: [Q, D] query features (converted to float32).
        g_feats: [G, D] gallery features (converted to float32; no copy if already float32).
        metric: "cosine" or "euclidean" (squared).

    Example:
        >>> dist = FeatureDistance(q, g, "cosine")
        >>> block = dist(slice(0, 256))  # [256, G] float32
    """

    def __init__(self, q_feats: Any, g_feats: Any, metric: str = "cosine"):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        self.q = _as_features("q_feats", q_feats)
        self.g = _as_features("g_feats", g_feats)
        if self.q.shape[1] != self.g.shape[1]:
            raise ValueError(
                f"query features have dim {self.q.shape[1]}, gallery features {self.g.shape[1]}"
            )
        self.metric = metric
        g_sq = np.einsum("gd,gd->g", self.g, self.g, dtype=np.float64)
        if metric == "cosine":
            self._g_scale = (1.0 / np.maximum(np.sqrt(g_sq), 1e-12)).astype(np.float32)
        else:
            self._g_sq = g_sq.astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        """(Q, G)."""
        return self.q.shape[0], self.g.shape[0]

    def __call__(self, rows: slice | np.ndarray, cols: slice | None = None) -> np.ndarray:
        """Distances of the queries `rows` (a slice or an index array) to the gallery.

        Args:
            rows: query rows.
            cols: a range of gallery entries (default: the whole gallery).

        Returns:
            [R, G] float32, or [R, len(cols)] with `cols`. The same (rows, cols) give the same
            values bit for bit.
        """
        q = self.q[rows]
        g = self.g if cols is None else self.g[cols]
        if self.metric == "cosine":
            d = l2_normalize(q) @ g.T  # [R, G] cosine up to the gallery norm
            d *= self._g_scale if cols is None else self._g_scale[cols]
            np.subtract(np.float32(1.0), d, out=d)
        else:
            d = (q * np.float32(-2.0)) @ g.T  # exact scaling by -2
            d += self._g_sq if cols is None else self._g_sq[cols]
            d += np.einsum("rd,rd->r", q, q, dtype=np.float64).astype(np.float32)[:, None]
            np.maximum(d, np.float32(0.0), out=d)
        return d

    def gallery_terms(self) -> np.ndarray:
        """[G] float32: 1/|g| (cosine) or |g|^2 (euclidean), the per-gallery factor or term."""
        return self._g_scale if self.metric == "cosine" else self._g_sq


def pairwise_distance(
    q_feats: Any,
    g_feats: Any,
    metric: str = "cosine",
    chunk_size: int = 1024,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The whole [Q, G] distance matrix, filled block by block (float32).

    Args:
        q_feats: [Q, D] query features.
        g_feats: [G, D] gallery features.
        metric: "cosine" or "euclidean" (squared).
        chunk_size: query rows per product.
        out: optional [Q, G] float32 array (or view) to write into.

    Returns:
        [Q, G] float32 distances (`out` when given).
    """
    dist = FeatureDistance(q_feats, g_feats, metric)
    num_q, num_g = dist.shape
    if out is None:
        out = np.empty((num_q, num_g), dtype=np.float32)
    elif out.shape != (num_q, num_g):
        raise ValueError(f"out has shape {out.shape}, expected {(num_q, num_g)}")
    for s in range(0, num_q, chunk_size):
        out[s : s + chunk_size] = dist(slice(s, s + chunk_size))
    return out


def cosine_distance(q_feats: Any, g_feats: Any) -> np.ndarray:
    """[Q, G] float32 `1 - cos` between [Q, D] and [G, D] features."""
    return pairwise_distance(q_feats, g_feats, "cosine")


def squared_euclidean_distance(q_feats: Any, g_feats: Any) -> np.ndarray:
    """[Q, G] float32 squared Euclidean distances between [Q, D] and [G, D] features."""
    return pairwise_distance(q_feats, g_feats, "euclidean")
