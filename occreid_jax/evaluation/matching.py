"""How one model family's embeddings become query-gallery distances (`MatchingRule`).

Every model has a *global feature*: one [N, D] matrix whose cosine (or Euclidean) distance
ranks the gallery. A model may also have its own rule: a factory
`(query features, gallery features, settings) -> distance_block`, where
`distance_block(rows: slice) -> [len(rows), G]` feeds `evaluation.evaluate_distance_blocks`.
`settings` are the `config.eval` fields the rule reads; they are stored with exports, so a
bundle is evaluated with its own rule. Each model family (`occreid_jax/families.py`) holds one
`MatchingRule`; nothing here knows a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# config.eval fields every bundle stores, whatever its rule.
GLOBAL_SETTINGS = ("metric", "flip")

DistanceBlock = Callable[[slice], np.ndarray]


def global_embedding(features: Mapping[str, np.ndarray]) -> np.ndarray:
    """The default global feature: `features["global"]` [N, D]."""
    return features["global"]


def replace_global(features: Mapping[str, np.ndarray], expanded: np.ndarray) -> dict:
    """The default inverse of `global_embedding`: the embeddings with `global` = `expanded`."""
    return {**features, "global": expanded}


@dataclasses.dataclass(frozen=True)
class MatchingRule:
    """One family's matching.

    Attributes:
      global_feature: embeddings dict -> [N, D], compared by `eval.metric`.
      own_rule: `(q_features, g_features, settings) -> distance_block`, or None.
      reads: the embeddings the own rule needs; without them (e.g. a model trained without its
        part branch) the global feature is used.
      settings: the `config.eval` fields the own rule reads.
      check_settings: `settings dict -> None`, a one-line ValueError for bad values.
      with_global: `(embeddings, [N, D] new global feature) -> embeddings` whose global feature
        is the new one, for the own rule to read (query expansion changes the global feature).
    """

    global_feature: Callable[[Mapping[str, np.ndarray]], np.ndarray] = global_embedding
    own_rule: Callable[[dict, dict, dict], DistanceBlock] | None = None
    reads: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    check_settings: Callable[[dict], Any] | None = None
    with_global: Callable[[Mapping[str, np.ndarray], np.ndarray], dict] = replace_global

    def own_distance(self, features: Mapping[str, Any], eval_config) -> Callable | None:
        """`(q_features, g_features) -> distance_block` by the own rule with the settings in
        `eval_config`, if there is a rule and these features carry what it reads; else None."""
        if self.own_rule is None or not all(key in features for key in self.reads):
            return None
        rule_settings = self.rule_settings(eval_config)
        return lambda q, g: self.own_rule(q, g, rule_settings)

    def rule_settings(self, eval_config) -> dict:
        """The own rule's fields present in `eval_config`."""
        return {key: eval_config[key] for key in self.settings if key in eval_config}

    def stored_settings(self, eval_config) -> dict:
        """The settings an export keeps: metric, flip and the own rule's fields."""
        keys = GLOBAL_SETTINGS + tuple(k for k in self.settings if k not in GLOBAL_SETTINGS)
        return {key: eval_config[key] for key in keys if key in eval_config}


GLOBAL_ONLY = MatchingRule()
