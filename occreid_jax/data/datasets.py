"""Which datasets exist, and loading one split of a tfds builder into host memory.

A split is small enough to hold in memory as encoded images (Market-1501's train split is
~13k JPEGs of ~5 KB), which lets the P x K sampler pick any index cheaply and the pipeline
decode only what a batch needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from occreid_jax.errors import UserError

# Evaluation rows of the synthetic benchmark: row name -> (query split, gallery split).
SYNTHETIC_EVAL_SETS = {
    "occluded queries": ("query", "gallery"),
    "holistic queries": ("query_holistic", "gallery"),
}

# Datasets the papers report (tfds builders in data/reid_builders, read from the user's copy).
REAL_DATASETS = (
    "occluded_duke",
    "market1501",
    "dukemtmc",
    "msmt17",
    "occluded_reid",
    "partial_reid",
    "partial_ilids",
)
# Test-only sets: the standard protocol trains on Market-1501 and evaluates on them.
TEST_ONLY_DATASETS = ("occluded_reid", "partial_reid", "partial_ilids")


@dataclasses.dataclass
class Split:
    """One split held in host memory.

    Attributes:
      images: [N] object array of encoded image bytes (PNG/JPEG as stored).
      pids: [N] int64 person ids.
      camids: [N] int64 camera ids, 0-based.
      labels: [N] int64 train labels 0..C-1 (-1 outside the train split).
      filenames: [N] str.
      heatmaps: [N, h, w, 17] keypoint heatmaps (stride 4): uint8 (0..255 for 0..1, the
        synthetic ground truth) or float16 (a memory-mapped `HeatmapStore` array), or None.
      keypoints: [N, 17, 3] float32 (x, y, visibility) in image pixels, or None.
    """

    images: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    labels: np.ndarray
    filenames: np.ndarray
    heatmaps: np.ndarray | None = None
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pids)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def default_data_dir(data_dir: str) -> str:
    return os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    """A dataset added with `register_dataset`.

    Attributes:
      prepare: `(builder_config, data_dir, manual_dir, strict) -> tfds builder`, prepared (its
        splits hold the features image, pid, camid, label, filename; see `load_split`).
      eval_sets: row name -> (query split, gallery split); None: one row, query vs gallery.
    """

    prepare: Callable[[str, str, str, bool], Any]
    eval_sets: dict[str, tuple[str, str]] | None = None


# Datasets beyond the synthetic benchmark and REAL_DATASETS, by `config.data.name`.
REGISTERED: dict[str, RegisteredDataset] = {}


def register_dataset(
    name: str,
    prepare: Callable[[str, str, str, bool], Any],
    eval_sets: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Makes `config.data.name = name` (and `data.test_name`) read the dataset `prepare` builds.

    Args:
      name: the dataset's name in configs.
      prepare: `(builder_config, data_dir, manual_dir, strict) -> prepared tfds builder`;
        `data_dir` is already expanded (default ~/tensorflow_datasets).
      eval_sets: evaluation rows, row name -> (query split, gallery split); default one row.
    """
    if name == "synthetic" or name in REAL_DATASETS:
        raise ValueError(f"{name!r} is a built-in dataset; register the new one by another name")
    REGISTERED[name] = RegisteredDataset(prepare, eval_sets)


def _prepare_folder(builder_config: str, data_dir: str, manual_dir: str, strict: bool):
    del builder_config
    from occreid_jax.data import folder

    return folder.prepare(manual_dir, data_dir, strict)


register_dataset("folder", _prepare_folder)


def _prepare_pets2009(builder_config: str, data_dir: str, manual_dir: str, strict: bool):
    del strict  # tracklets have no published sizes
    if builder_config not in ("", "default"):
        raise UserError(
            f"pets2009 has no builder config {builder_config!r}; leave data.builder_config empty"
        )
    from occreid_jax.data import video_tracklets

    return video_tracklets.prepare(manual_dir, data_dir)


register_dataset("pets2009", _prepare_pets2009)


def eval_sets(dataset: str) -> dict[str, tuple[str, str]]:
    """Named (query split, gallery split) pairs evaluated for `dataset`."""
    if dataset == "synthetic":
        return SYNTHETIC_EVAL_SETS
    registered = REGISTERED.get(dataset)
    if registered is not None and registered.eval_sets:
        return dict(registered.eval_sets)
    return {dataset: ("query", "gallery")}


def prepare(
    dataset: str, builder_config: str, data_dir: str, manual_dir: str = "", strict: bool = False
):
    """Returns a prepared tfds builder for `dataset`, building it on first use.

    Args:
      dataset: "synthetic", a name in REAL_DATASETS, or one added by `register_dataset`
        ("folder": your own folder, `data/folder.py`; "pets2009": the people of a
        static-camera video, `data/video_tracklets.py`).
      builder_config: tfds builder config name; "" for the dataset's default.
      data_dir: where tfds keeps prepared datasets ("" = ~/tensorflow_datasets).
      manual_dir: the user's copy of a real dataset.
      strict: fail instead of warning when split sizes differ from the published ones.
    """
    if dataset in REGISTERED:
        return REGISTERED[dataset].prepare(
            builder_config, default_data_dir(data_dir), manual_dir, strict
        )
    if dataset == "synthetic":
        from occreid_jax.data.synthetic import builder as synthetic_builder

        known = synthetic_builder.SyntheticOccludedReid.builder_configs
        builder_config = builder_config or "default"
        if builder_config not in known:
            raise UserError(
                f"unknown data.builder_config {builder_config!r} for the synthetic benchmark; "
                f"use one of {', '.join(known)}"
            )
        return synthetic_builder.build(builder_config, default_data_dir(data_dir))
    if dataset in REAL_DATASETS:
        from occreid_jax.data import reid_builders

        return reid_builders.prepare(
            dataset,
            manual_dir=manual_dir,
            data_dir=default_data_dir(data_dir),
            builder_config=builder_config or None,
            strict=strict,
        )
    known = ["synthetic", *REAL_DATASETS, *REGISTERED]
    raise UserError(f"unknown dataset {dataset!r}; use one of {', '.join(known)}")


def load_split(builder, split: str, with_heatmaps: bool = True) -> Split:
    """Reads one split of a prepared builder into memory (images stay encoded)."""
    import tensorflow_datasets as tfds

    if split not in builder.info.splits:
        raise UserError(
            f"dataset {builder.name!r} has no split {split!r} (it has "
            f"{', '.join(builder.info.splits)}); check the dataset variant in --config"
        )
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    columns: dict[str, list] = {"image": [], "pid": [], "camid": [], "label": [], "filename": []}
    has_heatmaps = with_heatmaps and "heatmaps" in builder.info.features
    if has_heatmaps:
        columns["heatmaps"] = []
    if "keypoints" in builder.info.features:
        columns["keypoints"] = []
    for example in tfds.as_numpy(ds):
        for key, values in columns.items():
            values.append(example[key])
    if not columns["pid"]:
        raise UserError(
            f"split {split!r} of {builder.name!r} in {builder.data_dir} is empty; "
            "delete that folder and rerun to rebuild it"
        )
    images = np.empty(len(columns["image"]), dtype=object)
    images[:] = columns["image"]
    return Split(
        images=images,
        pids=np.asarray(columns["pid"], np.int64),
        camids=np.asarray(columns["camid"], np.int64),
        labels=np.asarray(columns["label"], np.int64),
        filenames=np.asarray([f.decode() for f in columns["filename"]]),
        heatmaps=np.stack(columns["heatmaps"]) if has_heatmaps else None,
        keypoints=np.stack(columns["keypoints"]) if "keypoints" in columns else None,
    )
