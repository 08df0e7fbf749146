"""Motion geometry: soft-argmax, TPS warps and Jacobians, sampling, part motion, dense flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import motion


def _numpy_tps(theta, control_points, control_params, p):
    """Independent float64 twin of FOMM's `warp_coordinates` for one image: p [N, 2]."""
    out = p @ theta[:, :2].T + theta[:, 2]
    r = np.abs(p[:, None, :] - control_points[None]).sum(-1)  # [N, P]
    kernel = r**2 * np.log(r + 1e-6)
    return out + (kernel * control_params[None]).sum(-1, keepdims=True)


def _strong_tps(seed=0, batch=2):
    """A clearly non-affine warp (larger sigmas than training, to exercise the TPS term)."""
    return motion.random_tps(jax.random.PRNGKey(seed), batch, 0.2, 0.2, 5)


def test_grid_has_pixel_edges_at_plus_minus_one():
    grid = np.asarray(motion.make_grid(2, 4))
    np.testing.assert_allclose(grid[0, :, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(grid[:, 0, 1], [-0.5, 0.5])
    # A stride-4 feature cell and the 4 x 4 image pixels it covers share their centre.
    fine = np.asarray(motion.make_grid(8, 16)).reshape(2, 4, 4, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(fine, grid, atol=1e-6)


def test_soft_argmax_recovers_a_known_peak():
    logits = np.zeros((2, 8, 4, 3), np.float32)
    logits[0, 5, 2, 0] = 10.0  # a single peak at row 5, column 2
    logits[0, 1, 0, 1] = logits[0, 1, 1, 1] = 10.0  # two equal peaks: their midpoint
    logits[1, 7, 3, 2] = 10.0
    kp, heat = motion.soft_argmax(jnp.asarray(logits), temperature=0.1)
    grid = np.asarray(motion.make_grid(8, 4))
    np.testing.assert_allclose(kp[0, 0], grid[5, 2], atol=1e-6)
    np.testing.assert_allclose(kp[0, 1], (grid[1, 0] + grid[1, 1]) / 2, atol=1e-6)
    np.testing.assert_allclose(kp[1, 2], grid[7, 3], atol=1e-6)
    # An all-zero channel is uniform: its keypoint is the image centre.
    np.testing.assert_allclose(kp[1, 0], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(heat).sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_pooled_jacobians_are_heatmap_weighted_means():
    rng = np.random.default_rng(0)
    heat = rng.random((1, 3, 2, 2)).astype(np.float32)
    heat /= heat.sum(axis=(1, 2), keepdims=True)
    maps = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    got = np.asarray(motion.pool_jacobians(jnp.asarray(heat), jnp.asarray(maps)))
    for k in range(2):
        expected = (heat[0, :, :, k, None] * maps[0, :, :, 4 * k : 4 * k + 4]).sum((0, 1))
        np.testing.assert_allclose(got[0, k], expected.reshape(2, 2), rtol=1e-5, atol=1e-6)


def test_inverse_2x2():
    m = np.random.default_rng(1).normal(size=(5, 2, 2)).astype(np.float32) + 2 * np.eye(2)
    np.testing.assert_allclose(motion.inverse_2x2(jnp.asarray(m)), np.linalg.inv(m), rtol=1e-4)


def test_tps_warp_matches_an_independent_numpy_twin():
    tps = _strong_tps()
    points = np.random.default_rng(0).uniform(-1, 1, size=(2, 20, 2)).astype(np.float32)
    got = np.asarray(motion.tps_warp(tps, jnp.asarray(points)))
    for b in range(2):
        expected = _numpy_tps(
            np.asarray(tps["theta"][b], np.float64),
            np.asarray(tps["control_points"], np.float64),
            np.asarray(tps["control_params"][b], np.float64),
            points[b].astype(np.float64),
        )
        np.testing.assert_allclose(got[b], expected, atol=1e-5)


def test_tps_jacfwd_matches_central_finite_differences():
    tps = _strong_tps(seed=3)
    # Off the L1 kernel's creases (x or y equal to a control coordinate, where |.| has a kink),
    # the warp is smooth and central differences are exact to O(h^2).
    points = np.random.default_rng(2).uniform(-0.9, 0.9, size=(2, 12, 2))
    assert np.abs(points * 2 - np.round(points * 2)).min() > 1e-3
    jac = np.asarray(motion.tps_jacobian(tps, jnp.asarray(points, jnp.float32)))
    h = 1e-5
    for b in range(2):
        args = [np.asarray(tps[k], np.float64) for k in ("theta", "control_points")]
        params = np.asarray(tps["control_params"][b], np.float64)
        for j in range(2):
            step = np.zeros(2)
            step[j] = h
            plus = _numpy_tps(args[0][b], args[1], params, points[b] + step)
            minus = _numpy_tps(args[0][b], args[1], params, points[b] - step)
            np.testing.assert_allclose(jac[b, :, :, j], (plus - minus) / (2 * h), atol=2e-4)


def test_identity_tps_is_the_identity():
    tps = motion.identity_tps(2)
    points = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 7, 2)), jnp.float32)
    np.testing.assert_allclose(motion.tps_warp(tps, points), points, atol=1e-7)
    np.testing.assert_allclose(
        motion.tps_jacobian(tps, points), np.broadcast_to(np.eye(2), (2, 7, 2, 2)), atol=1e-7
    )


def test_tps_never_produces_nan_including_at_control_points():
    tps = _strong_tps(seed=5)
    control = tps["control_points"]  # the 5 x 5 grid, corners and edges included
    grid = motion.make_grid(16, 8).reshape(1, -1, 2)
    points = jnp.concatenate([jnp.broadcast_to(control, (2, 25, 2)), jnp.tile(grid, (2, 1, 1))], 1)
    assert np.isfinite(np.asarray(motion.tps_warp(tps, points))).all()
    assert np.isfinite(np.asarray(motion.tps_jacobian(tps, points))).all()

    # Second order (the equivariance loss differentiates dT/dp with respect to p).
    def through_jacobian(p):
        return jnp.sum(motion.tps_jacobian(tps, p) ** 2) + jnp.sum(motion.tps_warp(tps, p))

    grad = jax.grad(through_jacobian)(points)
    assert np.isfinite(np.asarray(grad)).all()
    images = jnp.ones((2, 16, 8, 3))
    assert np.isfinite(np.asarray(motion.warp_images(images, tps))).all()
    # Also with gradients of a warped image with respect to the warp parameters.
    g = jax.grad(lambda t: jnp.sum(motion.warp_images(images, {**tps, "theta": t})))(tps["theta"])
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_grid_sample_matches_torch(padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    coords = rng.uniform(-1.3, 1.3, size=(2, 4, 6, 2)).astype(np.float32)
    got = np.asarray(motion.grid_sample(jnp.asarray(images), jnp.asarray(coords), padding))
    expected = torch.nn.functional.grid_sample(
        torch.from_numpy(images).permute(0, 3, 1, 2),
        torch.from_numpy(coords),
        mode="bilinear",
        padding_mode=padding,
        align_corners=False,
    )
    np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_identity_warp_keeps_the_image():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 8, 3)), jnp.float32)
    np.testing.assert_allclose(
        motion.warp_images(images, motion.identity_tps(2)), images, atol=1e-5
    )


