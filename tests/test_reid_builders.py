"""Builders of the real benchmarks, on tiny fabricated folder trees with the real file names."""

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from occreid_jax.data import prepare as prepare_cli
from occreid_jax.data import reid_builders as rb
from occreid_jax.data.reid_builders.market_duke import Market1501
from occreid_jax.errors import UserError

pytestmark = pytest.mark.filterwarnings(
    "ignore::occreid_jax.data.reid_builders.SizeMismatchWarning"
)

MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s2_000101_01.jpg",
        "0007_c1s1_000201_02.jpg",
        "0010_c6s3_000301_01.jpg",
    ],
    "query": ["0002_c4s1_000001_00.jpg", "0007_c5s1_000002_00.jpg"],
    "bounding_box_test": [
        "-1_c3s2_000401_03.jpg",
        "-1_c1s1_000402_01.jpg",
        "0000_c5s1_000501_01.jpg",
        "0002_c6s1_000601_01.jpg",
        "0007_c2s1_000701_01.jpg",
        "0007_c4s1_000702_01.jpg",
    ],
}
DUKE = {
    "bounding_box_train": ["0005_c2_f0046985.jpg", "0005_c7_f0046990.jpg", "0008_c8_f0050001.jpg"],
    "query": ["0005_c5_f0051341.jpg"],
    "bounding_box_test": ["0001_c2_f0046182.jpg", "0005_c1_f0052000.jpg"],
}


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def _tree(root: Path, folders: dict[str, list[str]]) -> Path:
    for i, rel in enumerate(f"{d}/{n}" for d, names in folders.items() for n in names):
        _image(root / rel, i)
    return root


def _rows(builder, split: str) -> list[tuple[str, int, int, int]]:
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return [
        (e["filename"].decode(), int(e["pid"]), int(e["camid"]), int(e["label"]))
        for e in tfds.as_numpy(ds)
    ]


def _examples(builder, split: str) -> list[dict]:
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return list(tfds.as_numpy(ds))


def _error(tmp_path: Path, name: str, manual_dir, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        rb.prepare(name, str(manual_dir), data_dir=str(tmp_path / "tfds"), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """(parent folder, data_dir, builder) of a Market-1501 copy given as its parent."""
    parent = tmp_path_factory.mktemp("market")
    root = _tree(parent / "Market-1501-v15.09.15", MARKET)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image, ignored")
    data_dir = tmp_path_factory.mktemp("tfds")
    return parent, data_dir, rb.prepare("market1501", str(parent), data_dir=str(data_dir))


def test_market_drops_junk_keeps_distractors_and_relabels_train(market):
    builder = market[2]
    assert _rows(builder, "train") == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 2, 0, 0),
        ("bounding_box_train/0002_c2s1_000551_01.jpg", 2, 1, 0),
        ("bounding_box_train/0007_c1s1_000201_02.jpg", 7, 0, 1),
        ("bounding_box_train/0007_c3s2_000101_01.jpg", 7, 2, 1),
        ("bounding_box_train/0010_c6s3_000301_01.jpg", 10, 5, 2),
    ]
    assert _rows(builder, "query") == [
        ("query/0002_c4s1_000001_00.jpg", 2, 3, -1),
        ("query/0007_c5s1_000002_00.jpg", 7, 4, -1),
    ]
    assert _rows(builder, "gallery") == [
        ("bounding_box_test/0000_c5s1_000501_01.jpg", 0, 4, -1),
        ("bounding_box_test/0002_c6s1_000601_01.jpg", 2, 5, -1),
        ("bounding_box_test/0007_c2s1_000701_01.jpg", 7, 1, -1),
        ("bounding_box_test/0007_c4s1_000702_01.jpg", 7, 3, -1),
    ]
    assert rb.split_summary(builder) == {
        "train": {"images": 5, "ids": 3, "cams": 4},
        "query": {"images": 2, "ids": 2, "cams": 2},
        "gallery": {"images": 4, "ids": 3, "cams": 4},
    }
    assert builder.info.metadata["junk_dropped"] == {"train": 0, "query": 0, "gallery": 2}
    assert rb.skipped_images(builder) == []


