"""Synthetic occluders: walls, pillars, parked cars, boxes and other pedestrians.

Each family samples its look once and returns `draw(extent) -> Canvas`, where the hidden
fraction of the body grows with `extent` in [0, 1]; `sample_occluder` bisects on it to hide a
fraction of the body within the requested range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from occreid_jax.data.synthetic.drawing import (
    WALL_COLORS,
    Box,
    Canvas,
    pick,
    scale,
    smooth_noise,
)
from occreid_jax.data.synthetic.people import VIEWS, Pose, draw_person, sample_identity

OCCLUDER_KINDS = ("wall", "pillar", "car", "boxes", "person")
_CARS = ((230, 230, 230), (160, 164, 170), (30, 30, 34), (170, 30, 30), (40, 70, 150), (40, 80, 60))

Draw = Callable[[float], Canvas]


def _occ_wall(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """Wall, hedge or fence rising from the bottom; extent = height reached on the body."""
    kind = rng.choice(["brick", "hedge", "fence", "concrete"])
    base = pick(
        rng,
        {
            "brick": ((150, 70, 50),),
            "hedge": ((50, 100, 40), (70, 120, 50)),
            "fence": ((120, 84, 50), (200, 200, 196)),
            "concrete": ((150, 150, 146), (120, 116, 110)),
        }[kind],
        15,
    )
    bumps = rng.uniform(0.3, 1.0, 16)
    leaves = rng.uniform(0, 1, (60, 3))
    period = rng.uniform(0.04, 0.07) * pose.height

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        top = box[3] - e * (box[3] - box[1])
        r = 0.05 * pose.height
        if kind == "hedge":
            c.rect(-1, top + r * 0.6, w + 1, h + 1, base)
            for i, b in enumerate(bumps):
                c.ellipse((i * w / 15, top + r * (1 - b)), (r * 1.2, r), base)
            for x, y, v in leaves:
                c.ellipse(
                    (x * w, top + y * (h - top)),
                    (r * 0.5, r * 0.35),
                    scale(base, 0.6 + 0.7 * v),
                    False,
                )
        else:
            c.rect(-1, top, w + 1, h + 1, base)
            c.rect(-1, top, w + 1, top + 0.02 * pose.height, scale(base, 0.75))
            for k, y in enumerate(np.arange(top + period, h, period)):
                if kind != "fence":
                    c.line((0, y), (w, y), scale(base, 0.7), 1.5, False)
                if kind == "brick":
                    for x in np.arange((k % 2) * period, w, 2 * period):
                        c.line((x, y), (x, y + period), scale(base, 0.7), 1.5, False)
            if kind == "fence":
                for x in np.arange(0, w, period):
                    c.line((x, top), (x, h), scale(base, 0.65), 2, False)
        return c

    return draw


def _occ_pillar(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """Pillar, tree trunk or building corner entering from one side; extent = inner edge."""
    side = rng.choice([-1.0, 1.0])  # -1: from the left edge
    kind = rng.choice(["pillar", "tree", "corner"])
    base = pick(
        rng,
        {
            "pillar": ((170, 170, 164), (120, 120, 126)),
            "tree": ((96, 70, 48),),
            "corner": WALL_COLORS,
        }[kind],
        15,
    )
    slant = rng.uniform(-0.08, 0.08) * w if kind == "tree" else 0.0

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        x = box[0] + e * (box[2] - box[0]) if side < 0 else box[2] - e * (box[2] - box[0])
        far = -w if side < 0 else 2 * w
        c.poly(((far, -1), (x + slant, -1), (x - slant, h + 1), (far, h + 1)), base)
        for i in range(1, 8):  # bark lines / seams / bricks
            xi = x + side * i * 0.02 * pose.height
            c.line((xi + slant, 0), (xi - slant, h), scale(base, 0.55 + 0.1 * (i % 3)), 1.5, False)
        c.line((x + slant, 0), (x - slant, h), scale(base, 1.25), 2.5, False)  # lit edge
        return c

    return draw


def _occ_car(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """A parked car entering from one side, covering the lower body; extent = bumper position."""
    d = rng.choice([-1.0, 1.0])  # direction from the car towards the person (> 0: car on the left)
    color = pick(rng, _CARS, 10)
    ch = pose.height * rng.uniform(0.45, 0.65)
    ground = box[3] + rng.uniform(0.0, 0.04) * h
    body_top, roof = ground - 0.55 * ch, ground - ch
    wheel = 0.2 * ch

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        span = box[2] - box[0]
        x = box[0] + 1.1 * e * span if d > 0 else box[2] - 1.1 * e * span
        far = -2 * w if d > 0 else 3 * w
        c.poly(
            ((far, roof), (x - d * 0.55 * ch, roof), (x - d * 0.3 * ch, body_top), (far, body_top)),
            scale(color, 0.9),
        )
        c.poly(
            (
                (far, roof + 0.06 * ch),
                (x - d * 0.58 * ch, roof + 0.06 * ch),
                (x - d * 0.38 * ch, body_top - 0.02 * ch),
                (far, body_top - 0.02 * ch),
            ),
            (50, 62, 76),
            False,
        )
        c.poly(
            (
                (far, body_top),
                (x - d * 0.12 * ch, body_top),
                (x, body_top + 0.18 * ch),
                (x, ground - 0.12 * ch),
                (far, ground - 0.12 * ch),
            ),
            color,
        )
        c.line(
            (far, body_top + 0.06 * ch),
            (x - d * 0.1 * ch, body_top + 0.06 * ch),
            scale(color, 1.3),
            2,
            False,
        )
        c.line(
            (x - d * 0.6 * ch, body_top),
            (x - d * 0.6 * ch, ground - 0.15 * ch),
            scale(color, 0.6),
            1.5,
            False,
        )
        c.rect(x - d * 0.04 * ch, body_top + 0.2 * ch, x, body_top + 0.3 * ch, (240, 230, 160))
        wc = (x - d * 0.42 * ch, ground - wheel)
        c.ellipse(wc, (wheel, wheel), (20, 20, 20))
        c.ellipse(wc, (wheel * 0.5, wheel * 0.5), (150, 150, 150))
        return c

    return draw


def _occ_boxes(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """A stack of cardboard boxes or bins at the feet; extent = stack size."""
    side = rng.choice([-1.0, 0.0, 1.0])
    n = int(rng.integers(1, 4))
    sizes = rng.uniform(0.6, 1.0, (n, 2))
    colors = [
        pick(rng, ((176, 132, 84), (150, 110, 70), (60, 100, 70), (90, 90, 96)), 12)
        for _ in range(n)
    ]

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        cx = {-1.0: box[0], 0.0: (box[0] + box[2]) / 2, 1.0: box[2]}[side]
        y = box[3] + 0.01 * h
        for (sw, sh), col in zip(sizes, colors, strict=True):
            bw, bh = e * sw * 1.2 * (box[2] - box[0]), e * sh * 0.45 * pose.height
            c.rect(cx - bw / 2, y - bh, cx + bw / 2, y, col)
            c.rect(cx - bw / 2, y - bh, cx + bw / 2, y - bh + 0.12 * bh, scale(col, 1.2))
            c.line((cx, y - bh), (cx, y), scale(col, 1.25), max(1.5, 0.1 * bw), False)
            c.line((cx - bw / 2, y), (cx + bw / 2, y), scale(col, 0.6), 1.5, False)
            y -= bh
        return c

    return draw


def _occ_person(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """Another pedestrian closer to the camera, stepping in from one side; extent = position."""
    other = sample_identity(rng)
    side = rng.choice([-1.0, 1.0])
    start = (box[0] if side < 0 else box[2]) + side * 0.18 * pose.height
    end = (box[0] + box[2]) / 2
    height = pose.height * rng.uniform(1.0, 1.15)
    foot_y = pose.foot_y + rng.uniform(0.0, 0.06) * h
    view = VIEWS[rng.integers(4)]
    phase, stride = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.5)

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        p = Pose(view, phase, stride, 0.1, height, start + e * (end - start), foot_y)
        draw_person(c, other, p)
        return c

    return draw


_OCCLUDERS = {
    "wall": (_occ_wall, 0.22),
    "pillar": (_occ_pillar, 0.14),
    "car": (_occ_car, 0.16),
    "boxes": (_occ_boxes, 0.16),
    "person": (_occ_person, 0.32),
}


def _coverage(occ: np.ndarray, body: np.ndarray) -> float:
    return float(np.count_nonzero(occ[body])) / max(1, int(np.count_nonzero(body)))


def _fit_extent(
    draw: Draw, body: np.ndarray, target: float, iters: int = 10
) -> tuple[Canvas, float]:
    """Bisects the extent in [0, 1] (coverage grows with it) to hit the target coverage."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(iters):
        e = (lo + hi) / 2
        c = draw(e)
        f = _coverage(c.mask > 0, body)
        if best is None or abs(f - target) < abs(best[1] - target):
            best = (c, f)
        if abs(f - target) < 0.015:
            break
        lo, hi = (e, hi) if f < target else (lo, e)
    return best


def sample_occluder(
    rng: np.random.Generator, body: np.ndarray, pose: Pose, fraction_range: tuple[float, float]
) -> tuple[Canvas, float, str]:
    """Places an occluder hiding a fraction of the body mask `body` [H, W] bool within range.

    Returns:
        The occluder layer, the hidden fraction of body pixels, and the occluder kind.
    """
    lo, hi = fraction_range
    ys, xs = np.nonzero(body)
    box = (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
    names = list(_OCCLUDERS)
    probs = np.array([_OCCLUDERS[k][1] for k in names])
    for attempt in range(20):
        kind = names[rng.choice(len(names), p=probs / probs.sum())] if attempt < 12 else "wall"
        draw = _OCCLUDERS[kind][0](rng, *body.shape, box, pose)
        target = rng.uniform(lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo))
        c, f = _fit_extent(draw, body, target)
        if lo <= f <= hi:
            shade = smooth_noise(rng, *body.shape, 8, 0.1)
            c.rgb = np.clip(c.rgb * shade, 0, 255).astype(np.uint8)
            return c, f, kind
    raise RuntimeError(f"could not place an occluder covering {lo:.2f}-{hi:.2f} of the body")
