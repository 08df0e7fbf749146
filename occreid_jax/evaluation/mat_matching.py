"""MAT's matching rule: global distance plus visibility-weighted part distances.

The paper does not say how part features are compared at test time; this is our choice
(docs/mat-choices.md), in the spirit of Pirt's confidence-weighted part distance:

    d(q, g) = d(global_q, global_g)
              + part_weight * sum_k w_k d(part_qk, part_gk) / sum_k w_k,   w_k = v_qk * v_gk

with v the part's visibility (its segmentation mass, `embeddings["visibility"]`) and d the
configured metric (`eval.metric`: cosine `1 - cos`, or squared Euclidean). A part hidden in
either image (v near 0) hardly counts; when every w_k is 0 the part term is 0.

`mat_matcher(q_features, g_features, settings)` returns a `distance_block(rows) -> [R, G]`
for `evaluation.protocol.evaluate_distance_blocks`: per block it holds five [R, G] float32
arrays at most, whatever K is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from occreid_jax.evaluation.distances import FeatureDistance

# Default weight of the part term (not in the paper).
PART_WEIGHT = 1.0


def _check(name: str, features: dict) -> None:
    for key, ndim in (("global", 2), ("parts", 3), ("visibility", 2)):
        if key not in features:
            raise ValueError(
                f"{name} features lack {key!r}; MAT embeddings have global, parts, visibility"
            )
        if np.ndim(features[key]) != ndim:
            raise ValueError(
                f"{name} {key!r} must have {ndim} dimensions, got {np.shape(features[key])}"
            )


def mat_matcher(
    q_features: dict[str, np.ndarray], g_features: dict[str, np.ndarray], settings: dict
) -> Callable[[slice], np.ndarray]:
    """Distance blocks of MAT's rule; see the module docstring.

    Args:
      q_features: {"global": [Q, D], "parts": [Q, K, D], "visibility": [Q, K]}.
      g_features: the same for the gallery, [G, ...].
      settings: config.eval fields: "metric" ("cosine" | "euclidean"), optional
        "part_weight" (default 1.0).

    Returns:
      `distance_block(rows: slice) -> [len(rows), G]` float32.
    """
    _check("query", q_features)
    _check("gallery", g_features)
    metric = settings.get("metric", "cosine")
    part_weight = np.float32(settings.get("part_weight", PART_WEIGHT))
    global_dist = FeatureDistance(q_features["global"], g_features["global"], metric)
    q_parts, g_parts = q_features["parts"], g_features["parts"]
    if q_parts.shape[1:] != g_parts.shape[1:]:
        raise ValueError(f"query parts {q_parts.shape[1:]} differ from gallery {g_parts.shape[1:]}")
    part_dists = [
        FeatureDistance(q_parts[:, k], g_parts[:, k], metric) for k in range(q_parts.shape[1])
    ]
    q_vis = np.asarray(q_features["visibility"], np.float32)
    g_vis = np.asarray(g_features["visibility"], np.float32)

    def distance_block(rows: slice) -> np.ndarray:
        dist = global_dist(rows)
        weighted = np.zeros_like(dist)
        total = np.zeros_like(dist)
        for k, part in enumerate(part_dists):
            w = q_vis[rows, k][:, None] * g_vis[None, :, k]  # [R, G]
            weighted += w * part(rows)
            total += w
        part_term = np.divide(weighted, total, out=np.zeros_like(dist), where=total > 0)
        dist += part_weight * part_term
        return dist

    return distance_block
