"""MAT's self-supervised terms: equivariance (L_eq) and feature consistency (L_fc).

The whole objective (Eq. 9, with the ID and triplet terms) is `objectives.mat_objective`.

* L_eq: FOMM's equivariance of keypoints and Jacobians under a random TPS warp (Eq. 14), L1:
  `mean |p_k - T(p'_k)| + mean |I - J_k^-1 dT(p'_k) J'_k|`, p', J' from the warped images
  (the second forward pass of `nets/mat_warped_pass.py`).
* L_fc: feature consistency (Eq. 8, 10-12): in every identity group of the P x K batch the
  first image is A; each other image X's maps are brought into A's frame by the flow
  `F_{A<-X}` that A's segmentation composes from the part motions (`motion.warp_to_target`)
  and compared by `KL(f_A || f_AX)` (Eq. 10), summed over X (Eq. 12), averaged over groups.
  The maps are image features as per-position distributions (`feature_distribution`), or
  the segmentation itself (the reading first built, which is zero for uniform maps). A map
  of h x w positions is one distribution over (position, channel) after dividing by h w, so
  the KL is the mean over positions of the per-position KL.
* Keypoint separation (not in the paper): Zhang et al.'s prior that keeps keypoints apart
  (`keypoint_separation_loss`).
* L_div (not in the paper): `log K + H_pixel - H_usage`, minus the mutual information between
  a pixel and its part (`part_diversity_loss`), a term that pushes the K+1 maps apart.

Pure functions of arrays; the motion geometry comes from `occreid_jax.motion`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from occreid_jax import motion

# Floor of the warped distribution inside the KL's logarithm (not in the paper).
KL_EPS = 1e-6


def equivariance_loss(
    keypoints: jax.Array,
    jacobians: jax.Array,
    warped_keypoints: jax.Array,
    warped_jacobians: jax.Array,
    tps: dict,
) -> tuple[jax.Array, jax.Array]:
    """FOMM's equivariance terms for images X and their warps X'(p) = X(T(p)).

    Args:
      keypoints: [B, K, 2] keypoints p of X.
      jacobians: [B, K, 2, 2] their Jacobians J.
      warped_keypoints: [B, K, 2] keypoints p' found in X'.
      warped_jacobians: [B, K, 2, 2] their Jacobians J'.
      tps: the warp parameters of `motion.random_tps` (one warp per image).

    Returns:
      (value term `mean |p - T(p')|`, Jacobian term `mean |I - J^-1 dT(p') J'|`), scalars.
    """
    value = jnp.mean(jnp.abs(keypoints - motion.tps_warp(tps, warped_keypoints)))
    grad_t = motion.tps_jacobian(tps, warped_keypoints)  # [B, K, 2, 2]
    transformed = jnp.einsum("bkij,bkjl->bkil", grad_t, warped_jacobians)
    normed = jnp.einsum("bkij,bkjl->bkil", motion.inverse_2x2(jacobians), transformed)
    jacobian = jnp.mean(jnp.abs(jnp.eye(2, dtype=normed.dtype) - normed))
    return value, jacobian


def kl_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Eq. 10's `sum_z p(z) log(p(z) / q(z))` for p, q taken as distributions over
    (position, channel): each map divided by its h*w positions, i.e. the mean over positions
    of the per-pixel KL over channels.

    Args:
      p, q: [B, h, w, C] distributions over C at each position; q is floored at 1e-6 and
        renormalised (a bilinear read can leave it slightly off the simplex).

    Returns:
      [B] float32.
    """
    q = jnp.maximum(q, KL_EPS)
    q = q / jnp.sum(q, axis=-1, keepdims=True)
    per_pixel = jnp.sum(p * (jnp.log(jnp.maximum(p, KL_EPS)) - jnp.log(q)), axis=-1)
    return jnp.mean(per_pixel, axis=(1, 2))


