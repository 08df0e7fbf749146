"""Precomputed keypoint heatmaps, one float16 array per split, written resumably.

Pirt reads COCO heatmaps of a frozen HRNet. Running the pose net once per image and storing
its 1/4-resolution output saves that forward pass in every training step. Layout:

  <root>/meta.json        pose net, input size, heatmap size, dtype, and per split the number
                          of images, a digest of their names in order, and how many are done
  <root>/<split>.npy      [N, H/4, W/4, 17] float16 (numpy .npy, opened as a memory map)

float16, not 8-bit: Pirt binarises heatmaps at tau = 0.001, below an 8-bit step of a peak near
1, while float16 keeps ~3 significant digits down to 6e-5 and subnormals below. Values are
clipped to [0, 65504] (float16's range: negative pose net outputs are read by no consumer, and
a COCO HRNet peaks near 1). 384 x 128 inputs take 104 KB per image.

A store is tied to one pose net and input size: opening it with others is refused. Writing is
resumable: images are written in chunks and `done` is advanced only after a chunk is flushed,
so an interrupted precompute continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from occreid_jax.errors import UserError

NUM_JOINTS = 17
STRIDE = 4
FORMAT = "occreid_jax.heatmaps/1"


class HeatmapStore:
    """A folder of per-split heatmap arrays for one pose net at one input size.

    Args:
      root: the store folder (created if missing).
      pose_net: name of the pose net (e.g. "hrnet_w48"); must match an existing store.
      image_size: (H, W) model input size the heatmaps were computed at.
    """

    def __init__(self, root: str, pose_net: str, image_size: tuple[int, int]):
        self.root = root
        self.pose_net = pose_net
        self.image_size = tuple(int(s) for s in image_size)
        self.heatmap_size = (self.image_size[0] // STRIDE, self.image_size[1] // STRIDE)
        os.makedirs(root, exist_ok=True)
        self._meta_path = os.path.join(root, "meta.json")
        self.meta = self._read_meta()
        if not os.path.exists(self._meta_path):
            self._write_meta()  # claim the folder for this pose net and size

    def _read_meta(self) -> dict:
        expected = {
            "format": FORMAT,
            "pose_net": self.pose_net,
            "image_size": list(self.image_size),
            "heatmap_size": list(self.heatmap_size),
            "dtype": "float16",
        }
        if not os.path.exists(self._meta_path):
            return {**expected, "splits": {}}
        with open(self._meta_path) as f:
            meta = json.load(f)
        for key, value in expected.items():
            if meta.get(key) != value:
                raise UserError(
                    f"the heatmap store {self.root} was made with {key}={meta.get(key)!r}, "
                    f"this run needs {value!r}; delete that folder or point pose.store elsewhere"
                )
        return meta

    def _write_meta(self) -> None:
        tmp = self._meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.meta, f, indent=2)
        os.replace(tmp, self._meta_path)

    def _path(self, split: str) -> str:
        return os.path.join(self.root, f"{split}.npy")

    def done(self, split: str) -> int:
        """How many images of `split` are stored."""
        return int(self.meta["splits"].get(split, {}).get("done", 0))

    def resumable(self, split: str, filenames: Sequence[str]) -> int:
        """Images of `split` already stored for these files (0 if the array is gone or of
        other images)."""
        info = self.meta["splits"].get(split)
        if not info or info["key"] != images_key(filenames):
            return 0
        return self.done(split) if os.path.exists(self._path(split)) else 0

    def is_complete(self, split: str, filenames: Sequence[str]) -> bool:
        """Whether every image of `split` (these files, in this order) is stored."""
        info = self.meta["splits"].get(split)
        return (
            bool(info)
            and info["key"] == images_key(filenames)
            and info["done"] == info["num"] == len(filenames)
        )

    def write(
        self,
        split: str,
        filenames: Sequence[str],
        batches: Iterable[tuple[int, np.ndarray]],
        chunk: int = 256,
    ) -> None:
        """Stores heatmaps for `split`, resuming after the images already done.

        Args:
          split: split name.
          filenames: [N] the split's image names in dataset order; the store is keyed by them.
          batches: (first index, heatmaps [b, H/4, W/4, 17]) in order, starting at
            `self.done(split)` (the caller skips what is done).
          chunk: flush and advance `done` at least every this many images.
        """
        num_images, key = len(filenames), images_key(filenames)
        info = self.meta["splits"].get(split)
        on_disk = os.path.exists(self._path(split))
        if info and info["key"] != key and on_disk:
            raise UserError(
                f"the heatmap store {self.root} holds split {split!r} of other images "
                f"({info['num']} images, now {num_images}); delete {self._path(split)} to "
                "recompute it"
            )
        shape = (num_images, *self.heatmap_size, NUM_JOINTS)
        if info is None or info["key"] != key or not on_disk:
            np.lib.format.open_memmap(self._path(split), mode="w+", dtype=np.float16, shape=shape)
            self.meta["splits"][split] = {"num": num_images, "key": key, "done": 0}
            self._write_meta()
        array = np.load(self._path(split), mmap_mode="r+")
        done = self.done(split)
        pending = done
        for first, heatmaps in batches:
            if first != pending:
                raise ValueError(f"batch starts at {first}, expected {pending}")
            heatmaps = np.asarray(heatmaps, np.float32)
            if heatmaps.shape[1:] != shape[1:]:
                raise ValueError(f"heatmaps {heatmaps.shape[1:]} do not fit the store {shape[1:]}")
            clipped = np.clip(heatmaps, 0, np.finfo(np.float16).max)
            array[first : first + len(heatmaps)] = clipped.astype(np.float16)
            pending += len(heatmaps)
            if pending - done >= chunk or pending == num_images:
                array.flush()
                done = pending
                self.meta["splits"][split]["done"] = done
                self._write_meta()
        array.flush()
        del array

    def read(self, split: str, filenames: Sequence[str]) -> np.ndarray:
        """The complete [N, H/4, W/4, 17] float16 array of `split`, memory-mapped, row i for
        `filenames[i]`."""
        if not self.is_complete(split, filenames):
            raise UserError(
                f"heatmaps of split {split!r} in {self.root} are missing, incomplete "
                f"({self.done(split)} of {len(filenames)}) or of other images; "
                "run --mode=heatmaps first"
            )
        return np.load(self._path(split), mmap_mode="r")


def images_key(filenames: Sequence[str]) -> str:
    """A digest of the split's image names in order: row i of a store belongs to file i."""
    return hashlib.sha1("\n".join(map(str, filenames)).encode()).hexdigest()


