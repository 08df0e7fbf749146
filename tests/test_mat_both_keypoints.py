"""model.keypoint_features="both": the hourglass's keypoints compose the flow while MAT's
own keypoints on f_g stay beside them for L_eq and the separation prior."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import families
from occreid_jax.errors import UserError
from occreid_jax.losses.mat import equivariance_loss, keypoint_separation_loss
from occreid_jax.losses.objectives import MatLossConfig, mat_objective
from occreid_jax.nets.mat_warped_pass import equivariance_forward

TINY = dict(
    backbone="resnet_tiny", num_parts=3, d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1,
    segment_features="hourglass", hourglass_expansion=8, hourglass_blocks=2,
)  # fmt: skip
IMAGES = jnp.asarray(np.random.default_rng(4).normal(size=(4, 64, 32, 3)), jnp.float32)
LABELS = jnp.asarray([0, 0, 1, 1])


def _model(keypoint_features):
    return families.build_model("mat", num_classes=5, keypoint_features=keypoint_features, **TINY)


@functools.lru_cache
def _both():
    model = _model("both")
    (_, aux), variables = jax.jit(functools.partial(model.init_with_output, train=False))(
        jax.random.PRNGKey(0), IMAGES
    )
    return model, aux, variables


def test_both_gives_the_hourglass_keypoints_and_mats_own_as_each_model_alone_would():
    _, aux, variables = _both()
    assert aux["keypoints"].shape == aux["encoder_keypoints"].shape == (4, 3, 2)
    assert aux["keypoint_heatmaps"].shape == (4, 16, 8, 3)  # the hourglass's stride-4 map
    assert aux["encoder_keypoint_heatmaps"].shape == (4, 4, 2, 3)  # f_g, as MAT
    # MAT's keypoints with an hourglass segmentation: the same parameter tree, the same
    # outputs as "encoder_" ones.
    _, mats = _model("encoder").apply(variables, IMAGES, train=False)
    for name in ("keypoints", "jacobians", "keypoint_heatmaps"):
        np.testing.assert_allclose(aux["encoder_" + name], mats[name], rtol=1e-5, atol=1e-6)
    # The hourglass's keypoints: the hourglass-only model with MAT's keypoint parameters out.
    mat_only = ("queries", "decoder_0", "keypoint_head", "jacobian_head")
    params = {k: v for k, v in variables["params"].items() if k not in mat_only}
    assert len(params) == len(variables["params"]) - len(mat_only)
    segment = {**variables, "params": params}
    _, hourglass = _model("segment").apply(segment, IMAGES, train=False)
    for name in ("keypoints", "jacobians", "segmentation"):
        np.testing.assert_allclose(aux[name], hourglass[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(aux["keypoints"], aux["encoder_keypoints"], atol=1e-3)


def _loss(params, variables, model, cfg, drop_encoder=False):
    aux, _ = equivariance_forward(
        model.apply,
        {"params": params, "batch_stats": variables["batch_stats"]},
        {"images": IMAGES, "labels": LABELS},
        jax.random.PRNGKey(1),
    )
    if drop_encoder:
        aux = {k: v for k, v in aux.items() if not k.startswith("encoder_")}
    return mat_objective(aux, LABELS, cfg), aux


def test_mats_keypoints_add_exactly_their_l_eq_and_separation_and_nothing_else_reaches_them():
    model, _, variables = _both()
    cfg = MatLossConfig(consistency_pairs="first", group_size=2, keypoint_separation_weight=2.0)
    (total, metrics), aux = _loss(variables["params"], variables, model, cfg)
    names = ("encoder_keypoints", "encoder_jacobians")
    assert set(aux["warped"]) == {"keypoints", "jacobians", *names}
    (without, _), _ = _loss(variables["params"], variables, model, cfg, drop_encoder=True)
    value, jacobian = equivariance_loss(
        *[aux[n] for n in names], *[aux["warped"][n] for n in names], aux["tps"]
    )
    separation = keypoint_separation_loss(aux["encoder_keypoints"], cfg.keypoint_separation_sigma)
    expected = 10.0 * (value + jacobian) + 2.0 * separation
    assert float(total - without) == pytest.approx(float(expected), rel=1e-4)
    assert float(metrics["encoder_equivariance_value"]) == pytest.approx(float(value), rel=1e-6)
    assert float(metrics["encoder_keypoint_separation"]) == pytest.approx(float(separation))

    # Only those two terms train MAT's keypoint head: L_fc moves the hourglass's keypoints.
    def head_gradient(equivariance_weight, separation_weight):
        cfg_w = MatLossConfig(
            consistency_pairs="first", group_size=2, equivariance_weight=equivariance_weight,
            keypoint_separation_weight=separation_weight,
        )  # fmt: skip
        grads = jax.grad(lambda p: _loss(p, variables, model, cfg_w)[0][0])(variables["params"])
        return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["keypoint_head"]))

    assert head_gradient(0.0, 0.0) == 0.0
    assert head_gradient(10.0, 0.0) > 0.0


def test_both_without_the_hourglass_is_one_line():
    needs = r"keypoint_features='both' \(the synthetic variant's default\) needs"
    with pytest.raises(UserError, match=needs):
        families.build_model(
            "mat", num_classes=5, **{**TINY, "segment_features": "backbone"},
            keypoint_features="both",
        )  # fmt: skip
