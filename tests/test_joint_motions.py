"""L_fc's part motions fitted to pose joints (`loss.consistency_motions="joints"`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import families, motion
from occreid_jax.data.synthetic import render
from occreid_jax.errors import UserError
from occreid_jax.losses import joint_motions
from occreid_jax.losses import mat as mat_losses
from occreid_jax.losses.objectives import MatLossConfig, flow_motions, mat_objective
from occreid_jax.nets.mat_heads import LIMB_KEYPOINT_GROUPS, group_members
from occreid_jax.probes import flow_probe, limb_flows
from occreid_jax.probes.reference_flows import part_statistics
from occreid_jax.training.run import Run


@pytest.mark.parametrize("visible", [1, 2, 3, 4, 6])
def test_fit_motion_agrees_with_the_probes_numpy_fit(visible):
    """The jax fit is the probe's `limb_flows.fit_affine` (translation, similarity, affine)."""
    rng = np.random.default_rng(visible)
    source = rng.uniform(-1, 1, (6, 2))
    target = source @ (np.eye(2) + 0.3 * rng.normal(size=(2, 2))).T + rng.normal(size=(6, 2)) * 0.02
    weights = (np.arange(6) < visible).astype(np.float64)
    matrix, offset = joint_motions.fit_motion(
        jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32), jnp.asarray(weights)
    )
    expected_matrix, expected_offset = limb_flows.fit_affine(source, target, weights)
    np.testing.assert_allclose(matrix, expected_matrix, atol=2e-5)
    np.testing.assert_allclose(offset, expected_offset, atol=2e-5)


def test_points_at_one_place_fix_a_shift_and_a_side_torso_a_similarity():
    """Two shoulders at one point (hips hidden) move by their shift, not a matrix of zeros;
    a side view's torso (two distinct points, twice each) by the similarity, by hand."""
    shoulders = np.asarray([[0.1, -0.2], [0.1, -0.2], [0.0, 0.4], [0.0, 0.4]], np.float32)
    moved = shoulders + np.asarray([0.05, 0.1], np.float32)
    hips_hidden = np.asarray([1.0, 1.0, 0.0, 0.0])
    for fit in (joint_motions.fit_motion, limb_flows.fit_affine):
        matrix, offset = fit(shoulders, moved, hips_hidden)
        np.testing.assert_allclose(matrix, np.eye(2), atol=1e-6)
        np.testing.assert_allclose(offset, [0.05, 0.1], atol=1e-6)
    torso = np.asarray([[0.0, -0.5], [0.0, -0.5], [0.0, 0.5], [0.0, 0.5]], np.float32)
    quarter_turn_twice = np.asarray([[0.0, -2.0], [2.0, 0.0]], np.float32)
    matrix, offset = joint_motions.fit_motion(
        jnp.asarray(torso), jnp.asarray(torso @ quarter_turn_twice.T + [0.1, 0.0]), jnp.ones(4)
    )
    np.testing.assert_allclose(matrix, quarter_turn_twice, atol=1e-6)
    np.testing.assert_allclose(offset, [0.1, 0.0], atol=1e-6)


def _limb_pose(rng):
    """17 joints [17, 2] of a standing person, roughly, in [-1, 1]."""
    base = np.asarray(
        [[0, -0.8], [-0.03, -0.83], [0.03, -0.83], [-0.06, -0.8], [0.06, -0.8],
         [-0.2, -0.55], [0.2, -0.55], [-0.3, -0.2], [0.3, -0.2], [-0.35, 0.1], [0.35, 0.1],
         [-0.12, 0.1], [0.12, 0.1], [-0.15, 0.45], [0.15, 0.45], [-0.15, 0.8], [0.15, 0.8]],
        np.float32,
    )  # fmt: skip
    return base + rng.normal(size=base.shape).astype(np.float32) * 0.02


