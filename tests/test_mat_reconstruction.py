"""MAT's image-reconstruction consistency, the image-space flow probe's geometry, and the
landmark regression of the part report, on hand-built inputs with known answers."""

from dataclasses import replace

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import motion
from occreid_jax.data.synthetic import people, render, scenes
from occreid_jax.data.synthetic.drawing import SUPERSAMPLE, Canvas
from occreid_jax.losses.mat import (
    average_pool,
    keypoint_masks,
    l1_pyramid,
    reconstruction_loss,
    reconstruction_terms,
    visibility_map,
    warped_pyramid,
)
from occreid_jax.probes import image_probe, landmarks, limb_flows

H, W = 32, 16


def _pixels_to_unit(dx, dy):
    return np.asarray([2.0 * dx / W, 2.0 * dy / H], np.float32)


def _two_block_pair(shift_top, shift_bottom, seed=0):
    """A: two textured blocks on a black background; X: the same blocks moved by whole pixel
    shifts (multiples of 4, so every pyramid level sees whole cells). Returns images [2, H, W, 3]
    (A, X), the one-hot segmentations [2, H, W, 3] of A and X and the blocks' centres in A."""
    rng = np.random.default_rng(seed)
    texture = [rng.uniform(0.2, 1.0, (8, 8, 3)).astype(np.float32) for _ in range(2)]
    corners = [(4, 4), (20, 4)]  # (row, column) of each block's top-left corner in A
    images = np.zeros((2, H, W, 3), np.float32)
    labels = np.zeros((2, H, W), np.int32)
    centres = []
    for k, ((r, c), (dx, dy)) in enumerate(zip(corners, (shift_top, shift_bottom), strict=True)):
        images[0, r : r + 8, c : c + 8] = texture[k]
        labels[0, r : r + 8, c : c + 8] = k + 1
        images[1, r + dy : r + dy + 8, c + dx : c + dx + 8] = texture[k]
        labels[1, r + dy : r + dy + 8, c + dx : c + dx + 8] = k + 1
        centre_px = np.asarray([c + 4.0, r + 4.0])
        centres.append(centre_px / np.asarray([W, H]) * 2.0 - 1.0)
    return images, np.eye(3, dtype=np.float32)[labels], np.asarray(centres, np.float32)


def _motions(centres, shifts):
    """Keypoints of A and X ([2, 2, 2]) so that part k moves by shifts[k] (pixels), and
    identity Jacobians [2, 2, 2, 2]."""
    moved = centres + np.stack([_pixels_to_unit(*s) for s in shifts])
    keypoints = np.stack([centres, moved]).astype(np.float32)
    jacobians = np.broadcast_to(np.eye(2, dtype=np.float32), (2, 2, 2, 2))
    return jnp.asarray(keypoints), jnp.asarray(jacobians)


def test_the_identity_flow_scores_zero_on_identical_images():
    images, seg, centres = _two_block_pair((0, 0), (0, 0))
    same = jnp.asarray(np.stack([images[0], images[0]]))
    kp, jac = _motions(centres, [(0, 0), (0, 0)])
    for visibility in (True, False):
        value = reconstruction_loss(same, jnp.asarray(seg), kp, jac, 2, "first", visibility)
        assert float(value) == pytest.approx(0.0, abs=1e-7)


def test_two_parts_moving_differently_are_explained_by_their_own_motions_not_one():
    shifts = [(4, 0), (-4, 4)]
    images, seg, centres = _two_block_pair(*shifts)
    kp, jac = _motions(centres, shifts)
    images, seg = jnp.asarray(images), jnp.asarray(seg)
    parts = reconstruction_terms(images, seg, kp, jac, 2, "first", True)
    assert float(parts[0, 0]) == pytest.approx(0.0, abs=1e-6)
    # The same image explained by one motion: A's whole person moves with the top block.
    one = jnp.concatenate([seg[..., :1], seg[..., 1:2] + seg[..., 2:3], 0 * seg[..., 2:3]], -1)
    single = reconstruction_terms(images, seg, kp, jac, 2, "first", True, one)
    assert float(single[0, 0]) > 0.02
    # Hand count at full resolution: the bottom block's 64 pixels read X 8 pixels off, so
    # each reads 0 (background) or the other texture; every visible pixel elsewhere matches.
    assert float(parts[0, 0]) < float(single[0, 0])


