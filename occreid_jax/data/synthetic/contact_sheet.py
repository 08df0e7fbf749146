"""A contact sheet of the synthetic occluded Re-ID benchmark, to eyeball what it looks like.

    python -m occreid_jax.data.synthetic.contact_sheet --out docs/synthetic_contact_sheet.png

Builds the dataset if needed (`--config`, `--data_dir`), then draws: training identities across
cameras (keypoints on the first image of each row: green visible, red invisible), and occluded
queries next to their holistic twins (keypoints on the second row of pairs).
"""

from __future__ import annotations

import argparse
import collections

import cv2
import numpy as np

from occreid_jax.data.synthetic import builder as synthetic

_ZOOM = 2
_COLS = 8
# COCO limbs as keypoint index pairs.
_LIMBS = (
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 6),
    (11, 12),
    (5, 11),
    (6, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
)


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Zoomed copy of `image` [H, W, 3] with `keypoints` [17, 3] (visible green, hidden red)."""
    out = cv2.resize(image, None, fx=_ZOOM, fy=_ZOOM, interpolation=cv2.INTER_NEAREST)
    pts = [(round(x * _ZOOM), round(y * _ZOOM)) for x, y, _ in keypoints]
    for a, b in _LIMBS:
        cv2.line(out, pts[a], pts[b], (255, 255, 255), 1, cv2.LINE_AA)
    for (x, y), v in zip(pts, keypoints[:, 2], strict=True):
        cv2.circle(out, (x, y), 2, (0, 230, 0) if v > 0 else (255, 0, 0), -1, cv2.LINE_AA)
    return out


def _zoom(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, None, fx=_ZOOM, fy=_ZOOM, interpolation=cv2.INTER_NEAREST)


def _cell(ex: dict, keypoints: bool) -> np.ndarray:
    return draw_keypoints(ex["image"], ex["keypoints"]) if keypoints else _zoom(ex["image"])


def _row(cells: list[np.ndarray], cell_shape: tuple[int, ...]) -> np.ndarray:
    cells = cells + [np.zeros(cell_shape, np.uint8)] * (_COLS - len(cells))
    return np.concatenate(cells, axis=1)


def _title(text: str, width: int) -> np.ndarray:
    band = np.full((22, width, 3), 255, np.uint8)
    cv2.putText(band, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def _examples(b, split: str) -> list[dict]:
    return list(b.as_dataset(split=split).as_numpy_iterator())


def make_sheet(b, num_ids: int = 4, num_pairs: int = 8) -> np.ndarray:
    """Builds the sheet [rows, _COLS * W * _ZOOM, 3] uint8 RGB from a prepared builder."""
    h, w = b.builder_config.image_height, b.builder_config.image_width
    cell = (h * _ZOOM, w * _ZOOM, 3)
    width = _COLS * cell[1]
    by_pid = collections.defaultdict(list)
    for ex in _examples(b, "train"):
        by_pid[int(ex["pid"])].append(ex)
    rows = [_title("train identities across cameras, sorted by camera", width)]
    for pid in sorted(by_pid)[:num_ids]:
        exs = sorted(by_pid[pid], key=lambda e: (int(e["camid"]), e["filename"]))[:_COLS]
        rows.append(_row([_cell(e, keypoints=i == 0) for i, e in enumerate(exs)], cell))
    rows.append(_title("occluded query | holistic twin (keypoints on the second row)", width))
    query, holistic = _examples(b, "query"), _examples(b, "query_holistic")
    step = max(1, len(query) // num_pairs)
    pairs = list(zip(query[::step], holistic[::step], strict=True))[:num_pairs]
    half = _COLS // 2
    for r in range(0, len(pairs), half):
        shown = [e for pair in pairs[r : r + half] for e in pair]
        rows.append(_row([_cell(e, keypoints=r > 0) for e in shown], cell))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synthetic_contact_sheet.png")
    parser.add_argument("--config", default="default", help="builder config name")
    parser.add_argument("--data_dir", default=None, help="default: ~/tensorflow_datasets")
    args = parser.parse_args(argv)
    b = synthetic.build(args.config, args.data_dir)
    sheet = make_sheet(b)
    bgr = np.ascontiguousarray(sheet[..., ::-1])
    if not cv2.imwrite(args.out, bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"could not write {args.out}: does its folder exist?")
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
