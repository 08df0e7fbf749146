"""Procedural pedestrians, cameras and occluders for the synthetic occluded Re-ID benchmark.

Everything is drawn with numpy and OpenCV on a canvas `SUPERSAMPLE` times the output size and
area-averaged down, which anti-aliases the edges. All randomness comes from the
`np.random.Generator` passed in, so a fixed seed gives identical bytes.

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
from collections.abc import Callable, Sequence

import cv2
import numpy as np

SUPERSAMPLE = 2
KEYPOINT_NAMES = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
VIEWS = ("front", "back", "left", "right")
OCCLUDER_KINDS = ("wall", "pillar", "car", "boxes", "person")

Color = tuple[int, int, int]  # RGB
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (canvas coords)

# Small palettes: many identities share each colour, so only the combination of cues identifies.
_UPPER = (
    (196, 38, 42), (38, 68, 170), (228, 228, 222), (34, 34, 38), (128, 128, 132), (46, 132, 70),
    (226, 196, 52), (28, 38, 86), (230, 118, 40), (118, 58, 146), (228, 140, 168), (128, 176, 226),
)  # fmt: skip
_LOWER = (
    (30, 30, 34), (48, 66, 108), (108, 136, 176), (110, 110, 114), (186, 166, 118), (104, 72, 44),
    (220, 220, 214), (86, 92, 52),
)  # fmt: skip
_PATTERN = ((240, 240, 240), (20, 20, 20), (200, 30, 30), (240, 200, 40), (40, 90, 200))
_HAIR = ((20, 18, 16), (62, 40, 24), (120, 80, 40), (206, 170, 100), (150, 150, 150))
_SKIN = ((250, 214, 180), (232, 186, 146), (198, 148, 106), (150, 102, 68), (96, 64, 42))
_SHOES = ((20, 20, 20), (236, 236, 236), (96, 60, 34), (120, 120, 126), (180, 40, 40))
_BAG = ((24, 24, 24), (70, 40, 28), (40, 60, 120), (150, 36, 36), (90, 96, 60))
_WALL = (
    (150, 80, 64), (170, 170, 166), (120, 150, 180), (200, 186, 160), (70, 70, 76),
    (150, 190, 220), (96, 110, 90), (190, 150, 110),
)  # fmt: skip
_FLOOR = ((90, 90, 94), (160, 158, 150), (190, 170, 140), (84, 120, 60), (120, 100, 84))
_CARS = ((230, 230, 230), (160, 164, 170), (30, 30, 34), (170, 30, 30), (40, 70, 150), (40, 80, 60))

_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel accurate drawing.
_FP = 1 << _SHIFT


# ----------------------------------------------------------------------------- drawing helpers


def _pt(p: Sequence[float]) -> tuple[int, int]:
    """Continuous coords -> OpenCV fixed-point coords (OpenCV puts pixel centres at integers)."""
    return round((p[0] - 0.5) * _FP), round((p[1] - 0.5) * _FP)


class Canvas:
    """An RGB layer `rgb` [H, W, 3] uint8 and its coverage `mask` [H, W] uint8 (0 or 255)."""

    def __init__(self, height: int, width: int):
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)

    def _both(self, fn: Callable, color: Color, solid: bool) -> None:
        fn(self.rgb, color)
        if solid:
            fn(self.mask, 255)

    def line(self, p, q, color: Color, thickness: float, solid: bool = True) -> None:
        t = max(1, round(thickness))
        self._both(
            lambda im, c: cv2.line(im, _pt(p), _pt(q), c, t, cv2.LINE_8, _SHIFT), color, solid
        )

    def poly(self, pts, color: Color, solid: bool = True) -> None:
        arr = np.array([_pt(p) for p in pts], np.int32)
        self._both(lambda im, c: cv2.fillPoly(im, [arr], c, cv2.LINE_8, _SHIFT), color, solid)

    def ellipse(self, c, axes, color: Color, solid: bool = True, angle: float = 0.0) -> None:
        ax = (max(1, round(axes[0] * _FP)), max(1, round(axes[1] * _FP)))
        self._both(
            lambda im, k: cv2.ellipse(im, _pt(c), ax, angle, 0, 360, k, -1, cv2.LINE_8, _SHIFT),
            color,
            solid,
        )

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color, solid=True) -> None:
        self.poly(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), color, solid)

    def paste_over(self, dst: np.ndarray) -> None:
        """Writes this layer over `dst` [H, W, 3] where the mask is set."""
        m = self.mask > 0
        dst[m] = self.rgb[m]


def _pick(rng: np.random.Generator, palette: Sequence[Color], jitter: float = 10.0) -> Color:
    c = np.asarray(palette[rng.integers(len(palette))], float) + rng.uniform(-jitter, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _scale(c: Color, f: float) -> Color:
    return tuple(int(min(255, v * f)) for v in c)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, amp: float) -> np.ndarray:
    """Low-frequency multiplicative noise [h, w, 1] float32 around 1."""
    small = rng.normal(0.0, amp, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return 1.0 + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


# ----------------------------------------------------------------------------- identities


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a person looks like; fixed per person id."""

    upper: Color
    lower: Color
    pattern: str  # "plain" | "stripes" | "checks" | "logo"
    pattern_color: Color
    sleeves: str  # "long" | "short"
    legwear: str  # "trousers" | "shorts" | "skirt"
    hair: Color
    long_hair: bool
    skin: Color
    shoes: Color
    bag: str  # "none" | "backpack" | "handbag"
    bag_color: Color
    bag_side: str  # "l" | "r": the hand that carries a handbag
    height: float  # relative stature, about [0.9, 1.05]
    width: float  # relative build, about [0.85, 1.15]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draws a person's attributes from the shared palettes."""
    upper = _pick(rng, _UPPER)
    pattern_color = _pick(rng, _PATTERN)
    while sum(abs(a - b) for a, b in zip(upper, pattern_color, strict=True)) < 120:
        pattern_color = _pick(rng, _PATTERN)
    return Identity(
        upper=upper,
        lower=_pick(rng, _LOWER),
        pattern=str(rng.choice(["plain", "stripes", "checks", "logo"], p=[0.4, 0.2, 0.15, 0.25])),
        pattern_color=pattern_color,
        sleeves=str(rng.choice(["long", "short"], p=[0.6, 0.4])),
        legwear=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        hair=_pick(rng, _HAIR, 6),
        long_hair=bool(rng.random() < 0.3),
        skin=_pick(rng, _SKIN, 6),
        shoes=_pick(rng, _SHOES, 6),
        bag=str(rng.choice(["none", "backpack", "handbag"], p=[0.45, 0.35, 0.2])),
        bag_color=_pick(rng, _BAG),
        bag_side=str(rng.choice(["l", "r"])),
        height=float(rng.uniform(0.9, 1.05)),
        width=float(rng.uniform(0.85, 1.15)),
    )


