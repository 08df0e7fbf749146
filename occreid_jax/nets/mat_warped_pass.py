"""MAT's training forward: the batch, then a randomly TPS-warped copy of it (FOMM's equivariance).

The MAT family's training forward (`occreid_jax/families.py`); a forward is
`(apply_fn, variables, batch, rng) -> (aux, updates)` (see `nets/forward.py`). This one
runs the model on the batch in train mode, and, when the model has keypoints, draws one random
warp per image (`motion.random_tps`: affine sigma 0.05, TPS sigma 0.005 on 5 x 5 control
points), warps the images backwards (`X'(p) = X(T(p))`, bilinear, zeros outside) and runs the
model again on them. Pose heatmaps in the batch (`model.keypoints="heatmaps"`) are warped with
the same warp, so a detector fed by them sees them move with the image.

Returned aux = the first pass's aux plus
  aux["warped"] = {"keypoints": [b, K, 2], "jacobians": [b, K, 2, 2]} of the second pass
    (and "encoder_keypoints", "encoder_jacobians" where the model gives them),
  aux["tps"] = the warp parameters (for T(p') and dT/dp in `losses/mat.py`),
  aux["images"] = the batch's images [b, H, W, 3] (for the image-reconstruction consistency).

Gradients flow through both passes (as FOMM). BatchNorm normalises each pass with its own
batch statistics; the running statistics kept are those of the first pass only, so they
describe unwarped images as seen at test time (our choice; FOMM's PyTorch updates them twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from occreid_jax import motion


def equivariance_forward(
    apply_fn: Callable,
    variables: dict,
    batch: dict,
    rng: jax.Array,
    *,
    sigma_affine: float = 0.05,
    sigma_tps: float = 0.005,
    points: int = 5,
) -> tuple[dict, Any]:
    """Two forward passes: the batch and its random TPS warp; see the module docstring.

    Args:
      apply_fn: the model's `apply`.
      variables: {"params", "batch_stats"}.
      batch: this device's batch: images [b, H, W, 3], optionally heatmaps [b, H/4, W/4, 17].
      rng: per-device, per-step key (dropout of both passes and the warps).
      sigma_affine, sigma_tps, points: the random warp (`motion.random_tps`).

    Returns:
      (aux, updates): aux as described above; the first pass's mutable collections.
    """
    rng_first, rng_second, rng_warp = jax.random.split(rng, 3)

    def run(images, heatmaps, dropout_rng):
        inputs = {} if heatmaps is None else {"heatmaps": heatmaps}
        (_, aux), updates = apply_fn(
            variables,
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
            **inputs,
        )
        return aux, updates

    heatmaps = batch.get("heatmaps")
    aux, updates = run(batch["images"], heatmaps, rng_first)
    aux = {**aux, "images": batch["images"]}
    if "keypoints" not in aux:  # no keypoint branch: nothing to be equivariant
        return aux, updates
    tps = motion.random_tps(rng_warp, batch["images"].shape[0], sigma_affine, sigma_tps, points)
    warped_images = motion.warp_images(batch["images"], tps)
    warped_heatmaps = None if heatmaps is None else motion.warp_images(heatmaps, tps)
    warped, _ = run(warped_images, warped_heatmaps, rng_second)
    names = ("keypoints", "jacobians", "encoder_keypoints", "encoder_jacobians")
    aux = {**aux, "warped": {n: warped[n] for n in names if n in warped}, "tps": tps}
    return aux, updates


def make_forward(loss_cfg) -> Callable:
    """`equivariance_forward` with the warp settings of `loss_cfg` (a `MatLossConfig`), as
    the family's `training_forward`."""

    def forward(apply_fn, variables, batch, rng):
        return equivariance_forward(
            apply_fn,
            variables,
            batch,
            rng,
            sigma_affine=loss_cfg.tps_sigma_affine,
            sigma_tps=loss_cfg.tps_sigma_tps,
            points=loss_cfg.tps_points,
        )

    return forward