def test_joint_flow_motions_move_every_part_by_its_limbs_fit_and_keep_a_still():
    """Group [A, X], X's joints moved limb by limb: `motion.part_motions` with the returned
    keypoints and Jacobians maps any point z of A by the probe's numpy fit of that limb's
    joints; A keeps its own keypoints and identity Jacobians."""
    rng = np.random.default_rng(0)
    groups = LIMB_KEYPOINT_GROUPS[10]
    joints_a = _limb_pose(rng)
    matrices = np.eye(2) + 0.15 * rng.normal(size=(len(groups), 2, 2))
    offsets = rng.normal(size=(len(groups), 2)) * 0.05
    joints_x = joints_a.copy()
    for members, m, o in zip(groups, matrices, offsets, strict=True):
        for j in members:  # a joint of two limbs (an elbow) moves with the later one
            joints_x[j] = joints_a[j] @ m.T + o
    members = group_members(10, "limbs")
    weights = np.repeat(members[None], 2, axis=0)
    keypoints = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 10, 2)), jnp.float32)
    kp, jac = joint_motions.joint_flow_motions(
        keypoints, jnp.asarray(np.stack([joints_a, joints_x])), jnp.asarray(weights), 2, 0.5
    )
    np.testing.assert_array_equal(kp[0], keypoints[0])
    np.testing.assert_array_equal(jac[0], np.broadcast_to(np.eye(2), (10, 2, 2)))
    z = jnp.asarray(rng.uniform(-1, 1, (1, 7, 2)), jnp.float32)
    moved = motion.part_motions(z, kp[1:], jac[1:], kp[:1], jac[:1])[0]  # [7, K, 2]
    fits = limb_flows.group_motions(joints_a[None], joints_x[None], groups, aspect=0.5)[0]
    for k, fit in enumerate(fits):
        np.testing.assert_allclose(
            moved[:, k], np.asarray(z[0]) @ fit[:, :2].T + fit[:, 2], atol=1e-4
        )


def test_a_shift_of_image_and_joints_is_undone_by_the_joints_motions():
    """X is A's image moved 4 pixels right, its joints with it: through the joints' motions
    (one part covering the image) A is read back exactly but for the 4 columns that fall
    beyond X's edge (border padding: X's last column), by hand; no motion is far worse."""
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(32, 16, 3)).astype(np.float32)
    x = np.roll(a, 4, axis=1)
    joints_a = _limb_pose(rng) * 0.5
    joints_x = joints_a + np.asarray([8.0 / 16, 0.0], np.float32)  # 4 px of 16 in [-1, 1]
    segmentation = np.zeros((2, 8, 4, 11), np.float32)
    segmentation[..., 1] = 1.0  # the whole image on the head's part
    weights = np.repeat(group_members(10, "limbs")[None], 2, axis=0)
    kp, jac = joint_motions.joint_flow_motions(
        jnp.zeros((2, 10, 2)), jnp.asarray(np.stack([joints_a, joints_x])), weights, 2, 0.5
    )
    images, seg = jnp.asarray(np.stack([a, x])), jnp.asarray(segmentation)
    moved = mat_losses.reconstruction_terms(images, seg, kp, jac, 2, "first", False, scales=(1,))
    expected = np.abs(a[:, 12:] - a[:, 11:12]).sum() / a.size
    np.testing.assert_allclose(moved[0, 0], expected, rtol=1e-4)
    identity = jnp.asarray(np.broadcast_to(np.eye(2), (2, 10, 2, 2)))
    still = mat_losses.reconstruction_terms(
        images, seg, jnp.zeros((2, 10, 2)), identity, 2, "first", False, scales=(1,)
    )
    assert float(still[0, 0]) > 3 * expected
    # The objective's L_fc takes these motions, not the model's (identity here).
    cfg = MatLossConfig(
        consistency_target="image", consistency_motions="joints", consistency_pairs="first",
        consistency_visibility=False, keypoints="heatmaps", group_size=2,
    )  # fmt: skip
    aux = {
        "images": images, "segmentation": seg, "keypoints": jnp.zeros((2, 10, 2)),
        "jacobians": identity, "joints": jnp.asarray(np.stack([joints_a, joints_x])),
        "joint_weights": jnp.asarray(weights), "keypoint_heatmaps": jnp.ones((2, 8, 4, 10)),
        "logits": jnp.zeros((2, 3)), "global_feat": jnp.ones((2, 4)),
        "part_logits": jnp.zeros((2, 10, 3)), "part_feat": jnp.ones((2, 10, 4)),
        "warped": {"keypoints": jnp.zeros((2, 10, 2)), "jacobians": identity},
        "tps": motion.identity_tps(2),
    }  # fmt: skip
    _, metrics = mat_objective(aux, jnp.zeros(2, jnp.int32), cfg)
    joints_fc = mat_losses.reconstruction_loss(images, seg, kp, jac, 2, "first", False)
    np.testing.assert_allclose(metrics["consistency"], joints_fc, rtol=1e-6)
    learned = mat_losses.reconstruction_loss(
        images, seg, aux["keypoints"], identity, 2, "first", False
    )
    assert float(learned) > 2 * float(joints_fc)


