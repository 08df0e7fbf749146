"""Synthetic cameras: scene backgrounds, colour response, framing and viewpoint habits.

A `Camera` is drawn once per camera id: a textured background (wall or facade above a floor)
that images crop a window of, an illumination (gain, colour cast, gamma), blur and noise, a
typical person scale, and a preference over the views of `people.VIEWS`. `sample_pose` frames
a walking person as that camera sees them.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from occreid_jax.data.synthetic.drawing import (
    SUPERSAMPLE,
    WALL_COLORS,
    pick,
    scale,
    smooth_noise,
)
from occreid_jax.data.synthetic.people import VIEWS, Identity, Pose

_FLOOR = ((90, 90, 94), (160, 158, 150), (190, 170, 140), (84, 120, 60), (120, 100, 84))


@dataclasses.dataclass(frozen=True)
class Camera:
    """A fixed camera: its scene, colour response, framing and viewpoint habits."""

    background: np.ndarray  # [canvas_h, 2 * canvas_w, 3] uint8; images crop a window of it
    gain: float
    cast: tuple[float, float, float]  # per-channel RGB multipliers
    gamma: float
    scale: float  # mean person height / image height
    view_probs: tuple[float, float, float, float]  # over VIEWS
    blur: float  # Gaussian sigma in output pixels (0: none)
    noise: float  # Gaussian noise sigma in grey levels


def _draw_facade(img: np.ndarray, rng: np.random.Generator, horizon: int) -> None:
    w = img.shape[1]
    for _ in range(rng.integers(2, 6)):  # blocks: doors, shop signs, panels
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, max(1, horizon - 10)))
        bw, bh = int(rng.integers(10, w // 3)), int(rng.integers(8, max(9, horizon // 2)))
        cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), pick(rng, WALL_COLORS, 30), -1)
    cols, rows = int(rng.integers(3, 8)), int(rng.integers(1, 4))
    win = pick(rng, ((60, 80, 100), (40, 40, 48), (150, 170, 190)))
    ww, wh = w // (cols * 2), max(6, horizon // (rows * 2 + 1))
    for r in range(rows):
        for q in range(cols):
            x, y = int(q * 2 * ww + ww // 2), int((2 * r + 0.5) * wh)
            if y + wh < horizon - 4 and rng.random() < 0.8:
                cv2.rectangle(img, (x, y), (x + ww, y + wh), win, -1)
                cv2.rectangle(img, (x, y), (x + ww, y + wh), (40, 40, 40), 1)
    for _ in range(rng.integers(0, 4)):  # poles and pipes
        x = int(rng.integers(0, w))
        cv2.line(img, (x, 0), (x, horizon + 6), pick(rng, ((40, 40, 44), (90, 90, 96))), 2)


def _draw_floor(img: np.ndarray, rng: np.random.Generator, horizon: int) -> None:
    h, w = img.shape[:2]
    line = scale(pick(rng, _FLOOR, 20), 0.8)
    vx = w * rng.uniform(0.3, 0.7)
    for k in range(-8, 9):  # lines converging to a vanishing point
        cv2.line(img, (int(vx), horizon), (int(vx + k * w * 0.25), h), line, 1)
    y, step = float(horizon), 3.0
    while y < h:  # horizontal lines, spaced by perspective
        cv2.line(img, (0, int(y)), (w, int(y)), line, 1)
        step *= 1.5
        y += step
    cv2.line(img, (0, horizon), (w, horizon), scale(line, 0.7), 2)  # kerb / floor line


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured scene [height, 2 * width, 3] uint8: wall or facade above a floor line."""
    bw = 2 * width
    horizon = int(height * rng.uniform(0.45, 0.7))
    top, bottom = (
        np.array(pick(rng, WALL_COLORS, 20), float),
        np.array(pick(rng, WALL_COLORS, 20), float),
    )
    t = np.linspace(0.0, 1.0, horizon)[:, None, None]
    img = np.empty((height, bw, 3), np.float32)
    img[:horizon] = top * (1 - t) + (0.6 * top + 0.4 * bottom) * t
    floor = np.array(pick(rng, _FLOOR, 20), float)
    t = np.linspace(0.0, 1.0, height - horizon)[:, None, None]
    img[horizon:] = floor * (0.8 + 0.3 * t)
    img = np.clip(img, 0, 255).astype(np.uint8)
    _draw_facade(img, rng, horizon)
    _draw_floor(img, rng, horizon)
    img = img.astype(np.float32) * smooth_noise(rng, height, bw, 12, 0.08)
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)  # slightly out of focus
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_camera(rng: np.random.Generator, height: int, width: int) -> Camera:
    """Draws one camera for output images of `height` x `width` pixels."""
    probs = rng.dirichlet(np.ones(4)) * 0.6 + 0.1
    return Camera(
        background=make_background(rng, height * SUPERSAMPLE, width * SUPERSAMPLE),
        gain=float(rng.uniform(0.75, 1.25)),
        cast=tuple(float(v) for v in rng.uniform(0.82, 1.18, 3)),
        gamma=float(rng.uniform(0.8, 1.25)),
        scale=float(rng.uniform(0.8, 0.9)),
        view_probs=tuple(float(v) for v in probs / probs.sum()),
        blur=float(rng.choice([0.0, rng.uniform(0.4, 0.8)])),
        noise=float(rng.uniform(1.0, 5.0)),
    )


def sample_pose(
    rng: np.random.Generator, camera: Camera, identity: Identity, h: int, w: int
) -> Pose:
    """A walking pose framed as a pedestrian detection on an `h` x `w` canvas."""
    foot_y = h * rng.uniform(0.965, 0.99)
    height = h * float(np.clip(camera.scale * identity.height * rng.uniform(0.96, 1.04), 0.7, 0.94))
    return Pose(
        view=VIEWS[rng.choice(4, p=camera.view_probs)],
        phase=float(rng.uniform(0, 2 * math.pi)),
        stride=float(rng.uniform(0.2, 0.5)),
        arm_out=float(rng.uniform(0.04, 0.16)),
        height=min(height, foot_y - 0.02 * h),
        center_x=w * (0.5 + rng.uniform(-0.07, 0.07)),
        foot_y=foot_y,
    )