def test_keypoint_masks_hand_values_and_they_carry_l_fc_to_keypoints_past_a_background():
    masks = np.asarray(keypoint_masks(jnp.asarray([[[0.0, 0.0]]]), (2, 2), sigma=1.0))
    # Every centre (+-0.5, +-0.5) is 0.5 from the keypoint: logits -0.25 (part) and -2.
    part = 1.0 / (1.0 + np.exp(-2.0 + 0.25))
    np.testing.assert_allclose(masks[0, ..., 1], part, rtol=1e-6)
    np.testing.assert_allclose(masks.sum(-1), 1.0, rtol=1e-6)
    shifts = [(4, 0), (-4, 4)]
    images, seg, centres = _two_block_pair(*shifts)
    kp, jac = _motions(centres, [(0, 0), (0, 0)])  # no motion yet
    background = np.zeros_like(seg)
    background[..., 0] = 1.0  # a learned segmentation that fell to the background

    def loss(keypoints, flow):
        flow_seg = None if flow is None else keypoint_masks(keypoints, (H, W), 0.3)
        return reconstruction_loss(
            jnp.asarray(images), jnp.asarray(background), keypoints, jac, 2, "first", True,
            flow_seg,
        )  # fmt: skip

    # Through the segmentation the keypoints get nothing; through their own masks they do.
    assert not np.any(np.asarray(jax.grad(loss)(kp, None)))
    assert np.any(np.abs(np.asarray(jax.grad(loss)(kp, "masks"))[1]) > 1e-4)


def test_the_visibility_map_zeroes_what_the_person_left_and_carries_no_gradient():
    fg_source = jnp.asarray([[0.0, 1.0], [1.0, 0.5]]).reshape(1, 2, 2, 1)
    fg_target = jnp.asarray([[0.0, 0.0], [1.0, 0.5]]).reshape(1, 2, 2, 1)
    vis = visibility_map(fg_source, fg_target)
    # 1 - fg_s (1 - fg_t): hand values.
    np.testing.assert_allclose(np.asarray(vis).ravel(), [1.0, 0.0, 1.0, 0.75])
    grads = jax.grad(lambda s, t: jnp.sum(visibility_map(s, t)), argnums=(0, 1))(
        fg_source, fg_target
    )
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)
    # Through the whole term: `segmentation` only enters the visibility map when another
    # segmentation composes the flow, so its gradient must vanish.
    images, seg, centres = _two_block_pair((4, 0), (-4, 4))
    kp, jac = _motions(centres, [(4, 0), (-4, 4)])

    def loss(s):
        return jnp.sum(
            reconstruction_terms(
                jnp.asarray(images), s, kp, jac, 2, "first", True, jnp.asarray(seg)
            )
        )

    assert np.all(np.asarray(jax.grad(loss)(jnp.asarray(seg) * 0.9 + 0.05)) == 0.0)


def test_l1_pyramid_hand_values():
    target = jnp.zeros((1, 4, 4, 1))
    warped = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(4.0)
    ones = jnp.ones((1, 4, 4, 1))
    # scale 1: 4 / 16; scale 1/2: the 2x2 cell averages to 1 -> 1 / 4; scale 1/4: 4/16 / 1.
    expected = (4 / 16 + 1 / 4 + 0.25) / 3
    assert float(l1_pyramid(target, warped, ones)[0]) == pytest.approx(expected)
    np.testing.assert_allclose(
        np.asarray(average_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)).ravel(),
        [2.5, 4.5, 10.5, 12.5],
    )


def test_landmark_regression_on_keypoints_equal_to_the_joints_is_exact():
    rng = np.random.default_rng(0)
    joints = rng.uniform(-0.9, 0.9, (200, 17, 2))
    visible = rng.uniform(size=(200, 17)) > 0.2
    errors = landmarks.joint_errors(
        (joints[:150], joints[:150], visible[:150]),
        (joints[150:], joints[150:], visible[150:]),
        0.5,
    )
    assert errors["keypoint_joint_error"] == pytest.approx(0.0, abs=1e-6)
    assert errors["template_joint_error"] > 0.1


