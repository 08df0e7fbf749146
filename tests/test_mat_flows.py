"""MAT's feature consistency on features, its switches, and the flow probe's reference flows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import motion
from occreid_jax.errors import UserError
from occreid_jax.losses import mat as mat_losses
from occreid_jax.losses.objectives import (
    MatLossConfig,
    consistency_maps,
    flow_jacobians,
    mat_objective,
)
from occreid_jax.probes import flow_probe, reference_flows

IDENTITY = np.broadcast_to(np.eye(2, dtype=np.float32), (2, 2, 2))


def _shifted_pair(rng, height=16, width=8, channels=5):
    """Feature maps A and X = A moved down one row (A's last two rows equal, so that the
    border read of the moved-back X matches A there too)."""
    a = rng.normal(size=(height, width, channels)).astype(np.float32) * 2
    a[-1] = a[-2]
    x = np.concatenate([a[:1], a[:-1]], axis=0)
    return a, x


def _two_parts(seg_size=(8, 4), part=1):
    """A's segmentation: background 0, parts 1 and 2; everything on `part`."""
    seg = np.zeros((*seg_size, 3), np.float32)
    seg[..., part] = 1.0
    return seg


def test_feature_consistency_is_zero_for_identical_features_and_identity_motion():
    """Same features, same keypoints and Jacobians: every part motion is the identity, so is
    the flow, and the KL is 0, also when the features are finer than the segmentation."""
    rng = np.random.default_rng(0)
    feats = jnp.asarray(np.repeat(rng.normal(size=(1, 16, 8, 6)), 4, axis=0), jnp.float32)
    seg = jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 8, 4, 4)) * 3, jnp.float32), axis=-1)
    kp = jnp.asarray(np.repeat(rng.uniform(-0.7, 0.7, (1, 3, 2)), 4, axis=0), jnp.float32)
    jac = np.eye(2) + 0.2 * rng.normal(size=(1, 3, 2, 2))
    jac = jnp.asarray(np.repeat(jac, 4, axis=0), jnp.float32)
    maps = mat_losses.feature_distribution(feats)
    loss = mat_losses.consistency_loss(maps, jnp.repeat(seg, 4, axis=0), kp, jac, group_size=4)
    assert abs(float(loss)) < 1e-5


@pytest.mark.parametrize("seg_size", [(16, 8), (8, 4)])
def test_a_known_translation_is_undone_by_the_part_that_moves_and_not_by_the_others(seg_size):
    """X is A moved down one row of 16; part 1's keypoint moved with it, part 2's did not.
    A segmentation all on part 1 gives KL 0, all on part 2 (or the background) does not."""
    a, x = _shifted_pair(np.random.default_rng(1))
    maps = mat_losses.feature_distribution(jnp.asarray(np.stack([a, x])))
    kp_a = np.asarray([[0.0, -0.5], [0.0, 0.5]], np.float32)
    kp_x = kp_a + np.asarray([[0.0, 2.0 / 16], [0.0, 0.0]], np.float32)
    kps = jnp.asarray(np.stack([kp_a, kp_x]))
    jacs = jnp.asarray(np.stack([IDENTITY, IDENTITY]))

    def loss(part):
        seg = jnp.asarray(np.stack([_two_parts(seg_size, part)] * 2))
        return float(mat_losses.consistency_loss(maps, seg, kps, jacs, group_size=2))

    assert loss(1) < 1e-5
    assert loss(2) > 0.1 and loss(0) > 0.1
    np.testing.assert_allclose(loss(2), loss(0), rtol=1e-6)  # part 2 stays put, as background


def test_the_probe_finds_the_moving_part_as_the_best_single_part():
    a, x = _shifted_pair(np.random.default_rng(2))
    maps = mat_losses.feature_distribution(jnp.asarray(np.stack([a, x])))
    kp_a = jnp.asarray([[[0.0, -0.5], [0.0, 0.5]]], jnp.float32)
    kp_x = kp_a + jnp.asarray([[[0.0, 0.0], [0.0, 2.0 / 16]]], jnp.float32)
    jac = jnp.asarray(IDENTITY[None])
    scores = {}
    for channel in (0, 1, 2):
        seg = reference_flows.constant_segmentation(1, 3, channel)
        coords = reference_flows.segmentation_flow(seg, kp_a, jac, kp_x, jac, (16, 8))
        scores[channel] = reference_flows.score(maps[:1], maps[1:], coords)[0]
    assert scores[2] < 1e-5 < 0.1 < scores[1]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-6)
    no_motion = reference_flows.score(maps[:1], maps[1:], reference_flows.no_motion(1, (16, 8)))[0]
    np.testing.assert_allclose(no_motion, scores[0], rtol=1e-6)


