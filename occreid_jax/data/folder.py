"""A dataset from your own folder, no code: `--config.data.name=folder`, `data.manual_dir=DIR`.

Two layouts:

* identity folders: `DIR/{train,query,gallery}/<pid>/*.jpg` (jpg, png, bmp, tif, gif). Person
  ids are the folder names: integers when every name is one, else the position of the name in the
  sorted names of all splits. Cameras come from a Market-style `_c<N>` in the file name (camera N-1,
  0-based), else 0 in train and query and 1 in gallery, so that the protocol keeps every
  same-id gallery image (a same-camera match would be junk). `train/` may be absent (a test-only
  dataset, e.g. `data.test_name=folder`); `query/` and `gallery/` may not.
* `DIR/split.csv` with the header `path,pid,camid,split`: paths relative to DIR, integer pid,
  0-based integer camid, split train, query or gallery.

The build is the real benchmarks' (`reid_builders/base.py`: checked files, train labels
0..N-1 in pid order, corrupt images skipped and counted), written once under
`<data_dir>/folder/<name>-<fingerprint>`; the fingerprint covers the folder's path, its file
names, sizes and times, so a changed folder is built again. Bad layouts are one-line errors
naming the file.

    python -m occreid_jax.data.prepare folder --manual-dir DIR     # prints the split table
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from typing import ClassVar

import tensorflow_datasets as tfds

from occreid_jax.data.leftovers import remove_incomplete
from occreid_jax.data.reid_builders.base import IMAGE_SUFFIXES, Record, ReidBuilder
from occreid_jax.errors import UserError

SPLITS = ("train", "query", "gallery")
CSV_NAME = "split.csv"
CSV_HEADER = ["path", "pid", "camid", "split"]
_CAMERA = re.compile(r"_c(\d+)", re.IGNORECASE)
# Camera of an image whose name carries none (see the module docstring).
DEFAULT_CAMERA = {"train": 0, "query": 0, "gallery": 1}


def is_image(name: str) -> bool:
    """True for the image file names the builders read (case-insensitive)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def camera_of(filename: str, split: str) -> int:
    """0-based camera from a Market-style `_c<N>` in `filename`, else the split's default."""
    found = _CAMERA.search(os.path.basename(filename))
    return int(found.group(1)) - 1 if found else DEFAULT_CAMERA[split]


def _pid_folders(root: str, split: str) -> list[str]:
    folder = os.path.join(root, split)
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    loose = [e.name for e in entries if e.is_file() and is_image(e.name)]
    if loose:
        raise UserError(
            f"{os.path.join(folder, loose[0])} is not in an identity folder: put each person's "
            f"images in {folder}/<pid>/, or list them in {os.path.join(root, CSV_NAME)}"
        )
    names = [e.name for e in entries if e.is_dir()]
    if not names:
        raise UserError(f"{folder} holds no identity folders: expected {folder}/<pid>/*.jpg")
    return names


def list_identity_folders(root: str) -> dict[str, list[Record]]:
    """Records of every split of the identity-folder layout (see the module docstring)."""
    for split in ("query", "gallery"):
        if not os.path.isdir(os.path.join(root, split)):
            raise UserError(
                f"{root} has no {split}/ folder: expected {{train,query,gallery}}/<pid>/*.jpg "
                f"or a {CSV_NAME} (path,pid,camid,split)"
            )
    splits = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    folders = {split: _pid_folders(root, split) for split in splits}
    names = sorted({name for names in folders.values() for name in names})
    numeric = all(name.isdigit() for name in names)
    ids = {name: int(name) if numeric else i for i, name in enumerate(names)}
    records: dict[str, list[Record]] = {}
    for split in splits:
        records[split] = []
        for name in folders[split]:
            files = sorted(f for f in os.listdir(os.path.join(root, split, name)) if is_image(f))
            if not files:
                raise UserError(
                    f"{os.path.join(root, split, name)} holds no images (jpg, png, bmp, tif, gif): "
                    "add the person's images or delete the folder"
                )
            records[split] += [
                Record(f"{split}/{name}/{f}", ids[name], camera_of(f, split)) for f in files
            ]
    return records


