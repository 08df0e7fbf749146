"""A model family is one record: a toy family defined here trains, evaluates and exports
through the real modes without any other module knowing it."""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import experiment, families
from occreid_jax.bundles import export
from occreid_jax.errors import UserError
from occreid_jax.evaluation.matching import MatchingRule
from occreid_jax.losses.classification import cross_entropy_label_smoothing
from occreid_jax.losses.objectives import LossConfig, require
from occreid_jax.nets.forward import single_forward


class ToyNet(nn.Module):
    """A strided conv, BatchNorm, mean pool: embeddings {"global": [B, width]}."""

    num_classes: int
    width: int = 8
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, heatmaps=None):
        del heatmaps
        h = nn.Conv(self.width, (4, 4), strides=(4, 4), name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name, name="bn")(h)
        feat = jnp.mean(nn.relu(h), axis=(1, 2))
        aux = {}
        if self.num_classes:
            aux["toy_logits"] = nn.Dense(self.num_classes, name="classifier")(feat)
        return {"global": feat, "doubled": 2 * feat}, aux


def toy_objective(aux, labels, cfg: LossConfig):
    require(aux, ("toy_logits",), "toy")
    ce = cross_entropy_label_smoothing(aux["toy_logits"], labels, cfg.label_smoothing)
    return ce, {"loss": ce, "toy_ce": ce}


@pytest.fixture
def toy_family(monkeypatch):
    calls = {"forward": 0, "rule": 0}

    def counting_forward(settings):
        def forward(*args):
            calls["forward"] += 1  # at trace time: proves the family's forward is the one used
            return single_forward(*args)

        return forward

    def own_rule(q, g, settings):  # Euclidean distance of the "doubled" embedding
        calls["rule"] += 1
        diff = q["doubled"][:, None] - g["doubled"][None]
        distances = np.sqrt((diff**2).sum(-1)).astype(np.float32)
        return lambda rows: distances[rows]

    family = families.Family(
        module=ToyNet,
        objective=toy_objective,
        training_forward=counting_forward,
        matching=MatchingRule(own_rule=own_rule, reads=("doubled",), settings=("metric",)),
    )
    monkeypatch.setitem(families.FAMILIES, "toy", family)
    return calls


def test_a_toy_family_trains_evaluates_and_exports(toy_family, tiny_config, tmp_path):
    config = tiny_config("baseline")
    config.model.name = "toy"
    config.model.width = 6  # a field only the toy module declares
    workdir = str(tmp_path / "run")

    record = experiment.train_and_evaluate(config, workdir)
    assert record["step"] == 4 and toy_family["forward"] > 0 and toy_family["rule"] > 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert all("toy_ce" in r for r in logged if r["kind"] == "train")

    evaluated = experiment.evaluate(config, workdir)
    assert evaluated == record["results"]

    bundle_path = experiment.export_bundle(config, workdir)
    bundle = export.load(bundle_path)
    assert bundle.model_name == "toy" and bundle.model_kwargs["width"] == 6
    images = np.zeros((2, *config.data.image_size, 3), np.float32)
    assert bundle.embed(images)["global"].shape == (2, 6)
    from_bundle = experiment.evaluate(config, workdir, export_path=bundle_path)
    for row, metrics in record["results"].items():
        np.testing.assert_allclose(from_bundle[row]["mAP"], metrics["mAP"], rtol=1e-5)


def test_unknown_family_is_a_one_line_error(tiny_config):
    config = tiny_config("baseline")
    config.model.name = "toy"  # not registered in this test
    with pytest.raises(UserError, match="unknown model.name 'toy'; known models: baseline"):
        experiment.train_and_evaluate(config, "/nonexistent")


def test_matching_rule_stores_the_global_and_its_own_settings():
    rule = families.FAMILIES["pirt"].matching
    eval_config = {"metric": "cosine", "flip": True, "top_n": 7, "part_weight": 2.0}
    assert rule.stored_settings(eval_config) == {"metric": "cosine", "flip": True, "top_n": 7}
    assert families.FAMILIES["mat"].matching.stored_settings(eval_config) == {
        "metric": "cosine",
        "flip": True,
        "part_weight": 2.0,
    }
    assert rule.own_distance({"stripe": 0}, eval_config) is None  # no part embeddings
