"""Shared base of the real Re-ID benchmark builders (tfds), read from the user's own copy.

A dataset module subclasses `ReidBuilder` and says which folders make up its layout and how
one split is listed (`list_split`: file names -> `Record`s). This base does the rest:

1. Finds the dataset root in `manual_dir`: the folder itself, or its child with a canonical
   name (e.g. `Market-1501-v15.09.15`).
2. Lists every split in sorted-path order, drops junk ids (-1) where the dataset has them, and
   checks every file before anything is written: a missing, zero-byte or unreadable image is a
   `UserError` naming the file.
3. Relabels the train split 0..N-1 in sorted pid order (label -1 elsewhere).
4. Compares images and ids per split with the published numbers: a `SizeMismatchWarning`
   printing both, or a `UserError` with `strict=True`.
5. Writes examples in that order (`disable_shuffling`), so two builds give identical datasets.
   JPEG and PNG bytes are stored as they are; other formats (Occluded-REID's .tif, BMP, GIF)
   are decoded with OpenCV and re-encoded as PNG. An image whose bytes do not decode
   (`tf.io.decode_image`, as the input pipeline reads them) is skipped with a
   `CorruptImageWarning`, counted in `info.metadata["skipped_images"]` and reported again at
   the end of the build.

Features of every builder:
    image: [H, W, 3] uint8 once decoded (stored encoded: JPEG or PNG).
    pid: int64 person id as written in the dataset. camid: int64, 0-based.
    label: int64, train ids relabelled 0..N-1 in sorted-pid order; -1 in query and gallery.
    filename: source path relative to the dataset root, e.g. "query/0001_c1s1_001051_00.jpg"
        (the original name, also for images re-encoded as PNG).

`info.metadata` (saved with the dataset) holds "summary" (images, ids, cams per split),
"skipped_images", "junk_dropped" (per split) and "size_mismatches".
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from occreid_jax.errors import UserError

# Never probe the public TFDS bucket: these datasets exist only on the user's disk.
tfds.core.utils.gcs_utils._is_gcs_disabled = True

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif")
_STORED_AS_IS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG magic bytes
MANUAL_DIR_HINT = (
    "pass --manual-dir DIR to `python -m occreid_jax.data.prepare`, "
    "or --config.data.manual_dir=DIR (--config.data.test_manual_dir=DIR for a test-only set) "
    "for training"
)


class SizeMismatchWarning(UserWarning):
    """A split's image or id count differs from the published one."""


class CorruptImageWarning(UserWarning):
    """An image's bytes do not decode; it was skipped."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a split, before its bytes are read."""

    path: str  # relative to the dataset root, "/"-separated
    pid: int
    camid: int  # 0-based


@dataclasses.dataclass(frozen=True)
class Scan:
    """What `ReidBuilder.scan` found in the user's copy (nothing read but file names and sizes)."""

    root: str
    splits: dict[str, list[Record]]  # sorted by path, junk dropped
    junk_dropped: dict[str, int]
    size_mismatches: list[str]


@dataclasses.dataclass(frozen=True)
class Published:
    """Published size of one split (after junk ids are dropped)."""

    images: int
    ids: int | None = None


def list_images(root: str, subdir: str, split: str, nested: bool = False) -> list[str]:
    """Sorted root-relative paths of the images in `root/subdir` (and its subfolders if nested).

    Raises:
      UserError: when the folder holds no image at all.
    """
    found = []
    with os.scandir(os.path.join(root, subdir)) as entries:
        for entry in entries:
            if nested and entry.is_dir():
                with os.scandir(entry.path) as inner:
                    found += [f"{subdir}/{entry.name}/{e.name}" for e in inner if _is_image(e)]
            elif _is_image(entry):
                found.append(f"{subdir}/{entry.name}")
    if not found:
        where = f"{subdir}/ or its subfolders" if nested else f"{subdir}/"
        raise UserError(
            f"{os.path.join(root, subdir)} holds no images: expected the {split} split's "
            f"{'/'.join(IMAGE_SUFFIXES[:3])} files in {where}"
        )
    return sorted(found)


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)


def bad_name(root: str, path: str, expected: str) -> UserError:
    """The one-line error for a file name that does not follow the dataset's rule."""
    return UserError(f"cannot parse {os.path.join(root, path)}: expected {expected}")