def test_template_error_hand_value():
    # Two training poses differing by a vertical shift d; the template is their mean, so on
    # the second pose every joint is off by d / 2, divided by the person's height.
    pose = np.stack([np.zeros(17), np.linspace(-0.8, 0.8, 17)], -1)  # height 0.8 heights
    d = 0.2  # in [-1, 1] units: 0.1 image heights
    train = np.stack([pose, pose + [0.0, d]])
    visible = np.ones((2, 17), bool)
    errors = landmarks.joint_errors(
        (train, train, visible), (train[1:], train[1:], visible[1:]), 0.5
    )
    assert errors["template_joint_error"] == pytest.approx((d / 2 / 2) / 0.8)


def test_fit_affine_recovers_a_similarity_from_two_points_and_an_affine_from_four():
    theta, scale, shift = 0.3, 1.2, np.asarray([0.1, -0.2])
    rot = scale * np.asarray([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    two = np.asarray([[0.0, 0.0], [0.3, 0.5]])
    matrix, offset = limb_flows.fit_affine(two, two @ rot.T + shift)
    np.testing.assert_allclose(matrix, rot, atol=1e-9)
    np.testing.assert_allclose(offset, shift, atol=1e-9)
    affine = np.asarray([[1.1, 0.2], [-0.1, 0.9]])
    four = np.random.default_rng(1).normal(size=(4, 2))
    matrix, offset = limb_flows.fit_affine(four, four @ affine.T + shift)
    np.testing.assert_allclose(matrix, affine, atol=1e-9)


def test_fit_affine_on_a_side_views_torso_is_the_similarity_of_its_two_distinct_points():
    # Shoulders coincide, and so do the hips: four joints on one line. A least-squares affine
    # would set the scale across the line to 0 (the minimum-norm solution); the two distinct
    # points fix a similarity exactly: here twice a quarter turn plus a shift.
    torso = np.asarray([[0.0, -0.3], [0.0, -0.3], [0.0, 0.2], [0.0, 0.2]])
    quarter_turn_twice = np.asarray([[0.0, -2.0], [2.0, 0.0]])
    shift = np.asarray([0.1, -0.2])
    matrix, offset = limb_flows.fit_affine(torso, torso @ quarter_turn_twice.T + shift)
    np.testing.assert_allclose(matrix, quarter_turn_twice, atol=1e-9)
    np.testing.assert_allclose(offset, shift, atol=1e-9)
    # A point beside the line moves as the similarity moves it: (0.1, 0) -> (0, 0.2) + shift.
    np.testing.assert_allclose(matrix @ [0.1, 0.0] + offset, [0.1, 0.0], atol=1e-9)


def _standing_pose():
    """17 COCO joints of a person facing the camera, in [-1, 1] of a 2:1 image."""
    x = [0, -0.1, 0.1, -0.2, 0.2, -0.45, 0.45, -0.55, 0.55, -0.6, 0.6, -0.25, 0.25, -0.25, 0.25,
         -0.25, 0.25]  # fmt: skip
    y = [-0.8, -0.83, -0.83, -0.8, -0.8, -0.55, -0.55, -0.2, -0.2, 0.1, 0.1, 0.1, 0.1, 0.5,
         0.5, 0.85, 0.85]  # fmt: skip
    return np.stack([x, y], -1).astype(np.float32)[None]


def test_part_map_puts_each_limb_on_its_group_and_the_background_at_zero():
    pose = _standing_pose()
    labels = limb_flows.part_map(pose, (64, 32), limb_flows.LIMB_GROUPS[10])[0]
    groups = limb_flows.LIMB_GROUPS[10]

    def label_at(x, y):
        col = int((x + 1) / 2 * 32)
        row = int((y + 1) / 2 * 64)
        return labels[row, col]

    assert label_at(0.0, -0.2) == groups.index((5, 6, 11, 12)) + 1  # chest
    assert label_at(-0.25, 0.7) == groups.index((13, 15)) + 1  # left shin
    assert label_at(0.58, -0.05) == groups.index((8, 10)) + 1  # right forearm
    assert label_at(0.95, 0.95) == 0


def test_compose_flow_moves_each_part_with_its_motion_and_keeps_the_background():
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, :2] = 1
    labels[0, 2:, :2] = 2
    seg = limb_flows.one_hot(labels, 3)
    shift = np.asarray([[0.1, 0.0], [0.0, -0.2]])
    motions = np.concatenate([np.broadcast_to(np.eye(2), (2, 2, 2)), shift[:, :, None]], -1)[None]
    flow = limb_flows.compose_flow(seg, motions)
    grid = np.asarray(motion.make_grid(4, 4))
    np.testing.assert_allclose(flow[0, :2], grid[:2] + shift[0], atol=1e-6)
    np.testing.assert_allclose(flow[0, 2:, :2], grid[2:, :2] + shift[1], atol=1e-6)
    np.testing.assert_allclose(flow[0, 2:, 2:], grid[2:, 2:], atol=1e-6)


def test_motions_as_keypoints_and_jacobians_move_points_by_the_motions_themselves():
    """FOMM's part motion `kp_X + J_X J_A^-1 (z - kp_A)` built from `as_keypoints` is the
    affine `M z + o`, wherever the keypoint sits: a rotation by 90 degrees about the origin
    plus a shift sends (0.5, 0) to (0.1, 0.7) and (0, 0.5) to (-0.4, 0.2)."""
    rotation = np.asarray([[0.0, -1.0], [1.0, 0.0]])
    motions = np.zeros((1, 2, 2, 3))
    motions[0, 0] = np.concatenate([rotation, [[0.1], [0.2]]], 1)
    motions[0, 1] = np.concatenate([2.0 * np.eye(2), [[0.0], [-0.3]]], 1)
    centres = np.asarray([[[0.3, -0.4], [-0.7, 0.1]]])
    keypoints, jacobians = limb_flows.as_keypoints(motions, centres)
    assert keypoints.shape == (1, 2, 2, 2) and jacobians.shape == (1, 2, 2, 2, 2)
    points = jnp.asarray([[[0.5, 0.0], [0.0, 0.5]]])
    moved = motion.part_motions(
        points, jnp.asarray(keypoints[:, 1]), jnp.asarray(jacobians[:, 1]),
        jnp.asarray(keypoints[:, 0]), jnp.asarray(jacobians[:, 0]),
    )  # fmt: skip
    np.testing.assert_allclose(moved[0, :, 0], [[0.1, 0.7], [-0.4, 0.2]], atol=1e-6)
    np.testing.assert_allclose(moved[0, :, 1], [[1.0, -0.3], [0.0, 0.7]], atol=1e-6)


def test_gate_needs_margin_wins_and_a_falling_path():
    body = np.asarray([1.0, 1.0, 1.0, 1.0])
    limbs = np.asarray([0.85, 0.85, 0.85, 1.1])
    scores = {
        "limbs, still background": {"plain": limbs},
        "body as one, still background": {"plain": body},
    }
    moderate = np.asarray([True, True, True, True])
    verdict = image_probe.gate(scores, np.asarray([1.0, 0.99, 0.98]), moderate, "plain")
    assert verdict["gain"] == pytest.approx(1 - 3.65 / 4)
    assert verdict["wins"] == pytest.approx(0.75)
    assert not verdict["passed"]  # 75% of moderate pairs < 80%
    moderate[3] = False
    assert image_probe.gate(scores, np.asarray([1.0, 0.99]), moderate, "plain")["passed"]
    rising = image_probe.gate(scores, np.asarray([1.0, 1.01, 0.9]), moderate, "plain")
    assert not rising["monotonic"] and not rising["passed"]


def test_centroid_oracle_places_translated_poses_exactly_and_noise_costs_error():
    # Every pose is one template shifted by its own translation: the body's centre carries
    # all of it, so the oracle's fitted map is exact, while the template is off by each shift.
    rng = np.random.default_rng(0)
    template = rng.uniform(-0.6, 0.6, (17, 2))
    joints = template + rng.normal(0.0, 0.1, (120, 1, 2))
    visible = np.ones((120, 17), bool)
    train, held_out = (joints[:80], visible[:80]), (joints[80:], visible[80:])
    body = landmarks.BODY_CENTRE
    exact = landmarks.centroid_oracle(train, held_out, 0.5, body)
    assert exact["keypoint_joint_error"] == pytest.approx(0.0, abs=1e-5)  # the ridge
    assert exact["template_joint_error"] > 0.05
    noisy = landmarks.centroid_oracle(train, held_out, 0.5, body, noise=0.01)
    assert 0.0 < noisy["keypoint_joint_error"] < exact["template_joint_error"]
    centroids = landmarks.group_centroids(joints[:2], ((0, 1), (2,)))
    np.testing.assert_allclose(centroids[:, 0], (joints[:2, 0] + joints[:2, 1]) / 2)
    np.testing.assert_allclose(centroids[:, 1], joints[:2, 2])


def _drawn_people(views, count: int, size=(128, 64)):
    """`count` synthetic people in `views`: their drawn masks [N, H, W] bool (at least half of
    each pixel covered) and their joints [N, 17, 2] in [-1, 1]."""
    height, width = size
    canvas_size = (height * SUPERSAMPLE, width * SUPERSAMPLE)
    rng = np.random.default_rng(0)
    camera = render.sample_camera(rng, height, width)
    masks, joints = [], []
    for i in range(count):
        identity = render.sample_identity(rng)
        pose = scenes.sample_pose(rng, camera, identity, *canvas_size)
        canvas = Canvas(*canvas_size)
        drawn = people.draw_person(canvas, identity, replace(pose, view=views[i % len(views)]))
        mask = (canvas.mask > 0).astype(np.float32)
        masks.append(cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA) >= 0.5)
        points = np.stack([drawn[k] for k in render.KEYPOINT_NAMES]) / SUPERSAMPLE
        joints.append(points / np.asarray([width, height]) * 2.0 - 1.0)
    return np.stack(masks), np.stack(joints)


