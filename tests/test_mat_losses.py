"""MAT's losses: equivariance, feature consistency, the Eq. 9 total and its settings."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from occreid_jax import families, motion
from occreid_jax.losses import mat as mat_losses
from occreid_jax.losses.classification import cross_entropy_label_smoothing
from occreid_jax.losses.objectives import (
    MatLossConfig,
    grouped_triplet,
    mat_objective,
)
from occreid_jax.nets.mat_warped_pass import equivariance_forward

# ----------------------------------------------------------------------------- equivariance


def _blobs(rng, batch=2, parts=3, size=(32, 16)):
    """Images with one Gaussian blob per channel, and the blob centres [B, K, 2]."""
    centres = rng.uniform(-0.5, 0.5, (batch, parts, 2)).astype(np.float32)
    grid = np.asarray(motion.make_grid(*size))
    d2 = ((grid[None, :, :, None, :] - centres[:, None, None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * 0.15**2)).astype(np.float32), centres


def _toy_detector(images):
    """Keypoints = intensity-weighted mean position of each channel; Jacobians = identity.

    Equivariant to translations up to sampling; its Jacobians ignore any warp.
    """
    heat = images / images.sum(axis=(1, 2), keepdims=True)
    kp = motion.expected_position(heat)
    jac = jnp.broadcast_to(jnp.eye(2), (*kp.shape[:2], 2, 2))
    return kp, jac


def test_equivariance_loss_is_zero_for_the_identity_transform_with_the_toy_detector():
    images, _ = _blobs(np.random.default_rng(0))
    tps = motion.identity_tps(2)
    kp, jac = _toy_detector(jnp.asarray(images))
    kp_w, jac_w = _toy_detector(motion.warp_images(jnp.asarray(images), tps))
    value, jacobian = mat_losses.equivariance_loss(kp, jac, kp_w, jac_w, tps)
    assert float(value) < 1e-6 and float(jacobian) < 1e-6


def test_equivariance_loss_is_positive_for_other_transforms():
    images, _ = _blobs(np.random.default_rng(0))
    tps = motion.random_tps(jax.random.PRNGKey(0), 2, 0.05, 0.005, 5)
    kp, jac = _toy_detector(jnp.asarray(images))
    kp_w, jac_w = _toy_detector(motion.warp_images(jnp.asarray(images), tps))
    value, jacobian = mat_losses.equivariance_loss(kp, jac, kp_w, jac_w, tps)
    # The blob detector is nearly equivariant in position, but its fixed Jacobians are not.
    assert float(value) < 0.02
    assert float(jacobian) > 1e-3


def test_equivariance_loss_vanishes_exactly_for_consistent_keypoints_and_jacobians():
    """Keypoints p = T(p') and Jacobians J = dT(p') J' satisfy both terms under any warp."""
    rng = np.random.default_rng(1)
    tps = motion.random_tps(jax.random.PRNGKey(1), 2, 0.2, 0.1, 5)  # strongly non-affine
    kp_w = jnp.asarray(rng.uniform(-0.8, 0.8, (2, 4, 2)), jnp.float32)
    jac_w = jnp.asarray(np.eye(2) + 0.3 * rng.normal(size=(2, 4, 2, 2)), jnp.float32)
    kp = motion.tps_warp(tps, kp_w)
    jac = jnp.einsum("bkij,bkjl->bkil", motion.tps_jacobian(tps, kp_w), jac_w)
    value, jacobian = mat_losses.equivariance_loss(kp, jac, kp_w, jac_w, tps)
    assert float(value) < 1e-6 and float(jacobian) < 1e-4
    value, jacobian = mat_losses.equivariance_loss(kp + 0.1, jac, kp_w, jac_w, tps)
    np.testing.assert_allclose(value, 0.1, rtol=1e-4)
    _, jacobian = mat_losses.equivariance_loss(kp, jac_w, kp_w, jac_w, tps)
    assert float(jacobian) > 0.01


