"""tfds builders for the seven real Re-ID benchmarks, read from the user's own copy (manual_dir).

Nothing is downloaded: each builder reads the folder the user gives (`manual_dir`), checks its
layout, file names and split sizes, and writes a tfds dataset under `data_dir` once; later calls
reuse it. Layouts, naming rules and conventions are in each module's docstring
(`market_duke.py`, `msmt17.py`, `partial.py`) and the shared behaviour in `base.py`.

    from occreid_jax.data import reid_builders
    b = reid_builders.prepare("market1501", manual_dir="/data/Market-1501-v15.09.15")
    reid_builders.split_summary(b)  # {"train": {"images": 12936, "ids": 751, "cams": 6}, ...}
    b.as_dataset(split="query")     # features image, pid, camid, label, filename

or from the shell: `python -m occreid_jax.data.prepare market1501 --manual-dir /data`.

Builder configs (None or "default" picks the first):
    msmt17: v1, v2, v1_combine_all, v2_combine_all.
    occluded_reid, partial_reid: bpbreid (query camera 0, gallery camera 1), fastreid.
    partial_ilids: bpbreid.
    market1501, dukemtmc, occluded_duke: none.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from occreid_jax.data.leftovers import remove_incomplete
from occreid_jax.data.reid_builders.base import (
    CorruptImageWarning,
    ReidBuilder,
    SizeMismatchWarning,
)
from occreid_jax.data.reid_builders.market_duke import DukeMTMC, Market1501, OccludedDuke
from occreid_jax.data.reid_builders.msmt17 import Msmt17
from occreid_jax.data.reid_builders.partial import OccludedReid, PartialIlids, PartialReid
from occreid_jax.errors import UserError

DATASETS: dict[str, type[ReidBuilder]] = {
    "market1501": Market1501,
    "dukemtmc": DukeMTMC,
    "occluded_duke": OccludedDuke,
    "msmt17": Msmt17,
    "occluded_reid": OccludedReid,
    "partial_reid": PartialReid,
    "partial_ilids": PartialIlids,
}

__all__ = [
    "DATASETS",
    "CorruptImageWarning",
    "SizeMismatchWarning",
    "builder_configs",
    "prepare",
    "skipped_images",
    "split_summary",
]


def builder_configs(name: str) -> tuple[str, ...]:
    """Config names of dataset `name`, the default first; () for a builder without configs."""
    cls = _builder_class(name)
    names = tuple(cls.builder_configs)
    default = cls.DEFAULT_BUILDER_CONFIG_NAME or (names[0] if names else None)
    return tuple(sorted(names, key=lambda n: n != default)) if names else ()


def prepare(
    name: str,
    manual_dir: str | None,
    data_dir: str | None = None,
    builder_config: str | None = None,
    strict: bool = False,
) -> ReidBuilder:
    """Builds dataset `name` from the user's copy unless already prepared; returns the builder.

    Args:
      name: a key of DATASETS.
      manual_dir: the user's copy: the dataset root or its parent. None or "" looks in tfds'
        default `<data_dir>/downloads/manual`; not needed once the dataset is prepared.
      data_dir: where tfds keeps prepared datasets; defaults to ~/tensorflow_datasets.
      builder_config: a name from `builder_configs(name)`; None or "default" for the default.
      strict: fail (UserError) instead of warning when split sizes differ from the published
        ones, also for an already prepared dataset.

    Raises:
      UserError: unknown name or config, missing folder, wrong layout, unparsable file name,
        empty or unreadable image, or (strict) size mismatch. One line, naming what to fix.
    """
    cls = _builder_class(name)
    data_dir = os.path.abspath(
        os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))
    )
    config = _config_name(name, builder_config)
    builder = cls(config=config, data_dir=data_dir, strict=strict)
    if (builder.data_path / "dataset_info.json").exists():
        mismatches = builder.info.metadata.get("size_mismatches") if builder.info.metadata else []
        if strict and mismatches:
            raise UserError(
                f"{name} prepared in {builder.data_dir} differs from the published sizes: "
                f"{'; '.join(mismatches)} (strict: fix the copy, delete that folder and rebuild)"
            )
        return builder
    manual_dir = os.path.abspath(
        os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual"))
    )
    builder.scan(manual_dir)  # every user mistake surfaces here, before tfds writes anything
    remove_incomplete(builder)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
    return builder


def split_summary(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, int]]:
    """Images, distinct person ids and cameras per split of a prepared builder.

    Returns:
      {"train": {"images": n, "ids": n, "cams": n}, "query": {...}, "gallery": {...}}, in that
      order; test-only sets have no "train". Ids include Market's distractor id 0.
    """
    order = [s for s in ("train", "query", "gallery") if s in builder.info.splits]
    stored = (builder.info.metadata or {}).get("summary") or {}
    if all(s in stored for s in order):
        return {s: {k: int(stored[s][k]) for k in ("images", "ids", "cams")} for s in order}
    summary = {}
    for split in order:  # builders without a stored summary: read pid and camid
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        pids, cams, images = set(), set(), 0
        for example in tfds.as_numpy(ds):
            pids.add(int(example["pid"]))
            cams.add(int(example["camid"]))
            images += 1
        summary[split] = {"images": images, "ids": len(pids), "cams": len(cams)}
    return summary


def skipped_images(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Root-relative paths of the corrupt images the build skipped."""
    return list((builder.info.metadata or {}).get("skipped_images") or [])


def _builder_class(name: str) -> type[ReidBuilder]:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _config_name(name: str, builder_config: str | None) -> str | None:
    known = builder_configs(name)
    if builder_config in (None, "", "default"):
        return known[0] if known else None
    if builder_config not in known:
        options = ", ".join(known) if known else "none (leave it empty)"
        raise UserError(
            f"unknown builder config {builder_config!r} for {name}; use one of: {options}"
        )
    return builder_config
