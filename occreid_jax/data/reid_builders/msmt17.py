"""MSMT17 (V1, and V2 with blurred faces): splits given by list files, 15 cameras.

Each line of a list file is `RELATIVE/PATH.jpg PID`; the person id comes from the list, the
camera from the file name: `int(name.split("_")[2]) - 1` (0-based). Train ids and test ids are
numbered separately (both start at 0): a train person and a test person with the same number
are different people. The pid feature keeps the listed number.

Splits: train = list_train.txt (images under train/), query = list_query.txt and
gallery = list_gallery.txt (images under test/). list_val.txt holds 2,373 more images of the
1,041 training people; it joins the train split only in the `*_combine_all` configs (published
methods train without it).

Builder configs: v1 (default), v2, v1_combine_all, v2_combine_all. V1 and V2 are different
images, so they are different configs: a prepared V1 is never reused for V2.

Expected tree (pass the root or its parent as manual_dir)::

    MSMT17_V1/                              MSMT17_V2/
      train/0000/0000_000_01_0303morning_0015_0.jpg   mask_train_v2/0000/...
      test/0000/0000_000_01_0303morning_0016_0.jpg    mask_test_v2/0000/...
      list_train.txt   0000/0000_000_01_0303morning_0015_0.jpg 0
      list_val.txt     (same format)
      list_query.txt   0000/0000_000_01_0303morning_0016_0.jpg 0
      list_gallery.txt

Published sizes (images / ids): train 30,248 / 1,041 (32,621 / 1,041 with list_val);
query 11,659 / 3,060; gallery 82,161 / 3,060.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import tensorflow_datasets as tfds

from occreid_jax.data.reid_builders.base import Published, Record, ReidBuilder, bad_name
from occreid_jax.errors import UserError

NUM_CAMERAS = 15
_DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
_LISTS = {
    "train": ("list_train.txt",),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}


@dataclasses.dataclass(eq=False, kw_only=True)
class Msmt17Config(tfds.core.BuilderConfig):
    """Which release (V1 or V2) and whether list_val.txt joins the train split."""

    release: str = "V1"
    combine_all: bool = False

    @property
    def folder(self) -> str:
        return f"MSMT17_{self.release}"


def _config(release: str, combine_all: bool) -> Msmt17Config:
    name = release.lower() + ("_combine_all" if combine_all else "")
    val = "train + list_val" if combine_all else "train only (standard)"
    return Msmt17Config(
        name=name,
        description=f"MSMT17_{release}, {val}.",
        release=release,
        combine_all=combine_all,
    )


class Msmt17(ReidBuilder):
    """MSMT17 (Wei et al., CVPR 2018): 4,101 people, 15 cameras, splits from list files."""

    name = "msmt17"
    TITLE = "MSMT17"
    FOLDER_NAMES = ("MSMT17_V1", "MSMT17_V2")
    HOMEPAGE = "https://www.pkuvmc.com/dataset.html"
    BUILDER_CONFIGS: ClassVar[list[Msmt17Config]] = [
        _config("V1", False),
        _config("V2", False),
        _config("V1", True),
        _config("V2", True),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "v1"

    def folder_names(self) -> tuple[str, ...]:
        return (self.builder_config.folder,)

    def layout(self) -> tuple[str, ...]:
        train_dir, test_dir = _DIRS[self.builder_config.release]
        lists = ["list_train.txt", "list_query.txt", "list_gallery.txt"]
        if self.builder_config.combine_all:
            lists.insert(1, "list_val.txt")
        return (f"{train_dir}/", f"{test_dir}/", *lists)

    def layout_hint(self, folder: str) -> str:
        mine = self.builder_config.release
        for release, (train_dir, _) in _DIRS.items():
            if release == mine:
                continue
            for candidate in (folder, os.path.join(folder, f"MSMT17_{release}")):
                if os.path.isdir(os.path.join(candidate, train_dir)):
                    suffix = "_combine_all" if self.builder_config.combine_all else ""
                    return (
                        f"{candidate} is MSMT17_{release}: use builder config "
                        f"{release.lower()}{suffix}"
                    )
        return ""

    def published(self) -> dict[str, Published]:
        train = 32621 if self.builder_config.combine_all else 30248
        return {
            "train": Published(train, 1041),
            "query": Published(11659, 3060),
            "gallery": Published(82161, 3060),
        }

    def list_split(self, root: str, split: str) -> list[Record]:
        train_dir, test_dir = _DIRS[self.builder_config.release]
        lists = _LISTS[split]
        if split == "train" and self.builder_config.combine_all:
            lists = (*lists, "list_val.txt")
        image_dir = train_dir if split == "train" else test_dir
        return [r for name in lists for r in _read_list(root, name, image_dir)]


def _read_list(root: str, list_name: str, image_dir: str) -> list[Record]:
    """Records of one list file; UserError naming the file and line for a bad entry."""
    list_path = os.path.join(root, list_name)
    with open(list_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise UserError(
                f"{list_path} line {number}: expected 'RELATIVE/PATH.jpg PID', got {line.strip()!r}"
            )
        path = f"{image_dir}/{fields[0]}"
        parts = os.path.basename(fields[0]).split("_")
        camera = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
        if not 1 <= camera <= NUM_CAMERAS:
            raise bad_name(
                root,
                path,
                "MSMT17 names like 0000_000_01_0303morning_0015_0.jpg "
                f"(third field: camera 01..{NUM_CAMERAS})",
            )
        if not os.path.isfile(os.path.join(root, path)):
            raise UserError(
                f"{list_path} line {number} names {os.path.join(root, path)}, which does not "
                f"exist: check that {image_dir}/ is complete"
            )
        records.append(Record(path, int(fields[1]), camera - 1))
    if not records:
        raise UserError(f"{list_path} lists no images: expected lines 'RELATIVE/PATH.jpg PID'")
    return records