def checked_image(data: bytes) -> tuple[bytes | None, str]:
    """(bytes to store, "") for a decodable image, (None, reason) for a corrupt one.

    JPEG and PNG are kept byte for byte once `tf.io.decode_image` accepts them; anything else
    is decoded with OpenCV and re-encoded as PNG.
    """
    import tensorflow as tf

    if data.startswith(_STORED_AS_IS):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as error:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", str(getattr(error, "message", error)))
            return None, " ".join(reason.split())  # TF's words only, on one line
        return data, ""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "not a JPEG/PNG, and OpenCV cannot decode it"
    ok, png = cv2.imencode(".png", image)
    return (png.tobytes(), "") if ok else (None, "OpenCV cannot re-encode it as PNG")


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the real benchmark builders; see the module docstring.

    Subclasses set `name`, TITLE, FOLDER_NAMES, PUBLISHED (and SPLITS, DROP_JUNK, ENCODING where
    they differ) and implement `layout` and `list_split`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    TITLE: ClassVar[str] = ""
    FOLDER_NAMES: ClassVar[tuple[str, ...]] = ()  # canonical names of the dataset root
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "query", "gallery")
    PUBLISHED: ClassVar[dict[str, Published]] = {}
    DROP_JUNK: ClassVar[bool] = False  # drop pid -1 everywhere
    ENCODING: ClassVar[str] = "jpeg"  # how the images are usually stored (PNG if re-encoded)
    HOMEPAGE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""

    def __init__(self, *, strict: bool = False, **kwargs):
        """Args: strict: fail (UserError) instead of warning when split sizes differ."""
        self.strict = strict
        self._scanned: tuple[str, Scan] | None = None
        tfds.core.utils.gcs_utils._is_gcs_disabled = True  # again: someone may have flipped it
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's module; tfds 4.9.10 finds it with `importlib_resources`, not installed."""
        return epath.Path(sys.modules[cls.__module__].__file__)

    @tfds.core.utils.classproperty
    @classmethod
    def MANUAL_DOWNLOAD_INSTRUCTIONS(cls) -> str:  # tfds needs it to hand out manual_dir
        folder = cls.FOLDER_NAMES[0] if cls.FOLDER_NAMES else cls.name
        return f"Put your copy of {cls.TITLE} ({folder}/) in manual_dir."

    # ---- what a dataset module provides ----

    def folder_names(self) -> tuple[str, ...]:
        """Canonical names of the dataset root (a config may pick its own)."""
        return self.FOLDER_NAMES

    def layout(self) -> tuple[str, ...]:
        """Entries the dataset root must hold; folders end with "/"."""
        raise NotImplementedError

    def list_split(self, root: str, split: str) -> list[Record]:
        """Every image of `split` (junk ids included), parsed from its file name or list."""
        raise NotImplementedError

    def published(self) -> dict[str, Published]:
        """Published sizes per split, compared with what the build finds."""
        return self.PUBLISHED

    def layout_hint(self, folder: str) -> str:
        """Extra advice when `folder` has the wrong layout ("" for none)."""
        del folder
        return ""

    # ---- finding the dataset ----

    def find_root(self, manual_dir: str) -> str:
        """The dataset root: `manual_dir` or its canonical child. UserError if neither fits."""
        folder = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
        names = self.folder_names()
        if not os.path.isdir(folder):
            what = "is not a folder" if os.path.exists(folder) else "does not exist"
            raise UserError(
                f"{self.TITLE} not found: {folder} {what}; {MANUAL_DIR_HINT}, "
                f"naming your {names[0]} folder or its parent"
            )
        layout = self.layout()
        found = [
            (candidate, [e for e in layout if _exists(candidate, e)])
            for candidate in (folder, *(os.path.join(folder, n) for n in names))
        ]
        for candidate, present in found:
            if len(present) == len(layout):
                return candidate
        for candidate, present in found:
            if present:
                missing = [e for e in layout if e not in present]
                raise UserError(
                    f"{candidate} looks like {self.TITLE} but lacks {', '.join(missing)}: "
                    f"expected {', '.join(layout)} there{self._hint(candidate)}"
                )
        raise UserError(
            f"{folder} does not hold {self.TITLE}: expected {', '.join(self.layout())} in it "
            f"or in {os.path.join(folder, names[0])}; it holds {_listing(folder)}"
            f"{self._hint(folder)}"
        )

    def _hint(self, folder: str) -> str:
        hint = self.layout_hint(folder)
        if not hint:  # pointed at the parent of the parent?
            deeper = [
                os.path.join(child.path, name)
                for child in sorted(os.scandir(folder), key=lambda e: e.name)[:200]
                if child.is_dir()
                for name in self.folder_names()
                if os.path.isdir(os.path.join(child.path, name))
            ]
            hint = f"found {deeper[0]}: pass that folder" if deeper else ""
        return f" ({hint})" if hint else ""

    # ---- tfds hooks ----

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(self.__doc__ or self.TITLE).strip().splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 3), encoding_format=self.ENCODING
                    ),
                    "pid": np.int64,
                    "camid": np.int64,
                    "label": np.int64,
                    "filename": tfds.features.Text(),
                }
            ),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            disable_shuffling=True,  # sorted-path order, identical on every build
            metadata=tfds.core.MetadataDict(),
        )

    def scan(self, manual_dir: str) -> Scan:
        """Finds, lists and checks the user's copy without writing anything; cached per folder.

        `prepare` calls it before tfds starts, so bad input fails before any folder is made.

        Raises:
          UserError: missing folder, wrong layout, unparsable name, empty or unreadable image,
            or (strict) split sizes that differ from the published ones.
        """
        folder = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
        if self._scanned is not None and self._scanned[0] == folder:
            return self._scanned[1]
        root = self.find_root(folder)
        splits, junk = {}, {}
        for split in self.SPLITS:
            records = sorted(self.list_split(root, split), key=lambda r: r.path)
            if self.DROP_JUNK:
                kept = [r for r in records if r.pid != -1]
                junk[split] = len(records) - len(kept)
                records = kept
            for record in records:
                _check_file(os.path.join(root, record.path))
            splits[split] = records
        result = Scan(root, splits, junk, self._check_sizes(root, splits))
        self._scanned = (folder, result)
        return result

    def _check_sizes(self, root: str, splits: dict[str, list[Record]]) -> list[str]:
        problems = []
        for split, expected in self.published().items():
            images, ids = len(splits[split]), len({r.pid for r in splits[split]})
            if images != expected.images or (expected.ids is not None and ids != expected.ids):
                published = f"{expected.images} images" + (
                    f" / {expected.ids} ids" if expected.ids is not None else ""
                )
                problems.append(
                    f"{split}: found {images} images / {ids} ids, published {published}"
                )
        if problems:
            message = f"{self.TITLE} in {root} differs from the published sizes: " + "; ".join(
                problems
            )
            if self.strict:
                raise UserError(f"{message} (strict: fix the copy, or prepare without strict)")
            warnings.warn(message, SizeMismatchWarning, stacklevel=3)
        return problems

    def _split_generators(self, dl_manager):
        try:
            folder = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # tfds: missing or empty folder; find_root says it in one line
            folder = os.fspath(dl_manager._manual_dir)
        scan = self.scan(folder)
        self.info.metadata.update(
            summary={},
            skipped_images=[],
            junk_dropped=dict(scan.junk_dropped),
            size_mismatches=list(scan.size_mismatches),
        )
        train_ids = sorted({r.pid for r in scan.splits.get("train", [])})
        labels = {pid: label for label, pid in enumerate(train_ids)}
        return {
            split: self._generate_examples(
                scan.root, split, records, labels if split == "train" else {}
            )
            for split, records in scan.splits.items()
        }

    def _generate_examples(
        self, root: str, split: str, records: list[Record], labels: dict[int, int]
    ) -> Iterator[tuple[int, dict]]:
        pids, cams, kept = set(), set(), 0
        for key, record in enumerate(records):
            path = os.path.join(root, record.path)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as error:
                raise UserError(f"cannot read {path}: {error.strerror}") from error
            image, problem = checked_image(data)
            if image is None:
                self.info.metadata["skipped_images"].append(record.path)
                warnings.warn(
                    f"skipped corrupt image {path}: {problem}", CorruptImageWarning, stacklevel=1
                )
                continue
            pids.add(record.pid)
            cams.add(record.camid)
            kept += 1
            yield (
                key,
                {
                    "image": image,
                    "pid": record.pid,
                    "camid": record.camid,
                    "label": labels.get(record.pid, -1),
                    "filename": record.path,
                },
            )
        if not pids:
            raise UserError(
                f"every image of the {split} split of {self.TITLE} in {root} is corrupt: "
                "copy the dataset again from its archive"
            )
        self.info.metadata["summary"][split] = {
            "images": kept,
            "ids": len(pids),
            "cams": len(cams),
        }

    def _post_download_and_prepare_hook(self) -> None:
        skipped = self.info.metadata.get("skipped_images", [])
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            warnings.warn(
                f"{self.name}: skipped {len(skipped)} corrupt image(s) that do not decode: {shown}",
                CorruptImageWarning,
                stacklevel=1,
            )


def _exists(root: str, entry: str) -> bool:
    path = os.path.join(root, entry.rstrip("/"))
    return os.path.isdir(path) if entry.endswith("/") else os.path.isfile(path)


def _listing(folder: str, limit: int = 6) -> str:
    names = sorted(os.listdir(folder))
    if not names:
        return "nothing (it is empty)"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_file(path: str) -> None:
    """UserError for a missing, zero-byte or unreadable image (checked before any writing)."""
    try:
        size = os.stat(path).st_size
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from error
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes): copy it again from the dataset's archive")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path} is not readable: fix its permissions (e.g. chmod a+r)")
