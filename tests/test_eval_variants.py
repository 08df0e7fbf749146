"""The results rows of query expansion and re-ranking, for every family's matching rule."""

import os

import numpy as np
import pytest

from occreid_jax import families
from occreid_jax.config_files import load_config_file
from occreid_jax.data.datasets import Split
from occreid_jax.evaluation import (
    RuleSetPairs,
    average_query_expansion,
    evaluate_features,
    evaluate_reranked,
)
from occreid_jax.evaluation.features import expand_queries, match_and_rank, variants
from occreid_jax.evaluation.pirt_matching import pirt_distance, pirt_global_feature


def _config(model="pirt"):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config_file(os.path.join(root, "configs", f"{model}.py")).get_config("synthetic")


def _split(pids, camids):
    n = len(pids)
    return Split(np.zeros(n, object), np.asarray(pids), np.asarray(camids), -np.ones(n, int),
                 np.array([""] * n))  # fmt: skip


@pytest.fixture
def problem(pirt_embeddings):
    rng = np.random.default_rng(0)
    query = _split(rng.integers(0, 4, 10), np.zeros(10, int))
    gallery = _split(rng.integers(0, 4, 30), np.ones(30, int))
    dims = {"stripe": 6, "patch": 5, "part_dim": 4}  # halves of unequal size
    return pirt_embeddings(rng, 10, **dims), pirt_embeddings(rng, 30, **dims), query, gallery


def test_rows_follow_the_flags():
    config = _config()
    assert variants(config.eval) == []
    config.eval.rerank = True
    assert [v[0] for v in variants(config.eval)] == [" +re-rank"]
    config.eval.aqe = True
    assert [v[0] for v in variants(config.eval)] == [" +AQE", " +re-rank", " +AQE +re-rank"]


def test_own_rule_reranked_and_expanded(problem):
    q, g, query, gallery = problem
    config = _config()
    config.eval.top_n = 8
    config.eval.rerank_k1, config.eval.rerank_k2 = 6, 3
    matching = families.get("pirt").matching
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    rule = lambda a, b: pirt_distance(a, b, {"top_n": 8})  # noqa: E731
    reranked = match_and_rank(matching, q, g, query, gallery, config, rerank=True)
    expected = evaluate_reranked(RuleSetPairs(rule, q, g), *ids, k1=6, k2=3)
    np.testing.assert_array_equal(reranked["AP"], expected["AP"])

    # Query expansion of Pirt's global feature goes back into the rule as stripe and patch.
    q_exp, g_exp, (q_global, g_global) = expand_queries(matching, q, g, config.eval)
    want_q, want_g = average_query_expansion(pirt_global_feature(q), pirt_global_feature(g))
    np.testing.assert_array_equal(q_global, want_q)
    np.testing.assert_array_equal(np.concatenate([q_exp["stripe"], q_exp["patch"]], 1), want_q)
    assert q_exp["parts"] is q["parts"] and g_exp["stripe"].shape == g["stripe"].shape
    expanded = (q_global, g_global)
    both = match_and_rank(matching, q_exp, g_exp, query, gallery, config, True, expanded)
    expected = evaluate_reranked(RuleSetPairs(rule, q_exp, g_exp), *ids, k1=6, k2=3)
    np.testing.assert_array_equal(both["AP"], expected["AP"])


def test_global_features_after_expansion_are_used_as_given(problem):
    """Without its part features Pirt ranks by the expanded global feature itself, not by one
    rebuilt from its halves."""
    q, g, query, gallery = problem
    q = {k: q[k] for k in ("stripe", "patch")}
    g = {k: g[k] for k in ("stripe", "patch")}
    config = _config()
    matching = families.get("pirt").matching
    q_exp, g_exp, expanded = expand_queries(matching, q, g, config.eval)
    got = match_and_rank(matching, q_exp, g_exp, query, gallery, config, False, expanded)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    np.testing.assert_array_equal(got["AP"], evaluate_features(*expanded, *ids)["AP"])


def test_a_rule_that_cannot_score_same_set_pairs_is_a_clear_error(problem):
    from occreid_jax.errors import UserError

    q, g, query, gallery = problem
    config = _config()
    config.eval.released_index_defect = True
    with pytest.raises(UserError, match="re-ranking by the model's own rule"):
        match_and_rank(families.get("pirt").matching, q, g, query, gallery, config, rerank=True)