def test_equivariance_value_term_by_hand_for_a_translation():
    tps = motion.identity_tps(1)
    tps["theta"] = tps["theta"].at[0, :, 2].set(jnp.asarray([0.1, -0.2]))  # T(p) = p + b
    kp = jnp.asarray([[[0.3, 0.3]]])
    kp_w = jnp.asarray([[[0.0, 0.0]]])
    jac = jnp.eye(2)[None, None]
    value, jacobian = mat_losses.equivariance_loss(kp, jac, kp_w, jac, tps)
    np.testing.assert_allclose(value, (abs(0.3 - 0.1) + abs(0.3 + 0.2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(jacobian, 0.0, atol=1e-7)


def test_equivariance_pass_of_a_real_model_is_zero_for_the_identity_warp():
    """The two-pass forward on a tiny MAT: identical passes under sigma 0, not otherwise."""

    model = families.build_model(
        "mat", num_classes=4, backbone="resnet_tiny", num_parts=3, d_model=16, num_heads=2,
        ffn_dim=32, encoder_layers=1, dropout=0.0,
    )  # fmt: skip
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 32, 3)), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), images)
    batch = {"images": images}
    forward = jax.jit(
        lambda rng, affine, tps: equivariance_forward(
            model.apply, variables, batch, rng, sigma_affine=affine, sigma_tps=tps
        )
    )  # one compilation: the sigmas are traced
    aux, _ = forward(jax.random.PRNGKey(1), 0.0, 0.0)
    value, jacobian = mat_losses.equivariance_loss(
        aux["keypoints"], aux["jacobians"], aux["warped"]["keypoints"],
        aux["warped"]["jacobians"], aux["tps"],
    )  # fmt: skip
    assert float(value) < 1e-5 and float(jacobian) < 1e-5
    aux, _ = forward(jax.random.PRNGKey(1), 0.1, 0.01)
    value, _ = mat_losses.equivariance_loss(
        aux["keypoints"], aux["jacobians"], aux["warped"]["keypoints"],
        aux["warped"]["jacobians"], aux["tps"],
    )  # fmt: skip
    assert float(value) > 1e-3


# ----------------------------------------------------------------------------- consistency


def _group(seg, kp, jac, size=4):
    """Repeat one image's maps into a group of `size` identical images."""
    return tuple(jnp.repeat(x[None], size, axis=0) for x in (seg, kp, jac))


def test_segmentation_consistency_is_zero_when_b_equals_a_with_identity_motion():
    rng = np.random.default_rng(0)
    seg = jax.nn.softmax(jnp.asarray(rng.normal(size=(8, 4, 5)) * 3, jnp.float32), axis=-1)
    kp = jnp.asarray(rng.uniform(-0.7, 0.7, (4, 2)), jnp.float32)
    jac = jnp.asarray(np.eye(2) + 0.2 * rng.normal(size=(4, 2, 2)), jnp.float32)
    segs, kps, jacs = _group(seg, kp, jac)
    loss = mat_losses.consistency_loss(segs, segs, kps, jacs, group_size=4)
    assert abs(float(loss)) < 1e-4
    # B with another segmentation: positive.
    segs = segs.at[1].set(jnp.roll(seg, 2, axis=0))
    assert float(mat_losses.consistency_loss(segs, segs, kps, jacs, group_size=4)) > 0.1


def test_segmentation_consistency_flow_undoes_a_known_part_motion():
    """B is A moved down one cell, its keypoints too: the flow brings B back onto A."""
    height, width = 8, 4
    seg_a = np.zeros((height, width, 3), np.float32)
    seg_a[:4, :, 1] = 1.0  # part 1 on top
    seg_a[4:, :, 2] = 1.0  # part 2 below
    seg_b = np.concatenate([seg_a[:1], seg_a[:-1]], axis=0)  # everything one row down
    kp_a = np.asarray([[0.0, -0.5], [0.0, 0.5]], np.float32)
    shift = np.asarray([0.0, 2.0 / height], np.float32)
    jac = np.broadcast_to(np.eye(2, dtype=np.float32), (2, 2, 2))
    segs = jnp.asarray(np.stack([seg_a, seg_b]))
    jacs = jnp.asarray(np.stack([jac, jac]))
    moved = jnp.asarray(np.stack([kp_a, kp_a + shift]))
    loss = mat_losses.consistency_loss(segs, segs, moved, jacs, group_size=2)
    assert abs(float(loss)) < 1e-4
    still = jnp.asarray(np.stack([kp_a, kp_a]))
    # A's two parts disagree with B's at 1 row of 8: KL ~ -log(1e-6) on 1/8 of the pixels.
    assert float(mat_losses.consistency_loss(segs, segs, still, jacs, group_size=2)) > 1.0


