"""MAT's finer part maps (model.segment_stage), keypoints on them (model.keypoint_features),
the keypoint prior of the segmentation, and one train step with the image-reconstruction L_fc."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import families
from occreid_jax.errors import UserError
from occreid_jax.losses.mat import part_presence_loss
from occreid_jax.losses.objectives import MatLossConfig, mat_objective
from occreid_jax.motion import keypoint_prior_logits
from occreid_jax.nets.mat_warped_pass import equivariance_forward

IMAGE = (64, 32)  # resnet_tiny: stage 1 at 16 x 8, the feature map at 4 x 2
TINY = dict(
    backbone="resnet_tiny", num_parts=3, d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1
)
FINE = dict(segment_features="backbone", segment_stage=1, keypoint_features="segment")


def _images(batch=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, *IMAGE, 3)), jnp.float32)


@functools.lru_cache
def _run(**overrides):
    model = families.build_model("mat", num_classes=5, **{**TINY, **overrides})
    init = jax.jit(functools.partial(model.init_with_output, train=False))
    (embeddings, aux), variables = init(jax.random.PRNGKey(0), _images())
    return model, embeddings, aux, variables


def test_a_stage_one_segmentation_is_four_times_finer_and_pools_its_mass_exactly():
    _, embeddings, aux, _ = _run(**FINE)
    assert aux["segmentation"].shape == (4, 16, 8, 4)
    assert aux["keypoint_heatmaps"].shape == (4, 16, 8, 3)
    assert aux["feature_maps"].shape[1:3] == (4, 2)
    # Part visibility is the part's mean probability over the fine map (block means keep it).
    np.testing.assert_allclose(
        embeddings["visibility"], aux["segmentation"][..., 1:].mean(axis=(1, 2)), rtol=1e-5
    )


def test_segment_stage_and_keypoint_features_are_checked():
    with pytest.raises(UserError, match="segment_stage"):
        families.build_model("mat", num_classes=5, **TINY, segment_stage=5)
    with pytest.raises(UserError, match="keypoint_features"):
        families.build_model("mat", num_classes=5, **TINY, keypoint_features="pixels")


def test_keypoint_prior_hand_values():
    keypoints = jnp.asarray([[[0.0, 0.0], [0.5, -0.5]]])
    logits = keypoint_prior_logits(keypoints, (4, 4), sigma=0.5)
    # make_grid(4, 4) centres: -0.75, -0.25, 0.25, 0.75. Pixel (row 1, col 1) is (-0.25,
    # -0.25): distance^2 to (0, 0) is 0.125 -> -0.125 / (2 * 0.25) = -0.25.
    assert float(logits[0, 1, 1, 1]) == pytest.approx(-0.25)
    # ... and to (0.5, -0.5): 0.5625 + 0.0625 = 0.625 -> -1.25.
    assert float(logits[0, 1, 1, 2]) == pytest.approx(-1.25)
    assert np.all(np.asarray(logits[..., 0]) == -2.0)


def test_the_prior_adds_exactly_its_log_gaussians_to_the_segmentation_logits():
    model, _, plain, variables = _run(**FINE)
    with_prior = families.build_model(
        "mat", num_classes=5, **{**TINY, **FINE, "segmentation_prior_sigma": 0.2}
    )
    _, aux = jax.jit(functools.partial(with_prior.apply, train=False))(variables, _images())
    np.testing.assert_allclose(aux["keypoints"], plain["keypoints"], atol=1e-6)
    prior = keypoint_prior_logits(plain["keypoints"], plain["segmentation"].shape[1:3], 0.2)
    # Softmax: log-probability differences are logit differences.
    shift = np.log(aux["segmentation"]) - np.log(plain["segmentation"])
    expected = np.asarray(prior)
    np.testing.assert_allclose(shift - shift[..., :1], expected - expected[..., :1], atol=2e-4)


def test_a_train_step_with_the_image_target_has_finite_gradients_for_every_branch():
    model, _, _, variables = _run(**FINE)
    cfg = MatLossConfig(consistency_target="image", consistency_pairs="first", group_size=2)
    batch = {"images": _images(), "labels": jnp.asarray([0, 0, 1, 1])}

    def loss(params):
        aux, _ = equivariance_forward(
            model.apply,
            {"params": params, "batch_stats": variables["batch_stats"]},
            batch,
            jax.random.PRNGKey(1),
        )
        value, metrics = mat_objective(aux, batch["labels"], cfg)
        return value, metrics

    grads, metrics = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(float(metrics["consistency"])) and float(metrics["consistency"]) > 0
    for name in ("segment_head", "segment_proj", "keypoint_head", "jacobian_head"):
        leaves = jax.tree.leaves(grads[name])
        assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
        assert any(np.any(np.asarray(g) != 0) for g in leaves), name


def test_presence_is_zero_when_every_part_fills_a_window_and_counts_a_missing_part():
    seg = np.zeros((2, 6, 6, 3), np.float32)
    seg[..., 0] = 1.0
    seg[0, 1:4, 1:4] = [0.0, 1.0, 0.0]  # part 1 fills a 3 x 3 window in image 0
    assert float(part_presence_loss(jnp.asarray(seg))) == pytest.approx(0.5)
    seg[1, 2:5, 2:5] = [0.0, 0.0, 1.0]  # part 2 in image 1: both present somewhere
    assert float(part_presence_loss(jnp.asarray(seg))) == pytest.approx(0.0)
    # Half a window of part 2 (3 of 9 pixels at 1) averages to 1/3.
    seg[1, 2:5, 2:5] = [1.0, 0.0, 0.0]
    seg[1, 2:5, 2] = [0.0, 0.0, 1.0]
    assert float(part_presence_loss(jnp.asarray(seg))) == pytest.approx(1 - (1 + 1 / 3) / 2)


def test_segment_context_adds_the_resized_encoder_map_to_the_segmentation_input():
    model, _, plain, variables = _run(**FINE)
    with_context = families.build_model(
        "mat", num_classes=5, **{**TINY, **FINE, "segment_context": True}
    )
    images = _images()
    fresh = jax.jit(functools.partial(with_context.init, train=False))(
        jax.random.PRNGKey(0), images
    )
    context = fresh["params"]["segment_context"]
    params = {**variables["params"], "segment_context": jax.tree.map(jnp.zeros_like, context)}
    # With the context projection zeroed the segmentation is the plain one, exactly.
    _, aux = jax.jit(functools.partial(with_context.apply, train=False))(
        {**variables, "params": params}, images
    )
    np.testing.assert_allclose(aux["segmentation"], plain["segmentation"], atol=1e-6)
    # With it on, the segmentation changes.
    params = {**variables["params"], "segment_context": context}
    _, aux = jax.jit(functools.partial(with_context.apply, train=False))(
        {**variables, "params": params}, images
    )
    assert not np.allclose(aux["segmentation"], plain["segmentation"], atol=1e-4)
