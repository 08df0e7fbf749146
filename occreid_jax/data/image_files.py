"""Loose image files as a `Split`: find them in folders, read them, skip the unreadable ones.

Used by `occreid_jax.search` (your own query and gallery folders) and by the folder dataset
(`data/folder.py`). The images stay encoded in memory, as for every split; the evaluation
pipeline decodes and resizes them batch by batch. TIFF files are re-encoded once as PNG
(lossless), because TensorFlow's `decode_image` reads only JPEG, PNG, BMP and GIF.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

from occreid_jax.data.datasets import Split
from occreid_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Formats tf.io.decode_image reads as they are; any other readable image becomes PNG.
_TF_FORMATS = (".jpg", ".jpeg", ".png", ".bmp")


class UnreadableImageWarning(UserWarning):
    """An image file that does not decode; it is skipped."""


def is_image(path: str) -> bool:
    """True if `path` has an image extension (case-insensitive)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(paths: str | Sequence[str], what: str = "images") -> list[str]:
    """The image files named by `paths`: folders searched recursively (sorted), files kept.

    Args:
      paths: one path or several; each a folder or an image file.
      what: how the error messages call these images ("query images", ...).
    Raises:
      UserError: a path that does not exist, or no image at all.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if is_image(f)]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"{what}: {path} does not exist; pass an image folder or image files")
    if not found:
        kinds = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise UserError(f"no {what} ({kinds}) found in {', '.join(paths) or '(nothing given)'}")
    return found


def read_encoded(paths: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Reads image files, skipping (with an `UnreadableImageWarning`) those that do not decode.

    Returns:
      (encoded [N] object array of bytes that tf.io.decode_image reads, the N paths read, the
      paths skipped).
    """
    encoded, kept, skipped = [], [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            warnings.warn(f"skipping unreadable image {path}", UnreadableImageWarning, stacklevel=2)
            skipped.append(path)
            continue
        if not path.lower().endswith(_TF_FORMATS):
            data = cv2.imencode(".png", image)[1].tobytes()
        encoded.append(data)
        kept.append(path)
    array = np.empty(len(encoded), dtype=object)
    array[:] = encoded
    return array, kept, skipped


def decode_rgb(encoded: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Encoded image -> [H, W, 3] uint8 RGB, resized (bicubic) to `size` = (H, W) if given."""
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return image


def split_of(
    encoded: np.ndarray,
    paths: Sequence[str],
    pids: Sequence[int] | None = None,
    camids: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
) -> Split:
    """A `Split` of read images; ids default to 0, labels to -1 (not a training split)."""
    n = len(paths)
    return Split(
        images=encoded,
        pids=np.asarray(pids if pids is not None else np.zeros(n), np.int64),
        camids=np.asarray(camids if camids is not None else np.zeros(n), np.int64),
        labels=np.asarray(labels if labels is not None else np.full(n, -1), np.int64),
        filenames=np.asarray(list(paths), dtype=str),
    )