def test_kl_divergence_by_hand():
    p = jnp.asarray([[[[0.5, 0.5]]]])
    q = jnp.asarray([[[[0.25, 0.75]]]])
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(mat_losses.kl_divergence(p, q), [expected], rtol=1e-5)


def test_kl_divergence_is_a_mean_over_positions():
    """Eq. 10 compares distributions: the maps are normalised by their h*w positions, so the
    KL does not grow with the resolution (summed per-pixel KLs made L_fc swamp the ID loss)."""
    rng = np.random.default_rng(0)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 4, 2, 5)) * 2, jnp.float32), axis=-1)
    q = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 4, 2, 5)) * 2, jnp.float32), axis=-1)
    per_pixel = np.sum(np.asarray(p) * np.log(np.asarray(p) / np.asarray(q)), axis=-1)
    np.testing.assert_allclose(mat_losses.kl_divergence(p, q), per_pixel.mean((1, 2)), rtol=1e-5)
    finer_p, finer_q = (jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2) for x in (p, q))
    np.testing.assert_allclose(
        mat_losses.kl_divergence(finer_p, finer_q), mat_losses.kl_divergence(p, q), rtol=1e-5
    )


def test_part_diversity_of_uniform_maps_is_log_k_plus_1():
    seg = jnp.full((2, 4, 2, 6), 1 / 6, jnp.float32)
    np.testing.assert_allclose(mat_losses.part_diversity_loss(seg), np.log(6), rtol=1e-5)


def test_part_diversity_is_zero_for_hard_maps_using_every_part_equally():
    """One-hot pixels, each of the K=3 parts on 2 of the batch's pixels, background on 4: the
    background's share is free, so the loss is 0 however much background there is."""
    labels = np.array([[0, 1, 2, 3, 0], [1, 2, 3, 0, 0]])  # [B=2, 5 pixels]
    seg = jax.nn.one_hot(jnp.asarray(labels).reshape(2, 5, 1), 4)
    np.testing.assert_allclose(mat_losses.part_diversity_loss(seg), 0.0, atol=1e-5)


def test_part_diversity_by_hand_for_one_unused_part():
    """Hard maps on parts 1 and 2 only (K=3): H_pixel=0, usage (1/2, 1/2, 0), so
    log 3 - log 2; soft pixels add their mean entropy."""
    hard = jax.nn.one_hot(jnp.asarray([[1, 2, 1, 2]]).reshape(1, 2, 2), 4)
    np.testing.assert_allclose(
        mat_losses.part_diversity_loss(hard), np.log(3) - np.log(2), rtol=1e-5
    )
    soft = jnp.asarray([[[[0.0, 0.5, 0.5, 0.0]]]])
    expected = np.log(3) + np.log(2) - np.log(2)  # pixel entropy log 2, usage (1/2, 1/2, 0)
    np.testing.assert_allclose(mat_losses.part_diversity_loss(soft), expected, rtol=1e-5)


def test_part_diversity_enters_the_total_with_its_weight():
    rng = np.random.default_rng(0)
    aux = _aux(rng)
    labels = jnp.asarray(np.repeat([0, 1], 4), jnp.int32)
    off, _ = mat_objective(aux, labels, MatLossConfig())
    on, metrics = mat_objective(aux, labels, MatLossConfig(part_diversity_weight=2.0))
    diversity = mat_losses.part_diversity_loss(aux["segmentation"])
    assert float(diversity) > 0.1
    np.testing.assert_allclose(on - off, 2.0 * diversity, rtol=1e-5)
    np.testing.assert_allclose(metrics["part_diversity"], diversity, rtol=1e-6)


# ----------------------------------------------------------------------------- total