def test_registry_and_builder_configs(market):
    assert list(rb.DATASETS) == [
        "market1501",
        "dukemtmc",
        "occluded_duke",
        "msmt17",
        "occluded_reid",
        "partial_reid",
        "partial_ilids",
    ]
    assert rb.builder_configs("msmt17") == ("v1", "v2", "v1_combine_all", "v2_combine_all")
    assert rb.builder_configs("occluded_reid") == ("bpbreid", "fastreid")
    assert rb.builder_configs("partial_ilids") == ("bpbreid",)
    assert rb.builder_configs("market1501") == ()
    # "default" (the training configs' value) and None pick the default; a prepared copy
    # needs no manual_dir
    again = rb.prepare("market1501", None, data_dir=str(market[1]), builder_config="default")
    assert again.data_dir == market[2].data_dir


def test_images_are_stored_byte_for_byte_and_decode(market):
    parent, _, builder = market
    ds = builder.as_dataset(split="query", decoders={"image": tfds.decode.SkipDecoding()})
    for example in tfds.as_numpy(ds):
        source = parent / "Market-1501-v15.09.15" / example["filename"].decode()
        assert example["image"] == source.read_bytes()
    image = next(iter(builder.as_dataset(split="query").as_numpy_iterator()))["image"]
    assert image.shape == (16, 8, 3) and image.dtype == np.uint8


def test_rebuild_from_the_root_itself_gives_identical_datasets(market, tmp_path):
    parent, _, first = market
    again = rb.prepare("market1501", str(parent / "Market-1501-v15.09.15"), str(tmp_path))
    for split in ("train", "query", "gallery"):
        a, b = _examples(first, split), _examples(again, split)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys() and all(x[k] == y[k] for k in x)


