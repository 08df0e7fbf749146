"""Drawing primitives shared by the synthetic people, scenes and occluders.

Everything is drawn with numpy and OpenCV on a canvas `SUPERSAMPLE` times the output size and
area-averaged down, which anti-aliases the edges. All randomness comes from the
`np.random.Generator` passed in, so a fixed seed gives identical bytes.

Coordinate convention (keypoints and all geometry): continuous pixel coordinates. Pixel
`(row i, column j)` covers `x in [j, j + 1)`, `y in [i, i + 1)`; its centre is
`(j + 0.5, i + 0.5)`. A point `p` of the output image is `p * SUPERSAMPLE` on the canvas.

This module holds the `Canvas` layer (sub-pixel accurate lines, polygons, ellipses and their
coverage mask), the colour helpers `pick`, `scale` and `smooth_noise`, and the wall palette.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

SUPERSAMPLE = 2

Color = tuple[int, int, int]  # RGB
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (canvas coords)

# Wall colours, shared by the scene backgrounds and the building-corner occluder.
WALL_COLORS = (
    (150, 80, 64), (170, 170, 166), (120, 150, 180), (200, 186, 160), (70, 70, 76),
    (150, 190, 220), (96, 110, 90), (190, 150, 110),
)  # fmt: skip

_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel accurate drawing.
_FP = 1 << _SHIFT


def _pt(p: Sequence[float]) -> tuple[int, int]:
    """Continuous coords -> OpenCV fixed-point coords (OpenCV puts pixel centres at integers)."""
    return round((p[0] - 0.5) * _FP), round((p[1] - 0.5) * _FP)


class Canvas:
    """An RGB layer `rgb` [H, W, 3] uint8 and its coverage `mask` [H, W] uint8 (0 or 255).

    Shapes take continuous canvas coordinates. A `solid` shape also sets the mask, so it counts
    as coverage (of a body, of an occluder); a non-solid one only paints detail (seams, leaves),
    which shows where the layer is covered anyway.
    """

    def __init__(self, height: int, width: int):
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)

    def _both(self, fn: Callable, color: Color, solid: bool) -> None:
        fn(self.rgb, color)
        if solid:
            fn(self.mask, 255)

    def line(self, p, q, color: Color, thickness: float, solid: bool = True) -> None:
        """Segment `p`-`q` [2], `thickness` canvas pixels wide (at least 1)."""
        t = max(1, round(thickness))
        self._both(
            lambda im, c: cv2.line(im, _pt(p), _pt(q), c, t, cv2.LINE_8, _SHIFT), color, solid
        )

    def poly(self, pts, color: Color, solid: bool = True) -> None:
        """Filled polygon through `pts` [N, 2]."""
        arr = np.array([_pt(p) for p in pts], np.int32)
        self._both(lambda im, c: cv2.fillPoly(im, [arr], c, cv2.LINE_8, _SHIFT), color, solid)

    def ellipse(self, c, axes, color: Color, solid: bool = True, angle: float = 0.0) -> None:
        """Filled ellipse centred at `c` with semi-axes `axes` (x, y), rotated `angle` degrees."""
        ax = (max(1, round(axes[0] * _FP)), max(1, round(axes[1] * _FP)))
        self._both(
            lambda im, k: cv2.ellipse(im, _pt(c), ax, angle, 0, 360, k, -1, cv2.LINE_8, _SHIFT),
            color,
            solid,
        )

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color, solid=True) -> None:
        """Filled axis-aligned rectangle from (x0, y0) to (x1, y1)."""
        self.poly(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), color, solid)

    def paste_over(self, dst: np.ndarray) -> None:
        """Writes this layer over `dst` [H, W, 3] where the mask is set."""
        m = self.mask > 0
        dst[m] = self.rgb[m]


def pick(rng: np.random.Generator, palette: Sequence[Color], jitter: float = 10.0) -> Color:
    """A random colour of `palette`, jittered by up to `jitter` grey levels per channel."""
    c = np.asarray(palette[rng.integers(len(palette))], float) + rng.uniform(-jitter, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def scale(c: Color, f: float) -> Color:
    """`c` brightened (`f` > 1) or darkened (`f` < 1), saturating at 255."""
    return tuple(int(min(255, v * f)) for v in c)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, amp: float) -> np.ndarray:
    """Low-frequency multiplicative noise [h, w, 1] float32 around 1."""
    small = rng.normal(0.0, amp, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return 1.0 + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