def _aux(rng, batch=8, parts=3, classes=4, dim=6):
    def arr(*shape, scale=1.0):
        return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)

    seg = jax.nn.softmax(arr(batch, 4, 2, parts + 1), axis=-1)
    return {
        "logits": arr(batch, classes),
        "global_feat": arr(batch, dim),
        "part_logits": arr(batch, parts, classes),
        "part_feat": arr(batch, parts, dim),
        "segmentation": seg,
        "feature_maps": arr(batch, 4, 2, dim),
        "backbone_maps": [arr(batch, 16, 8, 3), arr(batch, 8, 4, 5)],
        "keypoints": arr(batch, parts, 2, scale=0.3),
        "jacobians": jnp.eye(2) + arr(batch, parts, 2, 2, scale=0.1),
        "warped": {
            "keypoints": arr(batch, parts, 2, scale=0.3),
            "jacobians": jnp.eye(2) + arr(batch, parts, 2, 2, scale=0.1),
        },
        "tps": motion.random_tps(jax.random.PRNGKey(0), batch, 0.05, 0.005, 5),
    }


def test_total_is_the_weighted_sum_of_eq_9():
    rng = np.random.default_rng(0)
    aux = _aux(rng)
    labels = jnp.asarray(np.repeat([0, 1], 4), jnp.int32)
    cfg = MatLossConfig(triplet_metric="sqeuclidean", label_smoothing=0.0)
    loss, metrics = jax.jit(functools.partial(mat_objective, cfg=cfg))(aux, labels)

    ce = cross_entropy_label_smoothing(aux["logits"], labels, 0.0)
    tri = grouped_triplet(aux["global_feat"], labels, cfg)
    part_ce = np.mean([cross_entropy_label_smoothing(aux["part_logits"][:, k], labels, 0.0)
                       for k in range(3)])  # fmt: skip
    part_tri = np.mean([grouped_triplet(aux["part_feat"][:, k], labels, cfg) for k in range(3)])
    eq = sum(mat_losses.equivariance_loss(
        aux["keypoints"], aux["jacobians"], aux["warped"]["keypoints"],
        aux["warped"]["jacobians"], aux["tps"],
    ))  # fmt: skip
    fc = mat_losses.consistency_loss(
        jax.nn.softmax(aux["feature_maps"], axis=-1),
        aux["segmentation"], aux["keypoints"], aux["jacobians"], 4,
    )  # fmt: skip
    expected = ce + tri + part_ce + part_tri + 10 * eq + 5 * fc
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    for name in ("ce", "triplet", "part_ce", "part_triplet", "consistency", "accuracy"):
        assert name in metrics


def test_switched_off_branches_drop_their_terms():
    rng = np.random.default_rng(0)
    aux = _aux(rng)
    labels = jnp.asarray(np.repeat([0, 1], 4), jnp.int32)
    cfg = MatLossConfig(segmentation=False, keypoints="none")
    global_only = {k: aux[k] for k in ("logits", "global_feat")}
    loss, metrics = mat_objective(global_only, labels, cfg)
    np.testing.assert_allclose(
        loss,
        cross_entropy_label_smoothing(aux["logits"], labels, 0.1)
        + grouped_triplet(aux["global_feat"], labels, cfg),
        rtol=1e-6,
    )
    assert "consistency" not in metrics and "equivariance_value" not in metrics


@pytest.mark.parametrize(
    "switches, dropped",
    [
        ({}, "part_logits"),
        ({"segmentation": False}, "keypoints"),
        ({"keypoints": "none"}, "part_feat"),
    ],
)
def test_a_term_whose_aux_key_is_missing_is_an_error_naming_it(switches, dropped):
    """A renamed or missing aux key must not silently drop a loss term."""
    aux = _aux(np.random.default_rng(0))
    del aux[dropped]
    labels = jnp.asarray(np.repeat([0, 1], 4), jnp.int32)
    with pytest.raises(ValueError, match=f"aux\\['{dropped}'\\]"):
        mat_objective(aux, labels, MatLossConfig(**switches))


def test_loss_settings_take_the_group_size_from_the_sampler():
    config = ml_collections.ConfigDict()
    config.model = {"name": "mat"}
    config.data = {"instances_per_id": 6}
    config.loss = {f: v for f, v in MatLossConfig().__dict__.items()
                   if f not in ("mining_groups", "group_size")}  # fmt: skip
    settings = families.get("mat").loss_settings(config)
    assert isinstance(settings, MatLossConfig) and settings.group_size == 6
    del config.loss["consistency_weight"]
    with pytest.raises(Exception, match="consistency_weight"):
        families.get("mat").loss_settings(config)
