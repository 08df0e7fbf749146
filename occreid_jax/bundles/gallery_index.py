"""A gallery embedded once and searched many times: the index folder.

    occreid index --bundle runs/demo/export --gallery footage/ --out footage.index

Layout of an index (a folder):

    index.json            format, the bundle's fingerprint, the gallery arguments, storage
                          dtype, the committed chunks, and files removed or unreadable
    chunks/NNNNN/         one committed chunk: files.json (path, size, mtime_ns, sha1 of each
                          image) and <name>.npy, one [n, ...] array per embedding

A chunk is written beside its final name and renamed, then index.json (rewritten by rename)
lists it: a killed run leaves committed chunks and nothing half-written, and the next run
embeds only what is missing. Running `index` again on a grown gallery embeds the new images
alone; a changed image (other size or time, and other content) is embedded again (the newest
chunk holding a path wins); images gone from the gallery are dropped. The arrays are read
memory-mapped (`GalleryIndex.chunk_features`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np

from occreid_jax.bundles import atomic
from occreid_jax.bundles.export import DESCRIPTION, VARIABLES
from occreid_jax.errors import UserError

FORMAT = "occreid_jax.index/1"
MANIFEST = "index.json"
CHUNKS = "chunks"
FILES = "files.json"
STORAGE = ("float32", "float16")


def bundle_fingerprint(bundle_path: str) -> str:
    """sha256 of the bundle's model.json and weights: an index belongs to one bundle."""
    digest = hashlib.sha256()
    for name in (DESCRIPTION, VARIABLES):
        with open(os.path.join(bundle_path, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_stamp(path: str, data: bytes | None = None) -> dict:
    """{"path", "size", "mtime_ns", "sha1"} of an image file (its bytes read when not given)."""
    info = os.stat(path)
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    return {
        "path": path,
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "sha1": hashlib.sha1(data).hexdigest(),
    }


def same_file(stamp: dict) -> bool:
    """Whether the file at stamp["path"] still holds the bytes it was indexed with (its size
    and time first; the content only when those moved)."""
    try:
        info = os.stat(stamp["path"])
    except OSError:
        return False
    if info.st_size == stamp["size"] and info.st_mtime_ns == stamp["mtime_ns"]:
        return True
    return info.st_size == stamp["size"] and file_stamp(stamp["path"])["sha1"] == stamp["sha1"]


def write_json(path: str, value) -> None:
    """JSON written whole (`atomic.write_file`: a temporary name, flushed, renamed)."""
    atomic.write_file(path, json.dumps(value))


def _damaged(index_path: str, what: str) -> UserError:
    return UserError(
        f"the index {index_path} is damaged ({what}); build it again with occreid index "
        f"--out={index_path} (add --rebuild)"
    )


def read_manifest(index_path: str) -> dict:
    """index.json of an index folder, checked for its format."""
    path = os.path.join(index_path, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(
            f"{index_path} is not a gallery index (no {MANIFEST}); make one with occreid index "
            f"--bundle=... --gallery=... --out={index_path}"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise _damaged(index_path, f"{MANIFEST} unreadable: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path} is not an index of this version ({found!r}, expected {FORMAT!r})")
    return manifest


def check_bundle(index_path: str, manifest: dict, bundle_path: str) -> None:
    """A one-line error when the index was made with another bundle."""
    if manifest["bundle"] != bundle_fingerprint(bundle_path):
        raise UserError(
            f"the index {index_path} was made with another bundle than {bundle_path} (its "
            "features would not compare); pass the bundle it was made with, or index the "
            "gallery again with this one"
        )


@dataclasses.dataclass
class Chunk:
    """One committed chunk: its files' stamps and its memory-mapped [n, ...] arrays."""

    name: str
    files: list[dict]
    arrays: dict[str, np.ndarray]


@dataclasses.dataclass
class GalleryIndex:
    """An opened index: the live images (newest chunk per path, minus removed ones).

    Attributes:
      path: the index folder.
      manifest: its index.json.
      chunks: the committed chunks, oldest first.
      live: (chunk number, row) of every live image, keyed by its path.
    """

    path: str
    manifest: dict
    chunks: list[Chunk]
    live: dict[str, tuple[int, int]]

    @property
    def storage(self) -> str:
        return self.manifest["storage"]

    def stamp(self, path: str) -> dict:
        chunk, row = self.live[path]
        return self.chunks[chunk].files[row]

    def chunk_features(self, chunk: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """{name: [len(rows), ...] float32} of some rows of one chunk (read from the files)."""
        return {
            name: np.asarray(array[rows], np.float32)
            for name, array in self.chunks[chunk].arrays.items()
        }


def open_index(index_path: str) -> GalleryIndex:
    """Opens an index for reading: every listed chunk, its arrays memory-mapped and checked.

    Raises:
      UserError: not an index, another format, or a missing, truncated or inconsistent file.
    """
    manifest = read_manifest(index_path)
    chunks = []
    for name in manifest["chunks"]:
        folder = os.path.join(index_path, CHUNKS, name)
        try:
            with open(os.path.join(folder, FILES)) as f:
                files = json.load(f)
            arrays = {
                key: np.load(os.path.join(folder, f"{key}.npy"), mmap_mode="r")
                for key in manifest["features"]
            }
        except (OSError, ValueError) as error:
            raise _damaged(index_path, f"chunk {name}: {error}") from None
        for key, array in arrays.items():
            expected = (len(files), *manifest["features"][key])
            if array.shape != expected or array.dtype != np.dtype(manifest["storage"]):
                raise _damaged(
                    index_path, f"chunk {name}: {key} is {array.dtype} {list(array.shape)}, "
                    f"expected {manifest['storage']} {list(expected)}"
                )  # fmt: skip
        chunks.append(Chunk(name, files, arrays))
    live = {}
    for number, chunk in enumerate(chunks):
        for row, stamp in enumerate(chunk.files):
            live[stamp["path"]] = (number, row)
    for path, removed_at in manifest["removed"].items():
        if path in live and live[path][0] < removed_at:
            del live[path]
    return GalleryIndex(index_path, manifest, chunks, live)


def new_manifest(fingerprint: str, gallery: list[str], storage: str) -> dict:
    """The index.json of an empty index."""
    return {
        "format": FORMAT,
        "bundle": fingerprint,
        "gallery": gallery,
        "storage": storage,
        "features": {},
        "chunks": [],
        "removed": {},
        "unreadable": {},
    }


def remove_uncommitted(index_path: str, manifest: dict) -> list[str]:
    """Removes chunk folders index.json does not list (a killed run's); returns them."""
    folder = os.path.join(index_path, CHUNKS)
    os.makedirs(folder, exist_ok=True)
    listed = set(manifest["chunks"])
    removed = []
    for entry in sorted(os.listdir(folder)):
        if entry not in listed:
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
            removed.append(entry)
    atomic.remove_leftovers(index_path, MANIFEST)
    return removed


def commit_chunk(
    index_path: str, manifest: dict, stamps: list[dict], features: dict[str, np.ndarray]
) -> None:
    """Writes a chunk (staged, renamed), then lists it in index.json (`manifest` updated)."""
    storage = np.dtype(manifest["storage"])
    shapes = {key: list(np.shape(value)[1:]) for key, value in features.items()}
    if manifest["features"] and manifest["features"] != shapes:
        raise UserError(
            f"the bundle's embeddings {shapes} differ from the index's {manifest['features']}"
        )
    name = f"{len(manifest['chunks']):05d}"
    final = os.path.join(index_path, CHUNKS, name)
    staging = atomic.staging_folder(final)
    try:
        with open(os.path.join(staging, FILES), "w") as f:
            json.dump(stamps, f)
        for key, value in features.items():
            np.save(os.path.join(staging, f"{key}.npy"), np.asarray(value).astype(storage))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest["features"] = shapes
    manifest["chunks"].append(name)
    write_json(os.path.join(index_path, MANIFEST), manifest)
