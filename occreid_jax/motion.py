"""Motion geometry of MAT (FOMM / motion co-segmentation), as pure `jax.numpy` functions.

Shared by the model (`nets/mat.py`: soft-argmax keypoints, pooled Jacobians), the train step
(`nets/mat_warped_pass.py`: random thin-plate-spline warps of the batch) and the losses
(`losses/mat.py`: the warp and its Jacobian at keypoints, part motions, the dense flow), so
that `losses/` need not import `nets/`.

Coordinates: points are (x, y) in [-1, 1], x to the right, y down. Our choice (not FOMM's):
the *pixel edges* are at -1 and +1 (PyTorch's `align_corners=False`), so pixel i of n has its
centre at `(2 i + 1) / n - 1`. Then a stride-16 feature map and its input image share one
frame: feature cell j covers image pixels [16 j, 16 j + 16) and both map to the same [-1, 1]
interval. FOMM puts the first and last pixel *centres* at -1 and +1; at the feature
resolutions of Re-ID (16 x 8, or 8 x 4 on the synthetic benchmark) that would make keypoints
found on the feature map and the warp applied to the image disagree by up to 24% in scale.

Conventions used throughout (co-segmentation naming):
  * A warp of an image is *backward*: `X'(p) = X(T(p))`; a keypoint p' found in X' is the
    point T(p') of X.
  * A 2 x 2 Jacobian has rows = output coordinates, columns = input coordinates.
  * Motion from a *target* frame to a *source* frame: for a pixel z of the target, part k
    moves it to `T_k(z) = p_s^k + J_s^k (J_t^k)^-1 (z - p_t^k)` in the source (first-order
    expansion around the keypoints, through the abstract reference frame). The dense flow
    mixes the part motions with the target's segmentation, channel 0 (background) staying
    put; sampling the source at the flow brings source content into the target's frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# FOMM's TPS kernel U(r) = r^2 log(r + 1e-6): the offset keeps the log finite at r = 0.
TPS_LOG_EPS = 1e-6


# ----------------------------------------------------------------------------- grids


def make_grid(height: int, width: int) -> jax.Array:
    """Pixel-centre coordinates of an image of `height` x `width`, see the module docstring.

    Returns:
      [height, width, 2] float32, (x, y) in (-1, 1).
    """
    xs = (2.0 * jnp.arange(width, dtype=jnp.float32) + 1.0) / width - 1.0
    ys = (2.0 * jnp.arange(height, dtype=jnp.float32) + 1.0) / height - 1.0
    return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)


def to_pixels(points: jax.Array, height: int, width: int) -> jax.Array:
    """[-1, 1] points [..., 2] -> continuous pixel coordinates [..., 2] (pixel i spans [i, i+1))."""
    size = jnp.asarray([width, height], jnp.float32)
    return (points + 1.0) * size / 2.0


# ----------------------------------------------------------------------------- keypoints


def keypoint_prior_logits(keypoints: jax.Array, size: tuple[int, int], sigma: float) -> jax.Array:
    """Log-Gaussians around each keypoint as segmentation logits (not in the paper).

    Part k + 1 gets `-|z - p_k|^2 / (2 sigma^2)` at position z; the background a constant
    `-2`, the value two sigmas from a keypoint, so without other evidence a pixel within two
    sigmas of a keypoint belongs to that keypoint's part and the rest to the background.

    Args:
      keypoints: [B, K, 2] in [-1, 1].
      size: (h, w) of the segmentation.
      sigma: in [-1, 1] units.

    Returns:
      [B, h, w, K+1] float32.
    """
    grid = make_grid(*size)  # [h, w, 2]
    d2 = jnp.sum(jnp.square(grid[None, :, :, None] - keypoints[:, None, None]), axis=-1)
    parts = -d2 / (2.0 * sigma**2)
    background = jnp.full((*parts.shape[:3], 1), -2.0, parts.dtype)
    return jnp.concatenate([background, parts], axis=-1)


def soft_argmax(logits: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """FOMM's keypoints: the mean position under a spatial softmax of each channel.

    Args:
      logits: [B, h, w, K] keypoint scores.
      temperature: softmax temperature (0.1 in FOMM and MAT).

    Returns:
      (keypoints [B, K, 2] in [-1, 1], heatmaps [B, h, w, K] summing to 1 over h, w), float32.
    """
    batch, height, width, channels = logits.shape
    flat = logits.astype(jnp.float32).reshape(batch, height * width, channels)
    heat = jax.nn.softmax(flat / temperature, axis=1)
    grid = make_grid(height, width).reshape(height * width, 2)
    keypoints = jnp.einsum("bnk,nc->bkc", heat, grid)
    return keypoints, heat.reshape(batch, height, width, channels)


def expected_position(heatmaps: jax.Array) -> jax.Array:
    """Keypoints [B, K, 2] of heatmaps [B, h, w, K] that already sum to 1 over h, w."""
    batch, height, width, channels = heatmaps.shape
    grid = make_grid(height, width).reshape(height * width, 2)
    return jnp.einsum("bnk,nc->bkc", heatmaps.reshape(batch, -1, channels), grid)


# Not in any paper: a joint counts as visible where its heatmap peaks at this or more (a
# visible joint's sigma-1 Gaussian peaks at 0.78 or more on its grid; hidden joints are 0).
JOINT_VISIBLE_PEAK = 0.3


def heatmap_joints(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Joint positions of pose heatmaps: each channel's mean position, weighted by its values.

    Args:
      heatmaps: [B, h, w, J] Gaussians around the joints (0..1), zero for hidden joints.

    Returns:
      (joints [B, J, 2] in [-1, 1], visible [B, J] bool: peak >= `JOINT_VISIBLE_PEAK`).
    """
    maps = jnp.maximum(heatmaps.astype(jnp.float32), 0.0)
    mass = jnp.sum(maps, axis=(1, 2), keepdims=True)
    joints = expected_position(maps / jnp.maximum(mass, 1e-12))
    return joints, jnp.max(maps, axis=(1, 2)) >= JOINT_VISIBLE_PEAK


