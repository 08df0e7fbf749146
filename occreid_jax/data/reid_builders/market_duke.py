"""Market-1501, DukeMTMC-reID and Occluded-Duke: three folders of `PID_cCAM...jpg` images.

All three share one layout and one file-name rule (regex `([-\\d]+)_c(\\d)` on the file name:
person id, then the 1-based camera, stored 0-based). Person id -1 (Market's "junk" boxes) is
dropped from every split; id 0 (Market's distractors) stays in the gallery as a person nobody
queries. Splits: train = bounding_box_train (relabelled), query = query,
gallery = bounding_box_test.

Expected trees (pass the root or its parent as manual_dir)::

    Market-1501-v15.09.15/            DukeMTMC-reID/             Occluded_Duke/
      bounding_box_train/               bounding_box_train/        bounding_box_train/
        0002_c1s1_000451_03.jpg           0005_c2_f0046985.jpg       0005_c2_f0046985.jpg
      query/                            query/                     query/
        0001_c1s1_001051_00.jpg           0005_c5_f0051341.jpg       ...
      bounding_box_test/                bounding_box_test/         bounding_box_test/
        -1_c1s1_000401_03.jpg  (junk)     0001_c2_f0046182.jpg       ...
        0000_c1s1_000151_01.jpg (distractor)

Other files (gt_bbox/, Thumbs.db, readme.txt) are ignored.

Published sizes (images / ids, after dropping id -1):
    Market-1501: train 12,936 / 751; query 3,368 / 750; gallery 15,913 / 751 (the folder holds
        19,732 files: 3,819 junk; the 751 ids include distractor id 0). 6 cameras.
    DukeMTMC-reID: train 16,522 / 702; query 2,228 / 702; gallery 17,661 / 1,110. 8 cameras.
    Occluded-Duke (re-split of DukeMTMC-reID): train 15,618 / 702; query 2,210 / 519;
        gallery 17,661 / 1,110. 8 cameras.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

from occreid_jax.data.reid_builders.base import (
    Published,
    Record,
    ReidBuilder,
    bad_name,
    list_images,
)

_NAME = re.compile(r"(-1|\d+)_c(\d+)")
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


class _MarketLayout(ReidBuilder, skip_registration=True):
    """Shared by the three: bounding_box_train/, query/, bounding_box_test/ of PID_cCAM files."""

    NUM_CAMERAS: ClassVar[int] = 6
    EXAMPLE: ClassVar[str] = ""
    DROP_JUNK = True

    def layout(self) -> tuple[str, ...]:
        return tuple(f"{d}/" for d in SPLIT_DIRS.values())

    def list_split(self, root: str, split: str) -> list[Record]:
        cameras = f"c1..c{self.NUM_CAMERAS}"
        expected = f"{self.TITLE} names like {self.EXAMPLE} (person id, then camera {cameras})"
        records = []
        for path in list_images(root, SPLIT_DIRS[split], split):
            match = _NAME.match(os.path.basename(path))
            if not match:
                raise bad_name(root, path, expected)
            pid, camera = int(match[1]), int(match[2])
            if not 1 <= camera <= self.NUM_CAMERAS:
                raise bad_name(root, path, expected)
            records.append(Record(path, pid, camera - 1))
        return records


class Market1501(_MarketLayout):
    """Market-1501 (Zheng et al., ICCV 2015): 1,501 people, 6 cameras."""

    name = "market1501"
    TITLE = "Market-1501"
    FOLDER_NAMES = ("Market-1501-v15.09.15", "Market-1501", "market1501")
    NUM_CAMERAS = 6
    EXAMPLE = "0002_c1s1_000451_03.jpg"
    HOMEPAGE = "https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html"
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "train": Published(12936, 751),
        "query": Published(3368, 750),
        "gallery": Published(15913, 751),
    }


class DukeMTMC(_MarketLayout):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 1,404 people plus distractors, 8 cameras."""

    name = "dukemtmc"
    TITLE = "DukeMTMC-reID"
    FOLDER_NAMES = ("DukeMTMC-reID", "dukemtmc-reid")
    NUM_CAMERAS = 8
    EXAMPLE = "0005_c2_f0046985.jpg"
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "train": Published(16522, 702),
        "query": Published(2228, 702),
        "gallery": Published(17661, 1110),
    }


class OccludedDuke(_MarketLayout):
    """Occluded-Duke (Miao et al., ICCV 2019): DukeMTMC-reID re-split with occluded queries."""

    name = "occluded_duke"
    TITLE = "Occluded-Duke"
    FOLDER_NAMES = ("Occluded_Duke", "Occluded-DukeMTMC")
    NUM_CAMERAS = 8
    EXAMPLE = "0005_c2_f0046985.jpg"
    HOMEPAGE = "https://github.com/lightas/Occluded-DukeMTMC-Dataset"
    PUBLISHED: ClassVar[dict[str, Published]] = {
        "train": Published(15618, 702),
        "query": Published(2210, 519),
        "gallery": Published(17661, 1110),
    }