def _random_group(rng, group=4):
    seg = jax.nn.softmax(jnp.asarray(rng.normal(size=(group, 8, 4, 3)) * 2, jnp.float32), -1)
    feats = jnp.asarray(rng.normal(size=(group, 8, 4, 6)), jnp.float32)
    kp = jnp.asarray(rng.uniform(-0.6, 0.6, (group, 2, 2)), jnp.float32)
    jac = jnp.asarray(np.eye(2) + 0.1 * rng.normal(size=(group, 2, 2, 2)), jnp.float32)
    return {"segmentation": seg, "feature_maps": feats, "keypoints": kp, "jacobians": jac}


def _objective_inputs(aux: dict, global_feat: jax.Array, num_classes: int) -> dict:
    """`aux` completed with what `mat_objective` reads besides L_fc's inputs: zero logits,
    `global_feat` [B, d] for the global and every part feature, and a warped pass that
    saw the same keypoints under the identity warp (L_eq = 0)."""
    batch, parts = aux["keypoints"].shape[:2]
    return {
        **aux,
        "logits": jnp.zeros((batch, num_classes)),
        "global_feat": global_feat,
        "part_logits": jnp.zeros((batch, parts, num_classes)),
        "part_feat": jnp.repeat(global_feat[:, None], parts, axis=1),
        "warped": {"keypoints": aux["keypoints"], "jacobians": aux["jacobians"]},
        "tps": motion.identity_tps(batch),
    }


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_gradients_reach_the_segmentation_through_the_flow_and_the_features_only_unstopped(
    stop_gradient,
):
    aux = _random_group(np.random.default_rng(3))
    cfg = MatLossConfig(consistency_stop_gradient=stop_gradient)

    def fc(seg, feats, kp):
        inputs = {**aux, "segmentation": seg, "feature_maps": feats}
        (maps,) = consistency_maps(inputs, cfg)
        return mat_losses.consistency_loss(maps, seg, kp, aux["jacobians"], group_size=4)

    g_seg, g_feat, g_kp = jax.grad(fc, argnums=(0, 1, 2))(
        aux["segmentation"], aux["feature_maps"], aux["keypoints"]
    )
    assert float(jnp.abs(g_seg).sum()) > 1e-4 and float(jnp.abs(g_kp).sum()) > 1e-4
    # Only A's segmentation composes flows; the others' reach the loss through nothing.
    assert float(jnp.abs(g_seg[1:]).sum()) == 0.0
    assert (float(jnp.abs(g_feat).sum()) == 0.0) == stop_gradient