def precompute(
    store: HeatmapStore,
    split: str,
    filenames: Sequence[str],
    eval_batches: Iterable[dict],
    pose_fn: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    chunk: int = 1024,
) -> None:
    """Runs `pose_fn` over a split and stores the heatmaps, resuming after what is done.

    Args:
      store: the destination.
      split: split name.
      filenames: [N] the split's image names in dataset order.
      eval_batches: the split's evaluation batches in order (`pipeline.eval_batches`), each
        with `images` [D, b, H, W, 3] normalised and `mask` [D, b].
      pose_fn: normalised images [D, b, H, W, 3] -> heatmaps [D, b, H/4, W/4, 17].
      batch_size: images per batch (D * b), to skip the batches already done.
      chunk: progress is saved at least every this many images.
    """
    if store.is_complete(split, filenames):
        return
    num_images = len(filenames)
    done = store.resumable(split, filenames)
    skip = done // batch_size
    done = skip * batch_size  # progress is saved on batch boundaries; redo a partial batch

    def produce():
        first = 0
        bar = tqdm(total=num_images, initial=done, desc=f"heatmaps {split}", unit="img")
        for number, batch in enumerate(eval_batches):
            mask = batch["mask"].reshape(-1)
            if number < skip:
                first += int(mask.sum())
                continue
            heatmaps = np.asarray(pose_fn(batch["images"]))
            heatmaps = heatmaps.reshape(-1, *heatmaps.shape[2:])[mask]
            yield first, heatmaps
            first += len(heatmaps)
            bar.update(len(heatmaps))
        bar.close()

    if done:
        store.meta["splits"][split]["done"] = done
    store.write(split, filenames, produce(), chunk=chunk)