def test_heatmap_joints_find_the_rendered_joints_and_which_are_hidden():
    """The synthetic benchmark's sigma-1 Gaussians at stride 4: positions back to 0.02
    heatmap pixels away from the border, a hidden joint reported hidden."""
    keypoints = np.asarray([[20.0, 30.0, 1], [41.5, 90.25, 1], [10.0, 10.0, 0]], np.float32)
    maps = render.keypoint_heatmaps(keypoints, 128, 64).astype(np.float32) / 255.0
    joints, visible = motion.heatmap_joints(jnp.asarray(maps[None]))
    expected = keypoints[:2, :2] / np.asarray([64, 128]) * 2 - 1
    np.testing.assert_allclose(joints[0, :2], expected, atol=0.02 * 2 / 16)
    assert visible[0].tolist() == [True, True, False]


def test_joint_motions_need_pose_heatmaps_and_a_known_value():
    with pytest.raises(UserError, match="model.keypoints=heatmaps"):
        MatLossConfig(consistency_motions="joints").check()
    with pytest.raises(UserError, match="unknown loss.consistency_motions"):
        MatLossConfig(consistency_motions="pose").check()
    MatLossConfig(consistency_motions="joints", keypoints="heatmaps").check()
    with pytest.raises(ValueError, match="aux\\['joints'\\]"):
        flow_motions(
            {"keypoints": jnp.zeros((2, 3, 2))}, MatLossConfig(consistency_motions="joints")
        )


def test_the_part_report_feeds_the_gallery_its_heatmaps(tiny_config, tmp_path):
    """With keypoints from pose heatmaps and the keypoint prior, the part report's gallery
    figures are the segmentation retrieval sees (with the heatmaps), not the one without."""
    config = tiny_config("mat")
    config.model.keypoints, config.pose.source = "heatmaps", "ground_truth"
    config.model.segment_features, config.model.keypoint_features = "backbone", "encoder"
    config.model.segmentation_prior_sigma = 0.05  # a strong prior: it decides the parts
    run = Run(config, str(tmp_path / "run"))
    gallery = run.eval_splits["gallery"]
    model, _, _ = run.model_and_checkpointer(run.train_split().num_classes)
    height, width = config.data.image_size
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, height, width, 3)),
        heatmaps=jnp.zeros((1, height // 4, width // 4, 17)),
    )  # fmt: skip
    groups = flow_probe.collect_groups(config, run.train_split(), 2)
    settings = families.get("mat").loss_settings(config)
    report = flow_probe.part_report(
        model.apply, variables, gallery, groups, settings, config.data.image_size
    )
    _, images, heatmaps = flow_probe.gallery_subset(gallery, (height, width), with_heatmaps=True)
    fed = flow_probe.model_outputs(model.apply, variables, images, heatmaps=heatmaps)
    unfed = flow_probe.model_outputs(model.apply, variables, images)
    expected = part_statistics(fed["segmentation"], fed["keypoints"])
    assert report["gallery_parts_per_image"] == pytest.approx(expected["parts_per_image"])
    assert report["gallery_part_confidence"] == pytest.approx(expected["part_confidence"])
    assert "keypoints" not in unfed  # without heatmaps: no keypoints, so no prior
    without = part_statistics(unfed["segmentation"], None)
    assert without["part_confidence"] != pytest.approx(expected["part_confidence"], abs=1e-3)
