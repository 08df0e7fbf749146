"""Occluded-REID, Partial-REID and Partial-iLIDS: test-only sets (splits query and gallery).

The standard protocol evaluates them with a model trained on Market-1501. Query images are the
occluded or partial views, gallery images the whole bodies of the same people.

Camera ids (the ranking protocol drops gallery images with the query's person AND camera):
    bpbreid (default config): every query has camera 0, every gallery image camera 1, so no
        gallery image is ever removed. This is the convention of bpbreid (VlSomers/bpbreid) and
        the one our reported numbers use.
    fastreid (config, Occluded-REID and Partial-REID only): fast-reid reads the image index in
        the file name as a camera id, which removes a query's gallery image with the same index
        (a true match). Stored as index - 1 (`001_01.jpg` -> camera 0). Use it only to compare
        with papers that evaluated with fast-reid; numbers of the two conventions differ.
Partial-iLIDS names carry no image index (`001.jpg`), so it has the bpbreid config only.

Expected trees (pass the root or its parent as manual_dir)::

    Occluded_REID/                    Partial_REID/                  Partial_iLIDS/
      occluded_body_images/   query     partial_body_images/  query    partial_body_images/ query
        001/001_01.tif                    001_01.jpg                     001.jpg
      whole_body_images/      gallery   whole_body_images/    gallery  whole_body_images/ gallery
        001/001_01.tif                    001_01.jpg                     001.jpg

Person id: Occluded-REID and Partial-REID `int(name.split("_")[0])`; Partial-iLIDS `int(stem)`.
Images may also sit one subfolder deeper (as Occluded-REID's per-person folders). Occluded-REID's
.tif images are re-encoded as PNG at build time (`tf.io.decode_image` cannot read TIFF); the
filename feature keeps the .tif name.

Published sizes (images / ids): Occluded-REID 1,000 / 200 query and gallery; Partial-REID
300 / 60 each; Partial-iLIDS 119 / 119 each.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import tensorflow_datasets as tfds

from occreid_jax.data.reid_builders.base import (
    Published,
    Record,
    ReidBuilder,
    bad_name,
    list_images,
)

CONVENTIONS = {
    "bpbreid": "query camera 0, gallery camera 1 (bpbreid; no gallery image is dropped)",
    "fastreid": "camera = image index - 1 from the file name (fast-reid; can drop true matches)",
}


@dataclasses.dataclass(eq=False, kw_only=True)
class CameraConventionConfig(tfds.core.BuilderConfig):
    """Which camera-id convention the query and gallery use (see the module docstring)."""

    camera_convention: str = "bpbreid"


def _configs(*names: str) -> list[CameraConventionConfig]:
    return [
        CameraConventionConfig(name=n, description=CONVENTIONS[n], camera_convention=n)
        for n in names
    ]


class _TestOnly(ReidBuilder, skip_registration=True):
    """Query and gallery folders of one test-only set."""

    SPLITS = ("query", "gallery")
    QUERY_DIR: ClassVar[str] = "partial_body_images"
    GALLERY_DIR: ClassVar[str] = "whole_body_images"
    EXAMPLE: ClassVar[str] = "001_01.jpg"
    RULE: ClassVar[str] = "person id, '_', image index"
    BUILDER_CONFIGS: ClassVar[list[CameraConventionConfig]] = _configs("bpbreid", "fastreid")
    DEFAULT_BUILDER_CONFIG_NAME = "bpbreid"

    def layout(self) -> tuple[str, ...]:
        return (f"{self.QUERY_DIR}/", f"{self.GALLERY_DIR}/")

    def parse(self, name: str) -> tuple[int, int | None] | None:
        """(pid, image index or None) from a file name; None if it does not follow the rule."""
        fields = os.path.splitext(name)[0].split("_")
        if len(fields) < 2 or not fields[0].isdigit():
            return None
        return int(fields[0]), int(fields[1]) if fields[1].isdigit() else None

    def list_split(self, root: str, split: str) -> list[Record]:
        folder = self.QUERY_DIR if split == "query" else self.GALLERY_DIR
        fastreid = self.builder_config.camera_convention == "fastreid"
        records = []
        for path in list_images(root, folder, split, nested=True):
            parsed = self.parse(os.path.basename(path))
            if parsed is None or (fastreid and not parsed[1]):  # fast-reid needs an index >= 1
                raise bad_name(root, path, f"{self.TITLE} names like {self.EXAMPLE} ({self.RULE})")
            pid, index = parsed
            camid = index - 1 if fastreid else (0 if split == "query" else 1)
            records.append(Record(path, pid, camid))
        return records


class OccludedReid(_TestOnly):
    """Occluded-REID (Zhuo et al., ICME 2018): 200 people, 5 occluded + 5 whole-body images."""

    name = "occluded_reid"
    TITLE = "Occluded-REID"
    FOLDER_NAMES = ("Occluded_REID", "OccludedREID")
    QUERY_DIR = "occluded_body_images"
    EXAMPLE = "001_01.tif"
    ENCODING = "png"  # the .tif originals are re-encoded
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "query": Published(1000, 200),
        "gallery": Published(1000, 200),
    }


class PartialReid(_TestOnly):
    """Partial-REID (Zheng et al., ICCV 2015): 60 people, 5 partial + 5 whole-body images."""

    name = "partial_reid"
    TITLE = "Partial-REID"
    FOLDER_NAMES = ("Partial_REID", "PartialREID")
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "query": Published(300, 60),
        "gallery": Published(300, 60),
    }


class PartialIlids(_TestOnly):
    """Partial-iLIDS (He et al., CVPR 2018): 119 people, one partial + one whole-body image."""

    name = "partial_ilids"
    TITLE = "Partial-iLIDS"
    FOLDER_NAMES = ("Partial_iLIDS", "PartialiLIDS")
    EXAMPLE = "001.jpg"
    RULE = "the person id"
    BUILDER_CONFIGS: ClassVar[list[CameraConventionConfig]] = _configs("bpbreid")
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "query": Published(119, 119),
        "gallery": Published(119, 119),
    }

    def parse(self, name: str) -> tuple[int, int | None] | None:
        stem = os.path.splitext(name)[0]
        return (int(stem), None) if stem.isdigit() else None