def test_segmentation_target_compares_the_part_maps_as_first_built():
    aux = _random_group(np.random.default_rng(4))
    cfg = MatLossConfig(consistency_target="segmentation")
    (maps,) = consistency_maps(aux, cfg)
    np.testing.assert_array_equal(maps, aux["segmentation"])
    backbone = MatLossConfig(consistency_target="backbone", consistency_stages=(2, 1))
    stages = [jnp.zeros((4, 16, 8, 2)), jnp.ones((4, 8, 4, 3))]
    second, first = consistency_maps({**aux, "backbone_maps": stages}, backbone)
    np.testing.assert_allclose(second, np.full((4, 8, 4, 3), 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(first, np.full((4, 16, 8, 2), 1 / 2), rtol=1e-6)


def test_without_jacobians_the_parts_move_by_translations():
    aux = _random_group(np.random.default_rng(9))
    off = MatLossConfig(consistency_jacobians=False)
    np.testing.assert_array_equal(
        flow_jacobians(aux, off), np.broadcast_to(np.eye(2), (4, 2, 2, 2))
    )
    np.testing.assert_array_equal(flow_jacobians(aux, MatLossConfig()), aux["jacobians"])
    labels = jnp.asarray(np.repeat([0], 4), jnp.int32)
    aux = _objective_inputs(aux, jnp.ones((4, 3)), num_classes=2)
    _, metrics = mat_objective(aux, labels, off)
    (maps,) = consistency_maps(aux, off)
    expected = mat_losses.consistency_loss(
        maps, aux["segmentation"], aux["keypoints"], flow_jacobians(aux, off), 4
    )
    np.testing.assert_allclose(metrics["consistency"], expected, rtol=1e-6)


def test_first_pairs_compare_a_with_b_only():
    """C and D disagree with A, B agrees: L_fc over the first pair only is 0."""
    rng = np.random.default_rng(5)
    feats = np.repeat(rng.normal(size=(1, 8, 4, 5)), 4, axis=0).astype(np.float32)
    feats[2:] = rng.normal(size=(2, 8, 4, 5))
    maps = mat_losses.feature_distribution(jnp.asarray(feats))
    seg = jnp.asarray(np.stack([_two_parts()] * 4))
    kp = jnp.zeros((4, 2, 2))
    jac = jnp.asarray(np.stack([IDENTITY] * 4))
    first = mat_losses.consistency_loss(maps, seg, kp, jac, 4, pairs="first")
    every = mat_losses.consistency_loss(maps, seg, kp, jac, 4, pairs="all")
    assert abs(float(first)) < 1e-6 and float(every) > 0.1


def test_keypoint_separation_by_hand():
    sigma = 0.1
    two = jnp.asarray([[[0.0, 0.0], [0.1, 0.0]]])
    np.testing.assert_allclose(
        mat_losses.keypoint_separation_loss(two, sigma), np.exp(-0.5), rtol=1e-6
    )
    # Three points on a line 0.1 apart: ordered pairs at 0.1 (4 of them) and 0.2 (2).
    three = jnp.asarray([[[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]])
    expected = (4 * np.exp(-0.5) + 2 * np.exp(-2.0)) / 6
    np.testing.assert_allclose(
        mat_losses.keypoint_separation_loss(three, sigma), expected, rtol=1e-6
    )
    same = jnp.zeros((2, 4, 2))
    np.testing.assert_allclose(mat_losses.keypoint_separation_loss(same, sigma), 1.0)


def test_keypoint_separation_enters_the_total_with_its_weight():
    aux = _random_group(np.random.default_rng(6), group=8)
    features = jnp.asarray(np.random.default_rng(7).normal(size=(8, 4)), jnp.float32)
    aux = _objective_inputs(aux, features, num_classes=3)
    labels = jnp.asarray(np.repeat([0, 1], 4), jnp.int32)
    off, _ = mat_objective(aux, labels, MatLossConfig())
    on, metrics = mat_objective(aux, labels, MatLossConfig(keypoint_separation_weight=3.0))
    expected = mat_losses.keypoint_separation_loss(aux["keypoints"], 0.1)
    np.testing.assert_allclose(on - off, 3.0 * expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["keypoint_separation"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("consistency_target", "pixels", "consistency_target"),
        ("consistency_pairs", "some", "consistency_pairs"),
        ("consistency_stages", (2, 5), "consistency_stages"),
    ],
)
def test_bad_consistency_settings_are_one_line_errors(field, value, message):
    with pytest.raises(UserError, match=message):
        MatLossConfig(**{field: value}).check()


# ----------------------------------------------------------------------------- probe flows


def test_global_translation_is_the_mean_joint_displacement():
    a = np.asarray([[[0.0, 0.0], [0.2, 0.0], [0.0, 0.4]]], np.float32)
    x = a + np.asarray([[[0.1, 0.1], [0.1, 0.2], [0.1, 0.0]]], np.float32)
    coords = reference_flows.global_translation(a, x, (4, 2))
    grid = np.asarray(motion.make_grid(4, 2))
    np.testing.assert_allclose(coords[0], grid + [0.1, 0.1], atol=1e-6)


def test_global_affine_recovers_an_affine_motion_exactly():
    rng = np.random.default_rng(8)
    a = rng.uniform(-0.8, 0.8, (2, 6, 2)).astype(np.float32)
    matrix, offset = np.asarray([[1.1, 0.2], [-0.1, 0.9]]), np.asarray([0.05, -0.1])
    x = a @ matrix.T + offset
    coords = reference_flows.global_affine(a, x, (4, 2))
    grid = np.asarray(motion.make_grid(4, 2))
    np.testing.assert_allclose(coords[1], grid @ matrix.T + offset, atol=1e-5)


def test_joint_part_flow_moves_each_position_with_its_nearest_joint_group():
    """Two joints in separate groups, on an 8 x 4 grid of a 2:1 image; the cell centres next
    to each joint move with it, a far corner stays."""
    a = np.asarray([[[-0.25, -0.5], [0.25, 0.5]]], np.float32)  # near cells (1, 1), (5, 2)
    x = a + np.asarray([[[0.1, 0.0], [0.0, -0.2]]], np.float32)
    coords = reference_flows.joint_part_flow(a, x, (8, 4), ((0,), (1,)), background_radius=0.1)
    grid = np.asarray(motion.make_grid(8, 4))
    np.testing.assert_allclose(coords[0, 1, 1], grid[1, 1] + [0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(coords[0, 5, 2], grid[5, 2] + [0.0, -0.2], atol=1e-6)
    np.testing.assert_allclose(coords[0, 7, 0], grid[7, 0], atol=1e-6)  # 0.25 heights away
    with pytest.raises(ValueError, match="no group"):
        reference_flows.joint_part_flow(a, x, (8, 4), ((0,),), background_radius=0.1)


def test_an_upsampled_translation_stays_that_translation():
    coarse = reference_flows.global_translation(
        np.zeros((1, 1, 2), np.float32), np.full((1, 1, 2), 0.2, np.float32), (8, 4)
    )
    fine = reference_flows.upsample_flow(coarse, (32, 16))
    np.testing.assert_allclose(fine[0], np.asarray(motion.make_grid(32, 16)) + 0.2, atol=1e-5)


def test_part_statistics_by_hand():
    seg = np.zeros((2, 2, 2, 4), np.float32)
    seg[0, 0, :, 1], seg[0, 1, :, 2] = 0.7, 0.7  # image 0: parts 1 and 2 win
    seg[0, 0, :, 0], seg[0, 1, :, 0] = 0.3, 0.3
    seg[1, :, 0, 3], seg[1, :, 1, 0] = 1.0, 1.0  # image 1: part 3 and the background win
    keypoints = np.asarray([[[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]] * 2, np.float32)
    stats = reference_flows.part_statistics(seg, keypoints)
    assert stats["parts_per_image"] == 1.5 and stats["parts_overall"] == 3
    np.testing.assert_allclose(stats["part_confidence"], (0.7 + 1.0) / 2, rtol=1e-6)
    # std over parts: x (-1, 1, 0) -> sqrt(2/3), y -> 0; mean over x and y.
    np.testing.assert_allclose(stats["keypoint_spread"], np.sqrt(2 / 3) / 2, rtol=1e-6)


def test_the_gate_compares_the_better_part_flow_with_the_better_global_motion():
    scores = {
        "no motion": 1.0,
        "global translation (joints)": 0.80,
        "global affine (joints)": 0.90,
        "ground-truth parts (joints)": 0.78,
        "ground-truth parts, soft (joints)": 0.74,
        "ground-truth body as one part, soft (joints)": 0.70,
        "best single part": 0.85,
        "best single part index": 3,
    }
    verdict = flow_probe.gate(scores, 0.05)
    np.testing.assert_allclose(verdict["gain"], 1 - 0.74 / 0.80)  # 7.5%: passes
    np.testing.assert_allclose(verdict["body_gain"], 1 - 0.74 / 0.70)  # the body wins
    assert verdict["passed"]
    worse = {**scores, "ground-truth parts, soft (joints)": 0.77}  # 3.75%: fails
    assert not flow_probe.gate(worse, 0.05)["passed"]
    assert flow_probe.gate({"no motion": 1.0}, 0.05) is None
    table = flow_probe.table(scores)
    assert "| best single part (3) | 0.8500 | -15.0% |" in table
    assert "index" not in table