def test_warp_is_backward():
    """X'(p) = X(T(p)): a translation by +2 pixels in x reads the image 2 pixels to the right."""
    images = jnp.asarray(
        np.arange(8, dtype=np.float32)[None, None, :, None] * np.ones((1, 4, 8, 1))
    )
    tps = motion.identity_tps(1)
    tps["theta"] = tps["theta"].at[0, 0, 2].set(2 * 2.0 / 8)  # +2 pixels in [-1, 1] units
    warped = np.asarray(motion.warp_images(images, tps))[0, 0, :, 0]
    np.testing.assert_allclose(warped, [2, 3, 4, 5, 6, 7, 0, 0], atol=1e-5)


def _random_motion(seed, batch=1, parts=3):
    rng = np.random.default_rng(seed)
    kp_s, kp_t = (jnp.asarray(rng.uniform(-0.8, 0.8, (batch, parts, 2)), jnp.float32) for _ in "st")
    jac_s, jac_t = (
        jnp.asarray(np.eye(2) + 0.3 * rng.normal(size=(batch, parts, 2, 2)), jnp.float32)
        for _ in "st"
    )
    return kp_s, jac_s, kp_t, jac_t


def test_part_motion_maps_the_target_keypoint_to_the_source_keypoint():
    kp_s, jac_s, kp_t, jac_t = _random_motion(0)
    moved = motion.part_motions(kp_t, kp_s, jac_s, kp_t, jac_t)  # z = each target keypoint
    for k in range(3):
        np.testing.assert_allclose(moved[0, k, k], kp_s[0, k], atol=1e-6)


def test_dense_flow_jacobian_inside_part_k_is_the_part_affine_map():
    height, width, parts = 8, 6, 3
    seg = np.zeros((1, height, width, parts + 1), np.float32)
    seg[..., 0] = 1.0  # background
    seg[0, 1:5, 1:5] = np.eye(parts + 1)[2]  # part k=2 (keypoint index 1) in a 4 x 4 block
    seg = jnp.asarray(seg)
    kp_s, jac_s, kp_t, jac_t = _random_motion(1, parts=parts)

    def flow_at(z):  # z [2] -> F(z) [2], the segmentation read bilinearly at z
        seg_z = motion.grid_sample(seg, z.reshape(1, 1, 1, 2), padding="border").reshape(1, 1, -1)
        return motion.dense_flow(z.reshape(1, 1, 2), seg_z, kp_s, jac_s, kp_t, jac_t)[0, 0]

    grid = motion.make_grid(height, width)
    inside = (grid[2, 2] + grid[3, 3]) / 2 + 0.01  # between cell centres of the block
    expected = np.asarray(jac_s[0, 1] @ jnp.linalg.inv(jac_t[0, 1]))
    np.testing.assert_allclose(jax.jacfwd(flow_at)(inside), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        flow_at(inside), kp_s[0, 1] + expected @ (inside - kp_t[0, 1]), rtol=1e-4, atol=1e-5
    )
    # In the background the flow is the identity.
    outside = (grid[6, 4] + grid[7, 5]) / 2
    np.testing.assert_allclose(jax.jacfwd(flow_at)(outside), np.eye(2), atol=1e-5)


def test_warp_to_target_with_identity_motion_reproduces_the_source():
    rng = np.random.default_rng(0)
    seg = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 8, 4, 4)), jnp.float32), axis=-1)
    kp, jac, _, _ = _random_motion(2, batch=2)
    warped = motion.warp_to_target(seg, seg, kp, jac, kp, jac)
    np.testing.assert_allclose(warped, seg, atol=1e-5)
