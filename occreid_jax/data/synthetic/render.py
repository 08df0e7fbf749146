"""Procedural pedestrians, cameras and occluders for the synthetic occluded Re-ID benchmark.

This module composes the parts into full images: a person (`people.py`) seen by a camera
(`scenes.py`), optionally behind an occluder (`occluders.py`), all drawn with the primitives of
`drawing.py` on a canvas `SUPERSAMPLE` times the output size and area-averaged down. All
randomness comes from the `np.random.Generator` passed in, so a fixed seed gives identical
bytes.

Coordinate convention (keypoints and all geometry): continuous pixel coordinates. Pixel
`(row i, column j)` covers `x in [j, j + 1)`, `y in [i, i + 1)`; its centre is
`(j + 0.5, i + 0.5)`. A point `p` of the output image is `p * SUPERSAMPLE` on the canvas.
Keypoints follow the COCO order of `KEYPOINT_NAMES`; in a front view the person's left is on
the image right.

Entry points: `sample_identity`, `sample_camera`, `render_example`, `keypoint_heatmaps`.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from occreid_jax.data.synthetic.drawing import SUPERSAMPLE, Canvas
from occreid_jax.data.synthetic.occluders import sample_occluder
from occreid_jax.data.synthetic.people import (
    KEYPOINT_NAMES,
    Identity,
    draw_person,
    sample_identity,
)
from occreid_jax.data.synthetic.scenes import Camera, sample_camera, sample_pose

__all__ = [  # what the builder and the tests use; the parts live in the modules named above
    "KEYPOINT_NAMES",
    "SUPERSAMPLE",
    "Camera",
    "Identity",
    "Rendered",
    "keypoint_heatmaps",
    "render_example",
    "render_tracklet",
    "sample_camera",
    "sample_identity",
]


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered example (output resolution)."""

    image: np.ndarray  # [H, W, 3] uint8 RGB, occluder drawn when `occluded`
    keypoints: np.ndarray  # [17, 3] float32: x, y (continuous pixel coords), visibility 0/1
    holistic_image: np.ndarray  # [H, W, 3] uint8: the same scene without the occluder
    holistic_keypoints: np.ndarray  # [17, 3] float32: visibility ignoring the occluder
    occluded: bool
    occlusion_fraction: float  # fraction of body pixels hidden (0 when not occluded)
    occluder: str  # occluder kind, "" when not occluded


def _camera_response(img: np.ndarray, camera: Camera, gain: float) -> np.ndarray:
    """Applies gain, colour cast and gamma through per-channel lookup tables."""
    v = np.arange(256, dtype=np.float32) / 255.0
    out = np.empty_like(img)
    for ch in range(3):
        lut = 255.0 * np.clip(v * gain * camera.cast[ch], 0.0, 1.0) ** camera.gamma
        out[..., ch] = np.round(lut).astype(np.uint8)[img[..., ch]]
    return out