def read_split_csv(root: str) -> dict[str, list[Record]]:
    """Records of every split listed in `root/split.csv` (see the module docstring)."""
    path = os.path.join(root, CSV_NAME)
    records: dict[str, list[Record]] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        if header != CSV_HEADER:
            raise UserError(f"{path}: the first line must be {','.join(CSV_HEADER)}, not {header}")
        for line, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != 4:
                raise UserError(f"{path} line {line}: expected 4 fields path,pid,camid,split")
            name, pid, camid, split = (field.strip() for field in row)
            if split not in SPLITS:
                raise UserError(f"{path} line {line}: split {split!r} is not one of {SPLITS}")
            try:
                pid, camid = int(pid), int(camid)
            except ValueError:
                raise UserError(f"{path} line {line}: pid and camid must be integers") from None
            if not os.path.isfile(os.path.join(root, name)):
                raise UserError(f"{path} line {line}: {os.path.join(root, name)} does not exist")
            records.setdefault(split, []).append(Record(name.replace(os.sep, "/"), pid, camid))
    for split in ("query", "gallery"):
        if not records.get(split):
            raise UserError(f"{path} lists no {split} image: add rows with split={split}")
    return records


def fingerprint(root: str) -> str:
    """A short hash of the folder's path and of its files' names, sizes and times."""
    digest = hashlib.sha1(os.fsencode(os.path.abspath(root)))
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            entry = f"{folder}/{name}:{stat.st_size}:{stat.st_mtime_ns}"
            digest.update(entry.encode("utf-8", "surrogateescape"))  # (any name's bytes)
    return digest.hexdigest()[:12]


class FolderDataset(ReidBuilder, skip_registration=True):
    """A person Re-ID dataset in a plain folder (identity folders or split.csv)."""

    name = "folder"
    TITLE = "folder dataset"
    VERSION = tfds.core.Version("1.0.0")
    ENCODING = "png"  # any format; JPEG and PNG bytes are stored as they are
    SPLITS: ClassVar[tuple[str, ...]] = SPLITS

    def find_root(self, manual_dir: str) -> str:
        root = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
        if not os.path.isdir(root):
            raise UserError(
                f"{root} is not a folder; pass --config.data.manual_dir=DIR (or --manual-dir "
                f"DIR) with DIR/{{train,query,gallery}}/<pid>/*.jpg or DIR/{CSV_NAME}"
            )
        return root

    def scan(self, manual_dir: str):
        root = self.find_root(manual_dir)
        self._records = (
            read_split_csv(root)
            if os.path.isfile(os.path.join(root, CSV_NAME))
            else list_identity_folders(root)
        )
        for records in self._records.values():
            for record in records:
                _check_utf8(os.path.join(root, record.path))
        self.SPLITS = tuple(s for s in SPLITS if s in self._records)
        return super().scan(manual_dir)

    def layout(self) -> tuple[str, ...]:
        return ()

    def list_split(self, root: str, split: str) -> list[Record]:
        return self._records[split]


def _check_utf8(path: str) -> None:
    """One line for a file name that is not valid UTF-8 (the dataset stores names as text)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"{os.fsencode(path)!r}: a file name that is not valid UTF-8; rename it (convmv "
            "converts a folder's names), nothing was written"
        ) from None


def prepare(manual_dir: str, data_dir: str, strict: bool = False) -> FolderDataset:
    """Builds the folder dataset at `manual_dir` unless that very folder is already built."""
    del strict  # a folder has no published sizes
    if not manual_dir:
        raise UserError(
            "data.name=folder needs the folder: pass --config.data.manual_dir=DIR "
            f"(DIR/{{train,query,gallery}}/<pid>/*.jpg or DIR/{CSV_NAME})"
        )
    root = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(root):
        raise UserError(f"data.manual_dir={root} is not a folder")
    where = os.path.join(data_dir, "folder", f"{os.path.basename(root)}-{fingerprint(root)}")
    builder = FolderDataset(data_dir=where)
    if (builder.data_path / "dataset_info.json").exists():
        return builder
    builder.scan(root)
    remove_incomplete(builder)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=root, try_download_gcs=False)
    )
    return builder