@pytest.mark.parametrize("views", [("front", "back"), ("left", "right")])
def test_part_maps_person_lies_on_the_drawn_person_and_covers_most_of_it(views):
    # The probes move every pixel of the part map's person with a limb: background taken in
    # would move with the limbs. Measured: 85% on the person and 95% / 88% of it covered.
    masks, joints = _drawn_people(views, 24)
    person = limb_flows.part_map(joints, masks.shape[1:], limb_flows.LIMB_GROUPS[10]) > 0
    on_person = (person & masks).sum() / person.sum()
    covered = (person & masks).sum() / masks.sum()
    assert on_person > 0.8
    assert covered > 0.8


def _bars(shift_px: float):
    """A: a bright bar over columns 4-5 of an 8 x 16 image; X: the bar over columns 10-11; and
    the flow that reads X `shift_px` pixels to the right of every pixel of A."""
    a = np.zeros((1, 8, 16, 1), np.float32)
    x = np.zeros((1, 8, 16, 1), np.float32)
    a[:, :, 4:6] = 1.0
    x[:, :, 10:12] = 1.0
    flow = motion.make_grid(8, 16)[None] + jnp.asarray([2.0 * shift_px / 16, 0.0])
    return jnp.asarray(a), jnp.asarray(x), flow


def test_warped_pyramid_matches_hand_computed_levels():
    # Read 6 px to the right: levels 1 and 1/2 align the bars exactly (0). At 1/4 (coarse
    # columns A .5 at 1, X .5 at 2; 1.5 cells) the columns read .25, .25, 0, 0: errors .25,
    # .25, 0, 0, mean .125. At 1/8 (A .25, 0; X 0, .25; .75 cells) they read .1875 and the
    # border's .25: errors .0625 and .25, mean .15625. Over the four levels: .0703125.
    a, x, flow = _bars(6.0)
    weight = jnp.ones((1, 8, 16, 1))
    value = warped_pyramid(a, x, flow, weight, (1, 2, 4, 8))
    np.testing.assert_allclose(value, [0.0703125], atol=1e-6)
    # At one full-size level it is the pyramid of the warped image.
    np.testing.assert_allclose(
        warped_pyramid(a, x, flow, weight, (1,)),
        l1_pyramid(a, motion.grid_sample(x, flow, "border"), weight, (1,)),
        atol=1e-7,
    )


def test_warping_each_level_reaches_a_shift_the_pyramid_of_the_warp_cannot():
    # X's bar lies 6 px from A's. Half a pixel along, moving X's bar over A's empty columns
    # changes no level of the warped image's pyramid (its sum stays, within blocks clear of
    # A's bar): gradient 0. The coarse levels of the warped pyramid read X beside the bar
    # and pull the shift towards it (a negative gradient).
    weight = jnp.ones((1, 8, 16, 1))

    def of_the_warp(shift):
        a, x, flow = _bars(shift)
        return l1_pyramid(a, motion.grid_sample(x, flow, "border"), weight, (1, 2, 4, 8))[0]

    def warped_levels(shift):
        a, x, flow = _bars(shift)
        return warped_pyramid(a, x, flow, weight, (1, 2, 4, 8))[0]

    assert abs(float(jax.grad(of_the_warp)(0.5))) < 1e-7
    assert float(jax.grad(warped_levels)(0.5)) < -0.01
