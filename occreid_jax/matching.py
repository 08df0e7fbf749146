"""How each model's embeddings become query-gallery distances.

Every model has a *global feature*: one [N, D] matrix whose cosine (or Euclidean) distance
ranks the gallery (`global_features`). A model may also have its own matching rule
(`MATCHERS`): a factory `(query features, gallery features, settings) -> distance_block`, where
`distance_block(rows: slice) -> [len(rows), G]` feeds `evaluation.evaluate_distance_blocks`.
`settings` are the `config.eval` fields a rule reads (stored with exports, so a bundle is
evaluated with its own rule).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from occreid_jax.errors import UserError
from occreid_jax.evaluation import pirt_matching
from occreid_jax.evaluation.mat_matching import mat_matcher


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _pirt_global(features: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 2D]: concat(l2n(stripe), l2n(patch)) / sqrt(2).

    Its cosine distance is (d_stripe + d_patch) / 2, so it ranks exactly as Pirt's global
    distance (the first stage of its matching rule).
    """
    both = np.concatenate([_l2n(features["stripe"]), _l2n(features["patch"])], axis=-1)
    return both / np.float32(np.sqrt(2.0))


# Plain-dict registry: model name -> its global feature.
GLOBAL_FEATURES: dict[str, Callable[[dict], np.ndarray]] = {
    "baseline": lambda features: features["global"],
    "pirt": _pirt_global,
    "mat": lambda features: features["global"],
}

# Model name -> (its own matching rule, the embeddings it reads, the settings it reads). The
# rule is used when those embeddings are present (a Pirt trained without its pose branch has
# no part features and matches by its global features).
MATCHERS: dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...]]] = {
    "pirt": (
        pirt_matching.pirt_distance,
        ("parts", "confidence"),
        tuple(pirt_matching.DEFAULT_SETTINGS),
    ),
    # MAT: global distance + visibility-weighted part distances (without its segmentation
    # branch a MAT has no parts and matches by its global feature).
    "mat": (mat_matcher, ("parts", "visibility"), ("metric", "part_weight")),
}

# config.eval fields stored with exports: the global settings and each rule's own.
SETTINGS = ("metric", "flip", "top_n", "confidence", "released_index_defect", "part_weight")


def global_features(model_name: str, features: dict[str, np.ndarray]) -> np.ndarray:
    """The [N, D] features `model_name` compares with the cosine / Euclidean distance."""
    if model_name not in GLOBAL_FEATURES:
        raise UserError(
            f"no matching rule for model {model_name!r}; known: {', '.join(GLOBAL_FEATURES)}"
        )
    return GLOBAL_FEATURES[model_name](features)


def own_rule(model_name: str, features: dict[str, np.ndarray], eval_config) -> Callable | None:
    """`(q_features, g_features) -> distance_block` by the model's own matching rule with the
    settings in `eval_config`, if the model has one and it applies to these features; else None.
    """
    if model_name not in MATCHERS:
        return None
    factory, needed, keys = MATCHERS[model_name]
    if not all(key in features for key in needed):
        return None
    rule_settings = {key: eval_config[key] for key in keys if key in eval_config}
    return lambda q, g: factory(q, g, rule_settings)


def settings(eval_config) -> dict:
    """The matching settings in `config.eval` (absent fields are left out)."""
    return {key: eval_config[key] for key in SETTINGS if key in eval_config}