def pool_jacobians(heatmaps: jax.Array, jacobian_map: jax.Array) -> jax.Array:
    """FOMM's Jacobians: each keypoint's heatmap-weighted mean of a per-pixel 2 x 2 map.

    Args:
      heatmaps: [B, h, w, K], each channel summing to 1.
      jacobian_map: [B, h, w, 4 K], channels 4k..4k+3 = row-major entries of J_k at that pixel.

    Returns:
      [B, K, 2, 2] float32.
    """
    batch, height, width, channels = heatmaps.shape
    maps = jacobian_map.astype(jnp.float32).reshape(batch, height * width, channels, 4)
    pooled = jnp.einsum("bnk,bnkc->bkc", heatmaps.reshape(batch, -1, channels), maps)
    return pooled.reshape(batch, channels, 2, 2)


def inverse_2x2(m: jax.Array) -> jax.Array:
    """Inverse of [..., 2, 2] matrices by the adjugate (cheap and differentiable)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


# ----------------------------------------------------------------------------- TPS warps


def identity_tps(batch: int, points: int = 5) -> dict[str, jax.Array]:
    """Parameters of the identity warp, in the layout of `random_tps`."""
    return {
        "theta": jnp.broadcast_to(jnp.eye(2, 3, dtype=jnp.float32), (batch, 2, 3)),
        "control_points": make_control_points(points),
        "control_params": jnp.zeros((batch, points * points), jnp.float32),
    }


def make_control_points(points: int) -> jax.Array:
    """[points^2, 2] control points on a regular grid from -1 to +1 inclusive (as FOMM)."""
    axis = jnp.linspace(-1.0, 1.0, points, dtype=jnp.float32)
    return jnp.stack(jnp.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2)


def random_tps(
    rng: jax.Array, batch: int, sigma_affine: float, sigma_tps: float, points: int
) -> dict[str, jax.Array]:
    """FOMM's random transform: affine `[I | 0] + N(0, sigma_affine^2)` plus a TPS.

    Args:
      rng: PRNG key.
      batch: one independent warp per image.
      sigma_affine: std of the affine noise (0.05).
      sigma_tps: std of the TPS weights (0.005).
      points: control points per side (5: a 5 x 5 grid on [-1, 1]^2).

    Returns:
      {"theta": [B, 2, 3], "control_points": [P, 2], "control_params": [B, P]}, P = points^2.
    """
    rng_affine, rng_tps = jax.random.split(rng)
    noise = sigma_affine * jax.random.normal(rng_affine, (batch, 2, 3), jnp.float32)
    weights = sigma_tps * jax.random.normal(rng_tps, (batch, points * points), jnp.float32)
    return {
        "theta": jnp.eye(2, 3, dtype=jnp.float32) + noise,
        "control_points": make_control_points(points),
        "control_params": weights,
    }


def tps_point(
    theta: jax.Array, control_points: jax.Array, control_params: jax.Array, p: jax.Array
) -> jax.Array:
    """One point through one warp: `A p + b + sum_i w_i U(||p - c_i||_1) [1, 1]`.

    `U(r) = r^2 log(r + 1e-6)` with the L1 distance r (FOMM). Finite with finite first and
    second derivatives everywhere, control points included: U, U' vanish at r = 0 and U''
    is 2 log(1e-6) there; the derivative of |.| at 0 is taken as 0.

    Args:
      theta: [2, 3] affine part; control_points: [P, 2]; control_params: [P]; p: [2].
    Returns:
      [2] the warped point.
    """
    affine = theta[:, :2] @ p + theta[:, 2]
    r = jnp.sum(jnp.abs(p[None, :] - control_points), axis=-1)
    kernel = jnp.square(r) * jnp.log(r + TPS_LOG_EPS)
    return affine + jnp.sum(control_params * kernel)


def _per_point(fn, tps: dict, points: jax.Array) -> jax.Array:
    """Maps `fn(theta, control_points, control_params, p)` over [B, N, 2] points."""
    over_points = jax.vmap(fn, in_axes=(None, None, None, 0))
    over_batch = jax.vmap(over_points, in_axes=(0, None, 0, 0))
    return over_batch(
        tps["theta"], tps["control_points"], tps["control_params"], points.astype(jnp.float32)
    )


def tps_warp(tps: dict, points: jax.Array) -> jax.Array:
    """T(p) for points [B, N, 2] under each image's warp -> [B, N, 2]."""
    return _per_point(tps_point, tps, points)