def feature_distribution(maps: jax.Array) -> jax.Array:
    """Image features as Eq. 10's distributions: a softmax over channels at every position.

    Args:
      maps: [B, h, w, C] feature maps.

    Returns:
      [B, h, w, C] float32, summing to 1 over C.
    """
    return jax.nn.softmax(maps.astype(jnp.float32), axis=-1)


CONSISTENCY_PAIRS = ("all", "first")


def pair_views(batch: int, group_size: int, pairs: str):
    """How L_fc pairs the images of an identity-major batch: `(anchors, sources, others)`.

    For x [B, ...] in groups of `group_size` adjacent images, `sources(x)` takes the compared
    images X of every group and `anchors(x)` its first image A once per X, both
    [B / group_size * others, ...]; `others` is 1 for pairs "first" (A with the second image)
    and group_size - 1 for "all".
    """
    if batch % group_size:
        raise ValueError(f"batch {batch} is not a multiple of the group size {group_size}")
    if pairs not in CONSISTENCY_PAIRS:
        raise ValueError(f"pairs must be one of {CONSISTENCY_PAIRS}, got {pairs!r}")
    others = 1 if pairs == "first" else group_size - 1

    def grouped(x):
        return x.reshape(batch // group_size, group_size, *x.shape[1:])

    def anchors(x):
        return jnp.repeat(grouped(x)[:, :1], others, axis=1).reshape(-1, *x.shape[1:])

    def sources(x):
        return grouped(x)[:, 1 : 1 + others].reshape(-1, *x.shape[1:])

    return anchors, sources, others


def consistency_loss(
    maps: jax.Array,
    segmentation: jax.Array,
    keypoints: jax.Array,
    jacobians: jax.Array,
    group_size: int,
    pairs: str = "all",
) -> jax.Array:
    """Eq. 12 over the identity groups of an identity-major batch.

    Every image X of a group other than its first, A, is brought into A's frame by the flow
    `F_{A<-X}` that A's segmentation composes from the part motions (`motion.warp_to_target`)
    and compared with A by `KL(f_A || f_AX)` (Eq. 10).

    Args:
      maps: [B, h', w', C] what is compared: per-position distributions (the features through
        `feature_distribution`, or the segmentation itself).
      segmentation: [B, h, w, K+1] part probabilities (channel 0 background), resized
        bilinearly to (h', w') when the maps are finer.
      keypoints: [B, K, 2]; jacobians: [B, K, 2, 2].
      group_size: images per identity, adjacent in the batch (the sampler's K); the first of
        each group is A, the others are B, C, D.
      pairs: "all" compares A with every other image of its group (Eq. 12); "first" with the
        second image only (not in the paper: a sampler that puts a frame of A's tracklet
        there makes it a same-camera pair).

    Returns:
      Scalar: mean over groups of `sum_X KL(f_A || F_{A<-X} x f_X)`.
    """
    batch = maps.shape[0]
    anchors, sources, others = pair_views(batch, group_size, pairs)
    if segmentation.shape[1:3] != maps.shape[1:3]:
        segmentation = jax.image.resize(
            segmentation, (batch, *maps.shape[1:3], segmentation.shape[-1]), "linear"
        )
    kp, jac = keypoints, jacobians
    warped = motion.warp_to_target(
        sources(maps), anchors(segmentation), sources(kp), sources(jac), anchors(kp), anchors(jac)
    )
    kl = kl_divergence(anchors(maps), warped).reshape(-1, others)
    return jnp.mean(jnp.sum(kl, axis=1))


# The L1 pyramid's scales (image sizes 1, 1/2, 1/4), as co-part segmentation's perceptual
# pyramid without its VGG (no pretrained network can be downloaded here; not in MAT's paper).
PYRAMID_SCALES = (1, 2, 4)


def average_pool(images: jax.Array, factor: int) -> jax.Array:
    """[B, H, W, C] -> [B, H / factor, W / factor, C] by averaging factor x factor blocks
    (H and W must be divisible by `factor`)."""
    if factor == 1:
        return images
    batch, height, width, channels = images.shape
    blocks = images.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return jnp.mean(blocks, axis=(2, 4))


def l1_pyramid(
    target: jax.Array, warped: jax.Array, weight: jax.Array, scales=PYRAMID_SCALES
) -> jax.Array:
    """Mean over `scales` of the weighted mean absolute difference of the images averaged to
    1/scale of their size (co-part segmentation's pyramid loss, on pixels).

    Args:
      target, warped: [B, H, W, C] (H, W divisible by every scale).
      weight: [B, H, W, 1] per-pixel weights (the visibility map, or ones), averaged to each
        scale like the images.

    Returns:
      [B] float32: sum over pixels and channels of weight * |target - warped|, divided by the
      number of pixels and channels, averaged over scales.
    """
    total = 0.0
    for factor in scales:
        t, w, v = (average_pool(x.astype(jnp.float32), factor) for x in (target, warped, weight))
        total = total + jnp.mean(v * jnp.abs(t - w), axis=(1, 2, 3))
    return total / len(scales)


def visibility_map(foreground_source: jax.Array, foreground_target: jax.Array) -> jax.Array:
    """Co-part segmentation's visibility map, entirely behind a stop-gradient:
    `1 - fg_source * (1 - fg_target)` at each pixel of the target frame, 0 where the source
    holds the person and the target does not (what the source shows there is not in the
    target: a disocclusion), 1 elsewhere. (Co-part segmentation stops only the target's
    gradient; here the map only weighs the loss, so a gradient through it would let the
    segmentation hide errors.)

    Args:
      foreground_source, foreground_target: [B, H, W, 1] foreground probability (1 minus the
        background channel) of the source and the target, at the same pixel positions.

    Returns:
      [B, H, W, 1] float32.
    """
    fg_s = foreground_source.astype(jnp.float32)
    fg_t = foreground_target.astype(jnp.float32)
    return jax.lax.stop_gradient(1.0 - fg_s * (1.0 - fg_t))


def warped_pyramid(
    target: jax.Array, source: jax.Array, flow: jax.Array, weight: jax.Array, scales=PYRAMID_SCALES
) -> jax.Array:
    """`l1_pyramid` with the warp inside the pyramid (not in any paper): at each scale the
    source averaged to 1/scale is read through the flow averaged to that size, so a coarse
    level's gradient reaches sampling positions `scale` pixels off, where the pyramid of the
    warped image only sees one pixel around each.

    Args:
      target, source: [B, H, W, C] (H, W divisible by every scale).
      flow: [B, H, W, 2] sampling coordinates in `source` ([-1, 1]).
      weight: [B, H, W, 1].

    Returns:
      [B] float32, as `l1_pyramid`.
    """
    total = 0.0
    for factor in scales:
        t, s, f, v = (
            average_pool(x.astype(jnp.float32), factor) for x in (target, source, flow, weight)
        )
        warped = motion.grid_sample(s, f, padding="border")
        total = total + jnp.mean(v * jnp.abs(t - warped), axis=(1, 2, 3))
    return total / len(scales)


def upsample_flow(flow: jax.Array, size: tuple[int, int]) -> jax.Array:
    """A flow [B, h, w, 2] (sampling coordinates) at a finer grid `size`: its displacement
    resized bilinearly, as co-part segmentation interpolates its deformation."""
    batch, height, width, _ = flow.shape
    if (height, width) == tuple(size):
        return flow
    shift = flow - motion.make_grid(height, width)
    fine = jax.image.resize(shift, (batch, *size, 2), "linear")
    return motion.make_grid(*size) + fine


def keypoint_masks(keypoints: jax.Array, size: tuple[int, int], sigma: float) -> jax.Array:
    """Soft part masks made of the keypoints alone: the softmax over K+1 channels of
    `motion.keypoint_prior_logits` (a Gaussian of `sigma` around keypoint k for part k, a
    constant for the background), [B, h, w, K+1] from keypoints [B, K, 2]. FOMM derives its
    motion masks from keypoint Gaussians too; a flow composed with them carries L_fc's
    gradient to the keypoints whatever the learned segmentation does (not in the paper)."""
    return jax.nn.softmax(motion.keypoint_prior_logits(keypoints, size, sigma), axis=-1)


def reconstruction_loss(
    images: jax.Array,
    segmentation: jax.Array,
    keypoints: jax.Array,
    jacobians: jax.Array,
    group_size: int,
    pairs: str = "all",
    visibility: bool = True,
    flow_segmentation: jax.Array | None = None,
) -> jax.Array:
    """The image-reconstruction consistency (not in MAT's paper, whose Eq. 8 compares
    features; co-part segmentation's signal): X's pixels read through the flow that A's
    segmentation composes (Eq. 5-7), upsampled to the image size, scored against A by the
    L1 pyramid, weighted by the visibility map.

    Args:
      images: [B, H, W, 3] the batch's input images, identity-major.
      segmentation: [B, h, w, K+1]; keypoints [B, K, 2]; jacobians [B, K, 2, 2].
      group_size, pairs: as `consistency_loss`.
      visibility: weigh by `visibility_map` (X's and A's foreground, 1 minus channel 0,
        resized to H x W), or weigh every pixel alike.
      flow_segmentation: [B, h', w', K+1] composes the flow in place of `segmentation`
        (e.g. `keypoint_masks`); None = `segmentation`.

    Returns:
      Scalar: mean over groups of the sum over X of the pyramid loss.
    """
    terms = reconstruction_terms(
        images, segmentation, keypoints, jacobians, group_size, pairs, visibility,
        flow_segmentation,
    )  # fmt: skip
    return jnp.mean(jnp.sum(terms, axis=1))


def reconstruction_terms(
    images: jax.Array,
    segmentation: jax.Array,
    keypoints: jax.Array,
    jacobians: jax.Array,
    group_size: int,
    pairs: str = "all",
    visibility: bool = True,
    flow_segmentation: jax.Array | None = None,
    scales=PYRAMID_SCALES,
    warp_levels: bool = False,
) -> jax.Array:
    """`reconstruction_loss` per pair: [groups, X per group] float32.

    `flow_segmentation` ([B, h', w', K+1], default `segmentation`) composes the flow in
    place of the segmentation; the visibility map still comes from `segmentation`, so flows
    can be compared under one weighting (the flow probe's reference flows). `scales`: the L1
    pyramid's; `warp_levels` warps each level of X's pyramid (`warped_pyramid`) rather than
    taking the pyramid of X warped at full size (`l1_pyramid`).
    """
    anchors, sources, others = pair_views(images.shape[0], group_size, pairs)
    size = images.shape[1:3]

    seg_a = anchors(segmentation if flow_segmentation is None else flow_segmentation)
    num, height, width, channels = seg_a.shape
    grid = jnp.broadcast_to(
        motion.make_grid(height, width).reshape(1, -1, 2), (num, height * width, 2)
    )
    flow = motion.dense_flow(
        grid,
        seg_a.reshape(num, -1, channels),
        sources(keypoints),
        sources(jacobians),
        anchors(keypoints),
        anchors(jacobians),
    ).reshape(num, height, width, 2)
    flow = upsample_flow(flow, size)
    if not warp_levels:  # else warped level by level below
        warped = motion.grid_sample(sources(images).astype(jnp.float32), flow, padding="border")
    if visibility:

        def foreground(seg):
            fg = 1.0 - seg[..., :1].astype(jnp.float32)
            return jax.image.resize(fg, (fg.shape[0], *size, 1), "linear")

        weight = visibility_map(
            foreground(sources(segmentation)), foreground(anchors(segmentation))
        )
    else:
        weight = jnp.ones((*flow.shape[:3], 1), jnp.float32)
    if warp_levels:
        terms = warped_pyramid(anchors(images), sources(images), flow, weight, scales)
    else:
        terms = l1_pyramid(anchors(images), warped, weight, scales)
    return terms.reshape(-1, others)


def part_diversity_loss(segmentation: jax.Array) -> jax.Array:
    """Not in the paper: `log K + H_pixel - H_usage` over the batch, in nats.

    H_pixel is the mean entropy of each pixel's K+1 part distribution (low when every pixel
    belongs to one part); H_usage the entropy of the K foreground parts' share of the whole
    batch's foreground mass (high when every part is used). The background's share is left
    free. Uniform maps give log K + log(K+1) - log K = log(K+1); the minimum, 0, is reached by
    hard assignments that use every part equally often. Batch-level usage (not per image)
    lets a part be absent from an occluded image, but also lets every pixel of an image take
    one part, a different one per image: a minimum without any spatial parts.

    Args:
      segmentation: [B, h, w, K+1] part distributions (channel 0 background).

    Returns:
      Scalar float32.
    """
    seg = segmentation.reshape(-1, segmentation.shape[-1]).astype(jnp.float32)
    pixel_entropy = -jnp.mean(jnp.sum(seg * jnp.log(jnp.maximum(seg, KL_EPS)), axis=-1))
    usage = jnp.sum(seg[:, 1:], axis=0)
    usage = usage / jnp.maximum(jnp.sum(usage), KL_EPS)
    usage_entropy = -jnp.sum(usage * jnp.log(jnp.maximum(usage, KL_EPS)))
    num_parts = seg.shape[-1] - 1
    return jnp.log(float(num_parts)) + pixel_entropy - usage_entropy


def part_presence_loss(segmentation: jax.Array, window: int = 3) -> jax.Array:
    """Not in the paper: PDiscoNet's presence term (van der Klis et al., ICCV 2023), which
    keeps every part from vanishing: `1 - mean_k max_{b, z} pool(S_k)(b, z)`, the maximum over
    the batch and positions of each foreground part's map averaged over `window` x `window`
    neighbourhoods (so a part must cover a small blob somewhere, not one pixel).

    Args:
      segmentation: [B, h, w, K+1] part probabilities, channel 0 background.
      window: the averaging window (odd).

    Returns:
      Scalar float32 in [0, 1]: 0 when every part fills a window somewhere in the batch.
    """
    parts = segmentation[..., 1:].astype(jnp.float32)
    pooled = jax.lax.reduce_window(
        parts, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1), "SAME"
    ) / (window * window)
    return 1.0 - jnp.mean(jnp.max(pooled, axis=(0, 1, 2)))


def keypoint_separation_loss(keypoints: jax.Array, sigma: float) -> jax.Array:
    """Not in the paper: the separation prior of Zhang et al. (CVPR 2018, Eq. 6) that keeps
    unsupervised landmarks apart, `exp(-||p_k - p_l||^2 / (2 sigma^2))` averaged over the
    K (K - 1) ordered pairs k != l of each image and over images.

    Args:
      keypoints: [B, K, 2] in [-1, 1].
      sigma: the distance scale, in the same units.

    Returns:
      Scalar float32 in [0, 1]: 1 when all keypoints coincide.
    """
    num = keypoints.shape[1]
    if num < 2:
        return jnp.zeros((), jnp.float32)
    diff = keypoints[:, :, None, :] - keypoints[:, None, :, :]
    close = jnp.exp(-jnp.sum(jnp.square(diff), axis=-1) / (2.0 * sigma**2))
    off_diagonal = 1.0 - jnp.eye(num, dtype=close.dtype)
    return jnp.sum(close * off_diagonal) / (keypoints.shape[0] * num * (num - 1))
