"""Synthetic pedestrians: identity attributes, walking poses, skeleton keypoints and drawing.

An `Identity` (clothes, hair, bag, build) is fixed per person id; a `Pose` says where and how
the person stands on one canvas. `skeleton` places the joints and `draw_person` paints the
person on a `Canvas` in painter's order. Coordinates follow the convention of `drawing.py`.
Keypoints follow the COCO order of `KEYPOINT_NAMES`; in a front view the person's left is on
the image right.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from occreid_jax.data.synthetic.drawing import Canvas, Color, pick, scale

KEYPOINT_NAMES = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
VIEWS = ("front", "back", "left", "right")

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
    upper = pick(rng, _UPPER)
    pattern_color = pick(rng, _PATTERN)
    while sum(abs(a - b) for a, b in zip(upper, pattern_color, strict=True)) < 120:
        pattern_color = pick(rng, _PATTERN)
    return Identity(
        upper=upper,
        lower=pick(rng, _LOWER),
        pattern=str(rng.choice(["plain", "stripes", "checks", "logo"], p=[0.4, 0.2, 0.15, 0.25])),
        pattern_color=pattern_color,
        sleeves=str(rng.choice(["long", "short"], p=[0.6, 0.4])),
        legwear=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        hair=pick(rng, _HAIR, 6),
        long_hair=bool(rng.random() < 0.3),
        skin=pick(rng, _SKIN, 6),
        shoes=pick(rng, _SHOES, 6),
        bag=str(rng.choice(["none", "backpack", "handbag"], p=[0.45, 0.35, 0.2])),
        bag_color=pick(rng, _BAG),
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
        c.line(a, b, scale(color, outline), width + 2)
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
        _limb(c, (hip, knee, ankle), scale(idn.skin if bare else idn.lower, dim), lw)
        if idn.legwear == "shorts":
            _limb(c, (hip, hip + 0.6 * (knee - hip)), scale(idn.lower, dim), lw * 1.15)
        shoe = ankle + np.array([d * 0.02 * p if side_view else 0.0, 0.012 * p])
        axes = (0.045 * p, 0.017 * p) if side_view else (0.03 * p, 0.018 * p)
        c.ellipse(shoe, axes, scale(idn.shoes, dim))


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
        _limb(c, (sh, el, wr), scale(idn.upper, dim), aw)
    else:
        _limb(c, (sh, el, wr), scale(idn.skin, dim), aw * 0.9)
        _limb(c, (sh, sh + 0.55 * (el - sh)), scale(idn.upper, dim), aw * 1.1)
    c.ellipse(wr + 0.3 * (wr - el), (aw * 0.5, aw * 0.55), scale(idn.skin, dim))
    if idn.bag == "handbag" and idn.bag_side == k:
        p = pose.height
        top = wr + 0.3 * (wr - el)
        c.line(top, top + np.array([0.0, 0.03 * p]), (30, 30, 30), max(1.0, 0.008 * p))
        c.rect(
            top[0] - 0.04 * p,
            top[1] + 0.025 * p,
            top[0] + 0.04 * p,
            top[1] + 0.09 * p,
            scale(idn.bag_color, dim),
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
    dark = scale(idn.bag_color, 0.6)
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