def tps_jacobian(tps: dict, points: jax.Array) -> jax.Array:
    """dT/dp at points [B, N, 2] -> [B, N, 2, 2] (rows: output x, y), by forward-mode autodiff."""
    return _per_point(jax.jacfwd(tps_point, argnums=3), tps, points)


# ----------------------------------------------------------------------------- sampling


def grid_sample(images: jax.Array, coords: jax.Array, padding: str = "zeros") -> jax.Array:
    """Bilinear sampling at [-1, 1] coordinates (torch `grid_sample`, `align_corners=False`).

    Differentiable with respect to both the images and the coordinates.

    Args:
      images: [B, H, W, C].
      coords: [B, h, w, 2] (x, y) where to read each output pixel.
      padding: "zeros" (outside reads 0) or "border" (outside reads the nearest edge pixel).

    Returns:
      [B, h, w, C] in the dtype of `images`.
    """
    if padding not in ("zeros", "border"):
        raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
    batch, height, width, channels = images.shape
    out_shape = coords.shape[:-1]
    coords = coords.reshape(batch, -1, 2).astype(jnp.float32)
    # Continuous index of the pixel centre grid: centre of pixel i at index i.
    u = ((coords[..., 0] + 1.0) * width - 1.0) / 2.0
    v = ((coords[..., 1] + 1.0) * height - 1.0) / 2.0
    if padding == "border":
        u = jnp.clip(u, 0.0, width - 1.0)
        v = jnp.clip(v, 0.0, height - 1.0)
    u0, v0 = jnp.floor(u), jnp.floor(v)
    wu, wv = u - u0, v - v0
    flat = images.reshape(batch, height * width, channels)
    out = jnp.zeros((batch, u.shape[1], channels), jnp.float32)
    for du, dv, weight in (
        (0, 0, (1 - wu) * (1 - wv)),
        (1, 0, wu * (1 - wv)),
        (0, 1, (1 - wu) * wv),
        (1, 1, wu * wv),
    ):
        x, y = u0 + du, v0 + dv
        inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        xi = jnp.clip(x, 0, width - 1).astype(jnp.int32)
        yi = jnp.clip(y, 0, height - 1).astype(jnp.int32)
        values = jnp.take_along_axis(flat, (yi * width + xi)[..., None], axis=1)
        out = out + (weight * inside)[..., None] * values.astype(jnp.float32)
    return out.reshape(*out_shape, channels).astype(images.dtype)


