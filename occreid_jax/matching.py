"""Which embedding each model's matching rule compares.

Models return a dict of embeddings; evaluation needs one [N, D] matrix per image set (or, for
models with their own matching rule, a distance function: Pirt and MAT add theirs here).
"""

from __future__ import annotations

import numpy as np

from occreid_jax.errors import UserError

# Plain-dict registry: model name -> the embedding compared by the global distance.
# TODO(mat): MAT's own rule (global + visibility-weighted part distances) is
# `evaluation.mat_matching.mat_matcher`; register it when this module becomes a registry of
# matchers. Until then MAT is evaluated on its global feature.
MATCHING_FEATURE = {"baseline": "global", "mat": "global"}


def distance_features(model_name: str, features: dict[str, np.ndarray]) -> np.ndarray:
    """The [N, D] features `model_name` compares with the cosine / Euclidean distance."""
    if model_name not in MATCHING_FEATURE:
        raise UserError(
            f"no matching rule for model {model_name!r}; known: {', '.join(MATCHING_FEATURE)}"
        )
    return features[MATCHING_FEATURE[model_name]]