# ----------------------------------------------------------------------------- poses, skeleton


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where and how a person stands on the canvas (canvas pixel units)."""

    view: str  # "front" | "back" | "left" | "right" (side views: walking towards that side)
    phase: float  # walking phase, radians
    stride: float  # leg swing amplitude, radians
    arm_out: float  # lateral arm angle in front/back views, radians
    height: float  # head top to soles
    center_x: float
    foot_y: float  # soles

    @property
    def side(self) -> bool:
        return self.view in ("left", "right")

    @property
    def facing(self) -> float:
        """+1 walking towards the image right, -1 left (meaningful in side views)."""
        return 1.0 if self.view == "right" else -1.0


def _leg(hip, a: float, bend: float, lt: float, ls: float, lateral: float, side_view: bool):
    """Knee and ankle from the hip given the swing angle `a` and the knee bend (radians)."""
    if side_view:  # `lateral` is the facing direction
        knee = hip + lt * np.array([lateral * math.sin(a), math.cos(a)])
        ankle = knee + ls * np.array([lateral * math.sin(a - bend), math.cos(a - bend)])
    else:  # swing is in depth: only foreshortening; `lateral` spreads the legs
        knee = hip + lt * np.array([lateral * 0.03, math.cos(a)])
        ankle = knee + ls * np.array([lateral * 0.015, math.cos(a - bend)])
    return knee, ankle


def skeleton(identity: Identity, pose: Pose) -> dict[str, np.ndarray]:
    """Joint positions [2] (canvas coords) for the 17 COCO keypoints plus "head" and "neck"."""
    p, w = pose.height, identity.width
    side_view, d = pose.side, pose.facing
    s = 1.0 if pose.view == "front" else -1.0  # image-x sign of the person's left (front/back)
    j: dict[str, np.ndarray] = {}
    for k, sign, ph in (("l", s, pose.phase), ("r", -s, pose.phase + math.pi)):
        a = pose.stride * math.sin(ph)  # leg swing, > 0 forward
        bend = 0.12 + 0.9 * max(0.0, -math.sin(ph)) * pose.stride
        b = -0.8 * a  # the arm swings against the leg of the same side
        flex = 0.15 + 0.5 * max(0.0, b)
        if side_view:
            sh = np.array([0.0, 0.185 * p])
            hip = np.array([0.0, 0.525 * p])
            lat = d
            elbow = sh + 0.16 * p * np.array([d * math.sin(b), math.cos(b)])
            wrist = elbow + 0.145 * p * np.array([d * math.sin(b + flex), math.cos(b + flex)])
        else:
            sh = np.array([sign * 0.1 * p * w, 0.185 * p])
            hip = np.array([sign * 0.058 * p * w, 0.525 * p])
            lat = sign
            o = pose.arm_out
            elbow = sh + 0.16 * p * np.array([sign * math.sin(o), math.cos(o) * math.cos(b)])
            wrist = elbow + 0.145 * p * np.array(
                [sign * math.sin(0.6 * o), math.cos(0.6 * o) * math.cos(b + flex)]
            )
        knee, ankle = _leg(hip, a, bend, 0.23 * p, 0.225 * p, lat, side_view)
        j |= {f"{k}_shoulder": sh, f"{k}_hip": hip, f"{k}_elbow": elbow, f"{k}_wrist": wrist}
        j |= {f"{k}_knee": knee, f"{k}_ankle": ankle}
    hy, rx = 0.072 * p, 0.05 * p * (0.9 + 0.1 * w)
    if side_view:
        j["head"] = np.array([d * 0.012 * p, hy])
        j["nose"] = np.array([d * 1.0 * rx, hy + 0.012 * p])
        for k, e in (("l", 0.6), ("r", 0.66)):
            j[f"{k}_eye"] = np.array([d * e * rx, hy - 0.008 * p])
            j[f"{k}_ear"] = np.array([-d * 0.1 * rx, hy])
    else:
        j["head"] = np.array([0.0, hy])
        j["nose"] = np.array([0.0, hy + 0.014 * p])
        for k, sign in (("l", s), ("r", -s)):
            j[f"{k}_eye"] = np.array([sign * 0.38 * rx, hy - 0.008 * p])
            j[f"{k}_ear"] = np.array([sign * 0.98 * rx, hy])
    j["neck"] = np.array([0.0, 0.14 * p])
    ground = max(j["l_ankle"][1], j["r_ankle"][1]) + 0.022 * p
    offset = np.array([pose.center_x, pose.foot_y - ground])
    return {k: v + offset for k, v in j.items()}


# ----------------------------------------------------------------------------- drawing a person


def _limb(c: Canvas, pts, color: Color, width: float, outline: float = 0.7) -> None:
    """A chain of thick segments with a darker outline, so limbs stand out from the torso."""
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        c.line(a, b, _scale(color, outline), width + 2)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        c.line(a, b, color, width)


def _torso_outline(j: dict, idn: Identity, pose: Pose) -> list:
    p, w = pose.height, idn.width
    x0, top = j["neck"][0], j["neck"][1]
    hip_y = (j["l_hip"][1] + j["r_hip"][1]) / 2
    if pose.side:
        d = pose.facing
        rel = (
            (-0.03, 0.01),
            (0.03, 0.01),
            (0.065, 0.08),
            (0.06, 0.22),
            (0.055, None),
            (-0.06, None),
            (-0.062, 0.16),
            (-0.055, 0.06),
        )
        return [
            (x0 + d * dx * p * w, hip_y + 0.02 * p if dy is None else top + dy * p)
            for dx, dy in rel
        ]
    rel = (
        (-0.035, 0.012),
        (-0.118, 0.04),
        (-0.086, 0.24),
        (-0.09, None),
        (0.09, None),
        (0.086, 0.24),
        (0.118, 0.04),
        (0.035, 0.012),
    )
    return [(x0 + dx * p * w, hip_y + 0.025 * p if dy is None else top + dy * p) for dx, dy in rel]


def _apply_pattern(c: Canvas, torso: Canvas, j: dict, idn: Identity, pose: Pose) -> None:
    """Fills the torso: plain, stripes, checks, or a chest logo visible from the front only."""
    m = torso.mask > 0
    c.rgb[m] = idn.upper
    period = 0.05 * pose.height
    if idn.pattern in ("stripes", "checks"):
        yy, xx = np.nonzero(m)
        on = ((yy - j["neck"][1]) / period) % 1.0 < 0.45
        if idn.pattern == "checks":
            on ^= ((xx - j["neck"][0]) / period) % 1.0 < 0.5
        c.rgb[yy[on], xx[on]] = idn.pattern_color
    elif idn.pattern == "logo" and pose.view == "front":
        ctr = j["neck"] + np.array([0.0, 0.12 * pose.height])
        c.ellipse(ctr, (0.04 * pose.height * idn.width, 0.035 * pose.height), idn.pattern_color)


def _draw_legs(c: Canvas, j: dict, idn: Identity, pose: Pose, sides: str, dim: float) -> None:
    p, lw = pose.height, 0.068 * pose.height * idn.width
    side_view, d = pose.side, pose.facing
    for k in sides:
        hip, knee, ankle = j[f"{k}_hip"], j[f"{k}_knee"], j[f"{k}_ankle"]
        bare = idn.legwear != "trousers"
        _limb(c, (hip, knee, ankle), _scale(idn.skin if bare else idn.lower, dim), lw)
        if idn.legwear == "shorts":
            _limb(c, (hip, hip + 0.6 * (knee - hip)), _scale(idn.lower, dim), lw * 1.15)
        shoe = ankle + np.array([d * 0.02 * p if side_view else 0.0, 0.012 * p])
        axes = (0.045 * p, 0.017 * p) if side_view else (0.03 * p, 0.018 * p)
        c.ellipse(shoe, axes, _scale(idn.shoes, dim))


def _draw_pelvis(c: Canvas, j: dict, idn: Identity, pose: Pose) -> None:
    p, w = pose.height, idn.width
    hip_y = (j["l_hip"][1] + j["r_hip"][1]) / 2
    x = j["neck"][0]
    half = (0.055 if pose.side else 0.095) * p * w
    c.rect(x - half, hip_y - 0.03 * p, x + half, hip_y + 0.045 * p, idn.lower)
    if idn.legwear == "skirt":
        knee_y = (j["l_knee"][1] + j["r_knee"][1]) / 2
        c.poly(
            (
                (x - half, hip_y - 0.02 * p),
                (x + half, hip_y - 0.02 * p),
                (x + 1.45 * half, knee_y - 0.02 * p),
                (x - 1.45 * half, knee_y - 0.02 * p),
            ),
            idn.lower,
        )


def _draw_arm(c: Canvas, j: dict, idn: Identity, pose: Pose, k: str, dim: float) -> None:
    aw = 0.048 * pose.height * idn.width
    sh, el, wr = j[f"{k}_shoulder"], j[f"{k}_elbow"], j[f"{k}_wrist"]
    if idn.sleeves == "long":
        _limb(c, (sh, el, wr), _scale(idn.upper, dim), aw)
    else:
        _limb(c, (sh, el, wr), _scale(idn.skin, dim), aw * 0.9)
        _limb(c, (sh, sh + 0.55 * (el - sh)), _scale(idn.upper, dim), aw * 1.1)
    c.ellipse(wr + 0.3 * (wr - el), (aw * 0.5, aw * 0.55), _scale(idn.skin, dim))
    if idn.bag == "handbag" and idn.bag_side == k:
        p = pose.height
        top = wr + 0.3 * (wr - el)
        c.line(top, top + np.array([0.0, 0.03 * p]), (30, 30, 30), max(1.0, 0.008 * p))
        c.rect(
            top[0] - 0.04 * p,
            top[1] + 0.025 * p,
            top[0] + 0.04 * p,
            top[1] + 0.09 * p,
            _scale(idn.bag_color, dim),
        )


def _draw_head(c: Canvas, j: dict, idn: Identity, pose: Pose) -> None:
    p, head = pose.height, j["head"]
    rx, ry = 0.05 * p * (0.9 + 0.1 * idn.width), 0.068 * p
    c.line(j["neck"] + np.array([0, 0.01 * p]), head, idn.skin, 0.045 * p)
    c.ellipse(head, (rx * 1.06, ry * 1.02), idn.hair)
    if pose.view == "front":
        c.ellipse(head + np.array([0.0, 0.24 * ry]), (rx * 0.86, ry * 0.76), idn.skin)
        for k in ("l_eye", "r_eye"):
            c.ellipse(j[k], (0.008 * p, 0.006 * p), (30, 24, 20))
    elif pose.side:
        d = pose.facing
        c.ellipse(head + np.array([d * 0.3 * rx, 0.26 * ry]), (rx * 0.76, ry * 0.72), idn.skin)
        c.ellipse(j["l_eye"], (0.006 * p, 0.006 * p), (30, 24, 20))


def _draw_long_hair(c: Canvas, j: dict, idn: Identity, pose: Pose) -> None:
    """Hair down to the shoulders: behind the head (front, side) or over the back (back)."""
    p, head = pose.height, j["head"]
    x, half = head[0], 0.05 * p
    if pose.side:
        x, half = x - pose.facing * 0.035 * p, 0.035 * p
    c.rect(x - half, head[1], x + half, head[1] + 0.14 * p, idn.hair)
    c.ellipse((x, head[1] + 0.14 * p), (half, 0.02 * p), idn.hair)


def _draw_backpack(c: Canvas, j: dict, idn: Identity, pose: Pose) -> None:
    p, w, x, top = pose.height, idn.width, j["neck"][0], j["neck"][1]
    dark = _scale(idn.bag_color, 0.6)
    if pose.view == "front":  # straps only
        for sx in (-1, 1):
            a = (x + sx * 0.065 * p * w, top + 0.035 * p)
            c.line(a, (a[0] + sx * 0.005 * p, top + 0.2 * p), dark, 0.016 * p)
        return
    if pose.view == "back":
        c.rect(x - 0.075 * p * w, top + 0.06 * p, x + 0.075 * p * w, top + 0.3 * p, dark)
        c.rect(
            x - 0.068 * p * w, top + 0.065 * p, x + 0.068 * p * w, top + 0.293 * p, idn.bag_color
        )
        c.rect(x - 0.045 * p * w, top + 0.18 * p, x + 0.045 * p * w, top + 0.27 * p, dark)
        return
    d = pose.facing
    back = x - d * 0.06 * p * w
    c.rect(
        back - d * 0.065 * p, top + 0.06 * p, back + d * 0.005 * p, top + 0.29 * p, idn.bag_color
    )
    c.line((back, top + 0.04 * p), (x + d * 0.05 * p, top + 0.2 * p), dark, 0.014 * p)


def _shade(c: Canvas, center_x: float, height: float) -> None:
    """Rounded-body shading across the width plus a dark silhouette outline."""
    xs = (np.arange(c.rgb.shape[1]) + 0.5 - center_x) / (0.16 * height)
    prof = np.clip(1.1 - 0.35 * xs**2, 0.72, 1.1).astype(np.float32)
    rgb = c.rgb.astype(np.float32) * prof[None, :, None]
    edge = (c.mask > 0) & (cv2.erode(c.mask, np.ones((3, 3), np.uint8)) == 0)
    rgb[edge] *= 0.6
    c.rgb = np.clip(rgb, 0, 255).astype(np.uint8)


def draw_person(c: Canvas, identity: Identity, pose: Pose) -> dict[str, np.ndarray]:
    """Draws one pedestrian on `c` (painter's order by view); returns the skeleton joints."""
    j = skeleton(identity, pose)
    idn = identity
    near, far = ("r", "l") if pose.view == "right" else ("l", "r")
    torso = Canvas(*c.mask.shape)
    torso.poly(_torso_outline(j, idn, pose), (0, 0, 0))
    if idn.long_hair and pose.view == "front":
        _draw_long_hair(c, j, idn, pose)
    if pose.side:
        _draw_arm(c, j, idn, pose, far, 0.8)
        _draw_legs(c, j, idn, pose, far, 0.8)
        _draw_legs(c, j, idn, pose, near, 1.0)
    else:
        _draw_legs(c, j, idn, pose, "lr", 1.0)
    _draw_pelvis(c, j, idn, pose)
    c.mask |= torso.mask
    _apply_pattern(c, torso, j, idn, pose)
    if idn.bag == "backpack":
        _draw_backpack(c, j, idn, pose)
    if idn.long_hair and pose.side:
        _draw_long_hair(c, j, idn, pose)
    _draw_head(c, j, idn, pose)
    if idn.long_hair and pose.view == "back":
        _draw_long_hair(c, j, idn, pose)
    for k in (near,) if pose.side else ("l", "r"):
        _draw_arm(c, j, idn, pose, k, 1.0)
    _shade(c, pose.center_x, pose.height)
    return j


# ----------------------------------------------------------------------------- cameras


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
        cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), _pick(rng, _WALL, 30), -1)
    cols, rows = int(rng.integers(3, 8)), int(rng.integers(1, 4))
    win = _pick(rng, ((60, 80, 100), (40, 40, 48), (150, 170, 190)))
    ww, wh = w // (cols * 2), max(6, horizon // (rows * 2 + 1))
    for r in range(rows):
        for q in range(cols):
            x, y = int(q * 2 * ww + ww // 2), int((2 * r + 0.5) * wh)
            if y + wh < horizon - 4 and rng.random() < 0.8:
                cv2.rectangle(img, (x, y), (x + ww, y + wh), win, -1)
                cv2.rectangle(img, (x, y), (x + ww, y + wh), (40, 40, 40), 1)
    for _ in range(rng.integers(0, 4)):  # poles and pipes
        x = int(rng.integers(0, w))
        cv2.line(img, (x, 0), (x, horizon + 6), _pick(rng, ((40, 40, 44), (90, 90, 96))), 2)


def _draw_floor(img: np.ndarray, rng: np.random.Generator, horizon: int) -> None:
    h, w = img.shape[:2]
    line = _scale(_pick(rng, _FLOOR, 20), 0.8)
    vx = w * rng.uniform(0.3, 0.7)
    for k in range(-8, 9):  # lines converging to a vanishing point
        cv2.line(img, (int(vx), horizon), (int(vx + k * w * 0.25), h), line, 1)
    y, step = float(horizon), 3.0
    while y < h:  # horizontal lines, spaced by perspective
        cv2.line(img, (0, int(y)), (w, int(y)), line, 1)
        step *= 1.5
        y += step
    cv2.line(img, (0, horizon), (w, horizon), _scale(line, 0.7), 2)  # kerb / floor line


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured scene [height, 2 * width, 3] uint8: wall or facade above a floor line."""
    bw = 2 * width
    horizon = int(height * rng.uniform(0.45, 0.7))
    top, bottom = np.array(_pick(rng, _WALL, 20), float), np.array(_pick(rng, _WALL, 20), float)
    t = np.linspace(0.0, 1.0, horizon)[:, None, None]
    img = np.empty((height, bw, 3), np.float32)
    img[:horizon] = top * (1 - t) + (0.6 * top + 0.4 * bottom) * t
    floor = np.array(_pick(rng, _FLOOR, 20), float)
    t = np.linspace(0.0, 1.0, height - horizon)[:, None, None]
    img[horizon:] = floor * (0.8 + 0.3 * t)
    img = np.clip(img, 0, 255).astype(np.uint8)
    _draw_facade(img, rng, horizon)
    _draw_floor(img, rng, horizon)
    img = img.astype(np.float32) * _smooth_noise(rng, height, bw, 12, 0.08)
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


# ----------------------------------------------------------------------------- occluders
# Each family samples its look once and returns `draw(extent) -> Canvas`, where the hidden
# fraction of the body grows with `extent` in [0, 1]; `sample_occluder` bisects on it.

Draw = Callable[[float], Canvas]


def _occ_wall(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """Wall, hedge or fence rising from the bottom; extent = height reached on the body."""
    kind = rng.choice(["brick", "hedge", "fence", "concrete"])
    base = _pick(
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
                    _scale(base, 0.6 + 0.7 * v),
                    False,
                )
        else:
            c.rect(-1, top, w + 1, h + 1, base)
            c.rect(-1, top, w + 1, top + 0.02 * pose.height, _scale(base, 0.75))
            for k, y in enumerate(np.arange(top + period, h, period)):
                if kind != "fence":
                    c.line((0, y), (w, y), _scale(base, 0.7), 1.5, False)
                if kind == "brick":
                    for x in np.arange((k % 2) * period, w, 2 * period):
                        c.line((x, y), (x, y + period), _scale(base, 0.7), 1.5, False)
            if kind == "fence":
                for x in np.arange(0, w, period):
                    c.line((x, top), (x, h), _scale(base, 0.65), 2, False)
        return c

    return draw


def _occ_pillar(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """Pillar, tree trunk or building corner entering from one side; extent = inner edge."""
    side = rng.choice([-1.0, 1.0])  # -1: from the left edge
    kind = rng.choice(["pillar", "tree", "corner"])
    base = _pick(
        rng,
        {"pillar": ((170, 170, 164), (120, 120, 126)), "tree": ((96, 70, 48),), "corner": _WALL}[
            kind
        ],
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
            c.line((xi + slant, 0), (xi - slant, h), _scale(base, 0.55 + 0.1 * (i % 3)), 1.5, False)
        c.line((x + slant, 0), (x - slant, h), _scale(base, 1.25), 2.5, False)  # lit edge
        return c

    return draw


def _occ_car(rng: np.random.Generator, h: int, w: int, box: Box, pose: Pose) -> Draw:
    """A parked car entering from one side, covering the lower body; extent = bumper position."""
    d = rng.choice([-1.0, 1.0])  # direction from the car towards the person (> 0: car on the left)
    color = _pick(rng, _CARS, 10)
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
            _scale(color, 0.9),
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
            _scale(color, 1.3),
            2,
            False,
        )
        c.line(
            (x - d * 0.6 * ch, body_top),
            (x - d * 0.6 * ch, ground - 0.15 * ch),
            _scale(color, 0.6),
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
        _pick(rng, ((176, 132, 84), (150, 110, 70), (60, 100, 70), (90, 90, 96)), 12)
        for _ in range(n)
    ]

    def draw(e: float) -> Canvas:
        c = Canvas(h, w)
        cx = {-1.0: box[0], 0.0: (box[0] + box[2]) / 2, 1.0: box[2]}[side]
        y = box[3] + 0.01 * h
        for (sw, sh), col in zip(sizes, colors, strict=True):
            bw, bh = e * sw * 1.2 * (box[2] - box[0]), e * sh * 0.45 * pose.height
            c.rect(cx - bw / 2, y - bh, cx + bw / 2, y, col)
            c.rect(cx - bw / 2, y - bh, cx + bw / 2, y - bh + 0.12 * bh, _scale(col, 1.2))
            c.line((cx, y - bh), (cx, y), _scale(col, 1.25), max(1.5, 0.1 * bw), False)
            c.line((cx - bw / 2, y), (cx + bw / 2, y), _scale(col, 0.6), 1.5, False)
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
            shade = _smooth_noise(rng, *body.shape, 8, 0.1)
            c.rgb = np.clip(c.rgb * shade, 0, 255).astype(np.uint8)
            return c, f, kind
    raise RuntimeError(f"could not place an occluder covering {lo:.2f}-{hi:.2f} of the body")


# ----------------------------------------------------------------------------- full images


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
    scene = camera.background[:, x0 : x0 + cw].copy()
    person = Canvas(ch, cw)
    joints = draw_person(person, identity, pose)
    kp = np.stack([joints[k] for k in KEYPOINT_NAMES]) / SUPERSAMPLE
    occ, frac, kind = None, 0.0, ""
    if occluded:
        occ, frac, kind = sample_occluder(rng, person.mask > 0, pose, fraction_range)
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
