"""Pictures of ranked lists: a query, then its top-k matches, and an index.html of them all.

Shared by `python -m occreid_jax.search` (your own folders: no identities, plain borders) and
`--mode=visrank` (an evaluation split: a green border for the same identity, red for another,
grey for junk under the protocol, i.e. same identity and camera).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence

import cv2
import numpy as np

from occreid_jax.bundles import atomic

GREEN = (0, 170, 0)
RED = (215, 25, 25)
GREY = (150, 150, 150)
PLAIN = (255, 255, 255)
QUERY = (30, 90, 220)
BORDER = 4  # pixels
GAP = 12  # pixels between the query and its matches
MIN_HEIGHT = 128  # small inputs (the tiny synthetic model's 64x32) are enlarged to this
CAPTION_LINE = 14  # pixels per caption line


def _scale(image: np.ndarray) -> np.ndarray:
    factor = max(1, -(-MIN_HEIGHT // image.shape[0]))
    if factor == 1:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def _panel(image: np.ndarray, colour, lines: Sequence[str], num_lines: int) -> np.ndarray:
    """One image with a coloured border and caption lines below it, on white."""
    image = _scale(image)
    h, w = image.shape[:2]
    framed = np.full((h + 2 * BORDER, w + 2 * BORDER, 3), colour, np.uint8)
    framed[BORDER : BORDER + h, BORDER : BORDER + w] = image
    caption = np.full((num_lines * CAPTION_LINE + 4, framed.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            caption, line, (2, (i + 1) * CAPTION_LINE), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
            (0, 0, 0), 1, cv2.LINE_AA,
        )  # fmt: skip
    return np.concatenate([framed, caption], axis=0)


def ranked_strip(
    query: np.ndarray,
    matches: Sequence[np.ndarray],
    captions: Sequence[Sequence[str]],
    borders: Sequence[tuple[int, int, int]] | None = None,
    query_caption: Sequence[str] = ("query",),
) -> np.ndarray:
    """[H', W', 3] uint8 RGB: the query (blue border), a gap, then the matches in rank order.

    Args:
      query: [H, W, 3] uint8 RGB.
      matches: k images [H, W, 3] uint8 RGB (the same size as the query).
      captions: k lists of text lines under each match (e.g. rank and distance).
      borders: k RGB border colours (default white).
      query_caption: lines under the query.
    """
    borders = borders or [PLAIN] * len(matches)
    num_lines = max([len(query_caption), *(len(c) for c in captions)])
    panels = [_panel(query, QUERY, query_caption, num_lines)]
    panels.append(np.full((panels[0].shape[0], GAP, 3), 255, np.uint8))
    for image, lines, colour in zip(matches, captions, borders, strict=True):
        panels.append(_panel(image, colour, lines, num_lines))
        panels.append(np.full((panels[0].shape[0], 2, 3), 255, np.uint8))
    return np.concatenate(panels, axis=1)


def write_png(path: str, image: np.ndarray) -> str:
    """Writes an RGB uint8 image as PNG (whole: `atomic.write_image`) and returns the path."""
    return atomic.write_image(path, np.ascontiguousarray(image))


def picture_name(index: int, path: str) -> str:
    """A file name for query `index` from its path: `00003_0005_c2.png`."""
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    return f"{index:05d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}.png"


def write_index(out_dir: str, title: str, entries: Sequence[tuple[str, str]], note: str = ""):
    """Writes `out_dir/index.html`: one heading line and picture per entry (picture, caption).

    Returns:
      The page's path.
    """
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:16px}div.q{margin:0 0 18px}"
        "p{margin:2px 0;font-size:14px}img{image-rendering:pixelated}</style>",
        "</head><body>",
        f"<h2>{html.escape(title)}</h2>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    for picture, caption in entries:
        parts.append(
            f'<div class="q"><p>{html.escape(caption)}</p>'
            f'<img src="{html.escape(picture)}" alt="{html.escape(caption)}"></div>'
        )
    parts.append("</body></html>")
    return atomic.write_file(os.path.join(out_dir, "index.html"), "\n".join(parts) + "\n")