def warp_images(images: jax.Array, tps: dict) -> jax.Array:
    """Backward warp `X'(p) = X(T(p))` of images [B, H, W, C] (zeros outside, as FOMM)."""
    batch, height, width, _ = images.shape
    grid = jnp.broadcast_to(make_grid(height, width).reshape(1, -1, 2), (batch, height * width, 2))
    coords = tps_warp(tps, grid).reshape(batch, height, width, 2)
    return grid_sample(images, coords, padding="zeros")


# ----------------------------------------------------------------------------- part motion


def part_motions(
    points: jax.Array,
    kp_source: jax.Array,
    jac_source: jax.Array,
    kp_target: jax.Array,
    jac_target: jax.Array,
) -> jax.Array:
    """Affine motion of each part: `T_k(z) = p_s^k + J_s^k (J_t^k)^-1 (z - p_t^k)`.

    Args:
      points: [B, N, 2] positions z in the target frame.
      kp_source, kp_target: [B, K, 2] keypoints of the source and the target image.
      jac_source, jac_target: [B, K, 2, 2] their Jacobians.

    Returns:
      [B, N, K, 2] where part k moves each target point in the source frame.
    """
    linear = jnp.einsum("bkij,bkjl->bkil", jac_source, inverse_2x2(jac_target))  # [B, K, 2, 2]
    offset = points[:, :, None, :] - kp_target[:, None, :, :]  # [B, N, K, 2]
    return kp_source[:, None] + jnp.einsum("bkij,bnkj->bnki", linear, offset)


def dense_flow(
    points: jax.Array,
    segmentation: jax.Array,
    kp_source: jax.Array,
    jac_source: jax.Array,
    kp_target: jax.Array,
    jac_target: jax.Array,
) -> jax.Array:
    """Co-segmentation's dense motion: `F(z) = S^0(z) z + sum_k S^k(z) T_k(z)`.

    Args:
      points: [B, N, 2] positions z in the target frame.
      segmentation: [B, N, K + 1] the target's part probabilities at z; channel 0 background
        (which does not move), channel k the part of keypoint k - 1.
      kp_source, jac_source, kp_target, jac_target: as in `part_motions`.

    Returns:
      [B, N, 2] source-frame positions of the target points.
    """
    motions = part_motions(points, kp_source, jac_source, kp_target, jac_target)
    moved = jnp.einsum("bnk,bnkc->bnc", segmentation[..., 1:], motions)
    return segmentation[..., :1] * points + moved


def warp_to_target(
    source_maps: jax.Array,
    target_segmentation: jax.Array,
    kp_source: jax.Array,
    jac_source: jax.Array,
    kp_target: jax.Array,
    jac_target: jax.Array,
) -> jax.Array:
    """Source maps brought into the target's frame by the dense flow (border padding).

    Args:
      source_maps: [B, h, w, C] per-pixel values of the source image (e.g. its part
        distribution).
      target_segmentation: [B, h, w, K + 1] the target's part probabilities.
      kp_source, jac_source, kp_target, jac_target: as in `part_motions`.

    Returns:
      [B, h, w, C]: `source_maps` read at `F(z)` for every target pixel z.
    """
    batch, height, width, parts = target_segmentation.shape
    grid = jnp.broadcast_to(make_grid(height, width).reshape(1, -1, 2), (batch, height * width, 2))
    flow = dense_flow(
        grid,
        target_segmentation.reshape(batch, -1, parts),
        kp_source,
        jac_source,
        kp_target,
        jac_target,
    )
    return grid_sample(source_maps, flow.reshape(batch, height, width, 2), padding="border")