def test_size_mismatch_warns_with_both_numbers_and_strict_fails(market, tmp_path, monkeypatch):
    parent = market[0]
    with pytest.warns(rb.SizeMismatchWarning) as caught:
        rb.prepare("market1501", str(parent), data_dir=str(tmp_path / "a"))
    text = " ".join(str(w.message) for w in caught)
    assert "train: found 5 images / 3 ids, published 12936 images / 751 ids" in text
    assert "gallery: found 4 images / 3 ids, published 15913 images / 751 ids" in text
    assert "published sizes" in _error(tmp_path / "b", "market1501", parent, strict=True)
    assert not (tmp_path / "b" / "tfds").exists()  # nothing written
    # strict also refuses a copy prepared earlier with a mismatch
    with pytest.raises(UserError, match="differs from the published sizes"):
        rb.prepare("market1501", None, data_dir=str(market[1]), strict=True)
    sizes = {"train": (5, 3), "query": (2, 2), "gallery": (4, 3)}
    monkeypatch.setattr(
        Market1501, "PUBLISHED", {s: rb.base.Published(*n) for s, n in sizes.items()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", rb.SizeMismatchWarning)
        rb.prepare("market1501", str(parent), data_dir=str(tmp_path / "c"), strict=True)


@pytest.mark.parametrize(
    "name,folder", [("dukemtmc", "DukeMTMC-reID"), ("occluded_duke", "Occluded_Duke")]
)
def test_duke_layouts_read_eight_cameras(tmp_path, name, folder):
    root = _tree(tmp_path / folder, DUKE)
    builder = rb.prepare(name, str(root), data_dir=str(tmp_path / "tfds"))
    assert _rows(builder, "train") == [
        ("bounding_box_train/0005_c2_f0046985.jpg", 5, 1, 0),
        ("bounding_box_train/0005_c7_f0046990.jpg", 5, 6, 0),
        ("bounding_box_train/0008_c8_f0050001.jpg", 8, 7, 1),
    ]
    assert [r[1:3] for r in _rows(builder, "gallery")] == [(1, 1), (5, 0)]


def _msmt(root: Path, train_dir: str, test_dir: str) -> Path:
    lists = {
        "list_train.txt": [
            "0000/0000_000_01_0303morning_0015_0.jpg 0",
            "0000/0000_001_05_0303noon_0020_1.jpg 0",
            "0001/0001_000_03_0303morning_0030_0.jpg 1",
        ],
        "list_val.txt": [
            "0002/0002_000_15_0303afternoon_0040_0.jpg 2",
            "0000/0000_002_02_0303morning_0050_0.jpg 0",
        ],
        "list_query.txt": [
            "0000/0000_000_04_0303morning_0001_0.jpg 0",
            "0001/0001_000_07_0303noon_0002_0.jpg 1",
        ],
        "list_gallery.txt": [
            "0000/0000_001_09_0303noon_0003_0.jpg 0",
            "0001/0001_001_12_0303noon_0004_0.jpg 1",
            "0002/0002_000_01_0303noon_0005_0.jpg 2",
        ],
    }
    for i, (name, lines) in enumerate(lists.items()):
        image_dir = train_dir if name in ("list_train.txt", "list_val.txt") else test_dir
        for j, line in enumerate(lines):
            _image(root / image_dir / line.split()[0], 10 * i + j)
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_msmt17_v1_reads_lists_and_leaves_val_out(tmp_path):
    _msmt(tmp_path / "MSMT17_V1", "train", "test")
    builder = rb.prepare("msmt17", str(tmp_path), data_dir=str(tmp_path / "tfds"))
    assert _rows(builder, "train") == [
        ("train/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0, 0),
        ("train/0000/0000_001_05_0303noon_0020_1.jpg", 0, 4, 0),
        ("train/0001/0001_000_03_0303morning_0030_0.jpg", 1, 2, 1),
    ]
    assert [r[1:3] for r in _rows(builder, "query")] == [(0, 3), (1, 6)]
    assert rb.split_summary(builder)["gallery"] == {"images": 3, "ids": 3, "cams": 3}


def test_msmt17_v2_combine_all_adds_val_to_train(tmp_path):
    _msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    message = _error(tmp_path, "msmt17", tmp_path / "MSMT17_V2")  # default config is v1
    assert "lacks train/, test/" in message and "use builder config v2" in message
    builder = rb.prepare(
        "msmt17", str(tmp_path), data_dir=str(tmp_path / "tfds"), builder_config="v2_combine_all"
    )
    train = _rows(builder, "train")
    assert [r[0] for r in train] == sorted(r[0] for r in train)
    assert [(r[1], r[2], r[3]) for r in train] == [
        (0, 0, 0),
        (0, 4, 0),
        (0, 1, 0),
        (1, 2, 1),
        (2, 14, 2),
    ]
    assert all(r[0].startswith("mask_train_v2/") for r in train)


def test_msmt17_bad_list_lines_name_the_file_and_line(tmp_path):
    root = _msmt(tmp_path / "MSMT17_V1", "train", "test")
    (root / "list_query.txt").write_text("0000/0000_000_04_0303morning_0001_0.jpg\n")
    assert "list_query.txt line 1: expected 'RELATIVE/PATH.jpg PID'" in _error(
        tmp_path, "msmt17", root
    )
    (root / "list_query.txt").write_text("0009/0009_000_04_0303morning_0001_0.jpg 9\n")
    assert "line 1 names" in _error(tmp_path, "msmt17", root)
    (root / "list_query.txt").write_text(
        "0000/0000_000_04_0303morning_0001_0.jpg 0\n0000/x.jpg 0\n"
    )
    _image(root / "test/0000/x.jpg", 0)
    assert "cannot parse" in _error(tmp_path, "msmt17", root)


def test_occluded_reid_tif_is_reencoded_and_camera_conventions(tmp_path):
    folders = {
        "occluded_body_images": ["001/001_01.tif", "001/001_02.tif", "002/002_01.tif"],
        "whole_body_images": ["001/001_01.tif", "002/002_01.tif", "002/002_03.tif"],
    }
    parent = tmp_path / "data"
    _tree(parent / "Occluded_REID", folders)
    builder = rb.prepare("occluded_reid", str(parent), data_dir=str(tmp_path / "tfds"))
    assert _rows(builder, "query") == [
        ("occluded_body_images/001/001_01.tif", 1, 0, -1),
        ("occluded_body_images/001/001_02.tif", 1, 0, -1),
        ("occluded_body_images/002/002_01.tif", 2, 0, -1),
    ]
    assert {r[2] for r in _rows(builder, "gallery")} == {1}
    assert "train" not in builder.info.splits
    example = next(iter(builder.as_dataset(split="gallery").as_numpy_iterator()))
    source = cv2.imread(str(parent / "Occluded_REID" / example["filename"].decode()))
    np.testing.assert_array_equal(example["image"], source[..., ::-1])  # lossless PNG, RGB
    fast = rb.prepare("occluded_reid", str(parent), str(tmp_path / "tfds"), "fastreid")
    assert [r[2] for r in _rows(fast, "query")] == [0, 1, 0]
    assert [r[2] for r in _rows(fast, "gallery")] == [0, 0, 2]


def test_partial_reid_and_partial_ilids(tmp_path):
    _tree(tmp_path / "Partial_REID", {
        "partial_body_images": ["001_01.jpg", "001_02.jpg", "003_01.jpg"],
        "whole_body_images": ["001_01.jpg", "003_01.jpg"],
    })  # fmt: skip
    builder = rb.prepare("partial_reid", str(tmp_path), data_dir=str(tmp_path / "tfds"))
    assert rb.split_summary(builder) == {
        "query": {"images": 3, "ids": 2, "cams": 1},
        "gallery": {"images": 2, "ids": 2, "cams": 1},
    }
    ilids = _tree(tmp_path / "Partial_iLIDS", {
        "partial_body_images": ["001.jpg", "002.jpg"], "whole_body_images": ["001.jpg", "002.jpg"]
    })  # fmt: skip
    builder = rb.prepare("partial_ilids", str(ilids), data_dir=str(tmp_path / "tfds"))
    assert _rows(builder, "query") == [
        ("partial_body_images/001.jpg", 1, 0, -1),
        ("partial_body_images/002.jpg", 2, 0, -1),
    ]
    assert [r[1:3] for r in _rows(builder, "gallery")] == [(1, 1), (2, 1)]
    assert "use one of: bpbreid" in _error(
        tmp_path, "partial_ilids", ilids, builder_config="fastreid"
    )
    # the two layouts are the same, the names are not
    assert "cannot parse" in _error(tmp_path / "fresh", "partial_reid", ilids)


def test_bad_folders_say_where_they_looked_and_what_to_pass(tmp_path):
    missing = _error(tmp_path, "market1501", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in missing and "does not exist" in missing
    assert "--manual-dir" in missing and "--config.data.manual_dir=" in missing
    with pytest.raises(UserError, match=r"downloads/manual does not exist.*--manual-dir"):
        rb.prepare("market1501", None, data_dir=str(tmp_path / "tfds"))
    _tree(tmp_path / "a" / "b" / "Market-1501-v15.09.15", MARKET)
    grand = _error(tmp_path, "market1501", tmp_path / "a")
    assert f"{tmp_path / 'a'} does not hold Market-1501" in grand
    assert f"found {tmp_path / 'a' / 'b' / 'Market-1501-v15.09.15'}: pass that folder" in grand
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    unrelated = _error(tmp_path, "market1501", tmp_path / "other")
    assert "expected bounding_box_train/, query/, bounding_box_test/" in unrelated
    assert "it holds notes.txt" in unrelated
    assert "unknown dataset 'market'" in _error(tmp_path, "market", tmp_path)
    assert "unknown builder config 'v3'" in _error(
        tmp_path, "msmt17", tmp_path, builder_config="v3"
    )


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, monkeypatch):
    root = _tree(tmp_path / "Market-1501-v15.09.15", MARKET)
    for name in os.listdir(root / "query"):
        os.remove(root / "query" / name)
    assert f"{root / 'query'} holds no images" in _error(tmp_path, "market1501", root)
    os.rmdir(root / "query")
    assert "lacks query/" in _error(tmp_path, "market1501", root)
    _tree(root, {"query": ["0002_c4s1_000001_00.jpg", "walker.jpg"]})
    bad = _error(tmp_path, "market1501", root)
    assert f"cannot parse {root / 'query' / 'walker.jpg'}: expected Market-1501 names like" in bad
    os.remove(root / "query" / "walker.jpg")
    _image(root / "query" / "0002_c7s1_000001_00.jpg", 0)  # Market has cameras c1..c6
    assert "0002_c7s1_000001_00.jpg: expected" in _error(tmp_path, "market1501", root)
    os.remove(root / "query" / "0002_c7s1_000001_00.jpg")
    (root / "query" / "0007_c2s1_000003_00.jpg").write_bytes(b"")
    empty = _error(tmp_path, "market1501", root)
    assert f"{root / 'query' / '0007_c2s1_000003_00.jpg'} is empty (0 bytes)" in empty
    _image(root / "query" / "0007_c2s1_000003_00.jpg", 0)
    locked = str(root / "query" / "0007_c2s1_000003_00.jpg")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: p != locked and real_access(p, m))
    assert f"{locked} is not readable" in _error(tmp_path, "market1501", root)


def test_corrupt_images_are_skipped_warned_and_counted(tmp_path, capsys):
    root = _tree(tmp_path / "Market-1501-v15.09.15", MARKET)
    gallery = root / "bounding_box_test"
    (gallery / "0007_c6s1_000801_01.jpg").write_bytes(b"these bytes are no image")
    whole = (gallery / "0002_c6s1_000601_01.jpg").read_bytes()
    (gallery / "0002_c3s1_000901_01.jpg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG
    with pytest.warns(rb.CorruptImageWarning) as caught:
        builder = rb.prepare("market1501", str(root), data_dir=str(tmp_path / "tfds"))
    skipped = [
        "bounding_box_test/0002_c3s1_000901_01.jpg",
        "bounding_box_test/0007_c6s1_000801_01.jpg",
    ]
    assert rb.skipped_images(builder) == skipped
    messages = [str(w.message) for w in caught]
    assert any("skipped 2 corrupt image(s)" in m for m in messages)
    assert any(str(gallery / "0007_c6s1_000801_01.jpg") in m for m in messages)
    assert [r[0] for r in _rows(builder, "gallery")] == [
        f"bounding_box_test/{n}" for n in sorted(MARKET["bounding_box_test"])[2:]
    ]
    assert rb.split_summary(builder)["gallery"]["images"] == 4
    args = ["market1501", "--manual-dir", str(root), "--data-dir", str(tmp_path / "tfds")]
    assert prepare_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "skipped corrupt images: 2" in out and "gallery" in out and "dropped junk" in out


def test_prepare_cli_prints_only_json_and_fails_in_one_line(market, capsys):
    parent, data_dir, _ = market
    args = ["market1501", "--manual-dir", str(parent), "--data-dir", str(data_dir)]
    assert prepare_cli.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "train": {"images": 5, "ids": 3, "cams": 4},
        "query": {"images": 2, "ids": 2, "cams": 2},
        "gallery": {"images": 4, "ids": 3, "cams": 4},
    }
    bad = ["partial_reid", "--manual-dir", str(parent / "x"), "--data-dir", str(data_dir)]
    assert prepare_cli.main([*bad, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.startswith("error: Partial-REID not found") and captured.err.count("\n") == 1
    )
    with pytest.raises(SystemExit) as exit_info:
        prepare_cli.main(["market1501", "--bogus"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