def _finish(
    canvas: np.ndarray, camera: Camera, gain: float, noise: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Canvas [h, w, 3] -> output image [H, W, 3] uint8 through the camera."""
    img = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
    img = _camera_response(img, camera, gain)
    if camera.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), camera.blur)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _visibility(kp: np.ndarray, height: int, width: int, hidden: np.ndarray | None) -> np.ndarray:
    """[17] float32: 1 where the keypoint is inside the image and not under the occluder."""
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    vis = inside.copy()
    if hidden is not None:
        cols = np.clip(np.floor(kp[:, 0]).astype(int), 0, width - 1)
        rows = np.clip(np.floor(kp[:, 1]).astype(int), 0, height - 1)
        vis &= ~hidden[rows, cols]
    return vis.astype(np.float32)


def render_example(
    rng: np.random.Generator,
    identity: Identity,
    camera: Camera,
    height: int,
    width: int,
    occluded: bool,
    fraction_range: tuple[float, float] = (0.2, 0.6),
) -> Rendered:
    """Renders one person seen by one camera, optionally behind an occluder.

    The occluded and holistic images share every random draw (pose, background crop, noise),
    so they differ only where the occluder is.
    """
    ch, cw = height * SUPERSAMPLE, width * SUPERSAMPLE
    pose = sample_pose(rng, camera, identity, ch, cw)
    x0 = int(rng.integers(0, camera.background.shape[1] - cw + 1))
    return _render_pose(rng, identity, camera, pose, x0, height, width, occluded, fraction_range)


def render_tracklet(
    rng: np.random.Generator,
    identity: Identity,
    camera: Camera,
    height: int,
    width: int,
    occluded: list[bool],
    fraction_range: tuple[float, float] = (0.2, 0.6),
    phase_step: tuple[float, float] = (0.3, 0.6),
    drift: float = 0.15,
    side_view: bool = False,
) -> list[Rendered]:
    """Consecutive frames of one walk seen by one fixed camera window (a tracklet).

    One pose and background window are drawn for the whole tracklet; from frame to frame the
    walking phase advances by a step drawn from `phase_step` (radians; a gait cycle is 2 pi),
    and in side views the person walks towards the side they face, 0.1 x their height per
    radian (two steps of about 0.3 x the height per cycle), with the whole walk centred on
    the drawn position and scaled down if needed to stay within +-`drift` x the image width.
    Background, view and camera gain stay; each frame has its own noise and occluder.

    Args:
      occluded: one flag per frame (the tracklet's length).
      side_view: turn a front view to the right and a back view to the left, so that every
        walk crosses the image and its legs and arms swing in the image plane (in front and
        back views they swing in depth). Draws nothing more from `rng`.

    Returns:
      One `Rendered` per frame, in walking order.
    """
    ch, cw = height * SUPERSAMPLE, width * SUPERSAMPLE
    pose = sample_pose(rng, camera, identity, ch, cw)
    if side_view and not pose.side:
        pose = dataclasses.replace(pose, view="right" if pose.view == "front" else "left")
    x0 = int(rng.integers(0, camera.background.shape[1] - cw + 1))
    steps = rng.uniform(*phase_step, max(len(occluded) - 1, 0))
    phases = np.concatenate([[0.0], np.cumsum(steps)])
    walk = (phases - phases.mean()) * 0.1 * pose.height * (pose.facing if pose.side else 0.0)
    span = np.abs(walk).max(initial=0.0)
    if span > drift * cw:
        walk *= drift * cw / span
    gain = camera.gain * rng.uniform(0.92, 1.08)
    frames = []
    for flag, phase, dx in zip(occluded, phases, walk, strict=True):
        frame_pose = dataclasses.replace(
            pose, phase=(pose.phase + phase) % (2 * math.pi), center_x=pose.center_x + dx
        )
        frames.append(
            _render_pose(
                rng, identity, camera, frame_pose, x0, height, width, flag, fraction_range, gain
            )
        )
    return frames


def _render_pose(
    rng: np.random.Generator,
    identity: Identity,
    camera: Camera,
    pose,
    x0: int,
    height: int,
    width: int,
    occluded: bool,
    fraction_range: tuple[float, float],
    gain: float | None = None,
) -> Rendered:
    """Renders `pose` over the background window at canvas column `x0`; `gain` None draws
    the image's own gain from `rng` (after the occluder)."""
    ch, cw = height * SUPERSAMPLE, width * SUPERSAMPLE
    scene = camera.background[:, x0 : x0 + cw].copy()
    person = Canvas(ch, cw)
    joints = draw_person(person, identity, pose)
    kp = np.stack([joints[k] for k in KEYPOINT_NAMES]) / SUPERSAMPLE
    occ, frac, kind = None, 0.0, ""
    if occluded:
        occ, frac, kind = sample_occluder(rng, person.mask > 0, pose, fraction_range)
    if gain is None:
        gain = camera.gain * rng.uniform(0.92, 1.08)
    noise = rng.normal(0.0, camera.noise, (height, width, 3)).astype(np.float32)
    person.paste_over(scene)
    holistic = _finish(scene, camera, gain, noise, (width, height))
    full_vis = _visibility(kp, height, width, None)
    image, vis = holistic, full_vis
    if occ is not None:
        occ.paste_over(scene)
        image = _finish(scene, camera, gain, noise, (width, height))
        cover = cv2.resize(occ.mask, (width, height), interpolation=cv2.INTER_AREA)
        vis = _visibility(kp, height, width, cover >= 128)
    return Rendered(
        image=image,
        keypoints=np.concatenate([kp, vis[:, None]], 1).astype(np.float32),
        holistic_image=holistic,
        holistic_keypoints=np.concatenate([kp, full_vis[:, None]], 1).astype(np.float32),
        occluded=occ is not None,
        occlusion_fraction=frac,
        occluder=kind,
    )


def keypoint_heatmaps(
    keypoints: np.ndarray, height: int, width: int, stride: int = 4, sigma: float = 1.0
) -> np.ndarray:
    """Gaussian keypoint heatmaps at 1/`stride` resolution.

    Args:
        keypoints: [K, 3] x, y (continuous image coords), visibility.
        height, width: image size; both divisible by `stride`.
        stride: heatmap stride; a keypoint maps to `x / stride, y / stride` in the same
            continuous convention (heatmap pixel centres at integer + 0.5).
        sigma: Gaussian sigma in heatmap pixels.

    Returns:
        [height // stride, width // stride, K] uint8: 255 * exp(-d^2 / (2 sigma^2)) around each
        visible keypoint (the continuous peak is 255 at the keypoint); zero for invisible ones.
    """
    hh, hw = height // stride, width // stride
    ys = np.arange(hh, dtype=np.float32)[:, None, None] + 0.5
    xs = np.arange(hw, dtype=np.float32)[None, :, None] + 0.5
    kx, ky = keypoints[:, 0] / stride, keypoints[:, 1] / stride
    g = np.exp(-((xs - kx) ** 2 + (ys - ky) ** 2) / (2 * sigma**2))
    g *= (keypoints[:, 2] > 0)[None, None, :]
    return np.round(255.0 * g).astype(np.uint8)
