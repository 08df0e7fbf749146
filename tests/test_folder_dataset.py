"""Your own folder as a dataset: identity folders or split.csv, one-line errors, registration."""

import json
import os

import cv2
import numpy as np
import pytest

from occreid_jax.data import datasets, folder
from occreid_jax.data import prepare as prepare_cli
from occreid_jax.errors import UserError


def _image(path, value=0, size=(16, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))


def _identity_folders(root):
    """train: ids 7 (2 images) and 3; query: 3, 7; gallery: 3, 7 (one with a camera in its name)."""
    _image(root / "train/7/a.jpg", 10)
    _image(root / "train/7/b.png", 20)
    _image(root / "train/3/0003_c2s1_01.jpg", 30)
    _image(root / "query/3/q.png", 40)
    _image(root / "query/7/q.bmp", 50)
    _image(root / "gallery/3/0003_c5s2_02.png", 60)
    _image(root / "gallery/7/g.tif", 70)
    return root


def test_identity_folders_give_pids_cameras_and_train_labels(tmp_path):
    root = _identity_folders(tmp_path / "mine")
    builder = datasets.prepare("folder", "", str(tmp_path / "tfds"), str(root))
    train = datasets.load_split(builder, "train")
    assert list(train.filenames) == ["train/3/0003_c2s1_01.jpg", "train/7/a.jpg", "train/7/b.png"]
    assert list(train.pids) == [3, 7, 7] and list(train.labels) == [0, 1, 1]
    assert list(train.camids) == [1, 0, 0]  # _c2 -> camera 1 (0-based); else train camera 0
    gallery = datasets.load_split(builder, "gallery")
    assert list(gallery.pids) == [3, 7] and list(gallery.camids) == [4, 1]
    assert list(gallery.labels) == [-1, -1]
    query = datasets.load_split(builder, "query")
    assert list(query.camids) == [0, 0]
    # The same folder is not built twice; a changed folder is.
    assert datasets.prepare("folder", "", str(tmp_path / "tfds"), str(root)).data_dir == (
        builder.data_dir
    )
    _image(root / "gallery/7/h.jpg", 80)
    rebuilt = datasets.prepare("folder", "", str(tmp_path / "tfds"), str(root))
    assert rebuilt.data_dir != builder.data_dir
    assert len(datasets.load_split(rebuilt, "gallery")) == 3


def test_named_identities_and_split_csv(tmp_path):
    root = tmp_path / "named"
    _image(root / "query/bob/1.jpg")
    _image(root / "gallery/alice/1.jpg")
    _image(root / "gallery/bob/2.jpg")
    records = folder.list_identity_folders(str(root))
    assert [r.pid for r in records["gallery"]] == [0, 1]  # alice, bob: sorted names
    assert [r.pid for r in records["query"]] == [1]
    assert "train" not in records  # a test-only folder

    csv_root = tmp_path / "csv"
    for name in ("x/1.jpg", "x/2.jpg", "y/3.jpg"):
        _image(csv_root / name)
    (csv_root / "split.csv").write_text(
        "path,pid,camid,split\nx/1.jpg,5,0,train\nx/2.jpg,5,2,query\ny/3.jpg,5,3,gallery\n"
    )
    builder = datasets.prepare("folder", "", str(tmp_path / "tfds"), str(csv_root))
    query = datasets.load_split(builder, "query")
    assert list(query.filenames) == ["x/2.jpg"] and list(query.camids) == [2]
    assert list(datasets.load_split(builder, "train").labels) == [0]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"query/1/a.jpg": 1}, "has no gallery/ folder"),
        ({"query/1/a.jpg": 1, "gallery/2/": 0}, r"gallery/2 holds no images"),
        ({"query/1/a.jpg": 1, "gallery/b.jpg": 1}, r"gallery/b.jpg is not in an identity folder"),
        ({"split.csv": "path,pid,camid,split\nnope.jpg,1,0,query\n"}, r"line 2: .*nope.jpg does"),
        ({"split.csv": "path,pid,split\n"}, "the first line must be path,pid,camid,split"),
    ],
)
def test_bad_layouts_are_one_line_errors_naming_the_file(tmp_path, layout, message):
    root = tmp_path / "bad"
    root.mkdir()
    for name, content in layout.items():
        if name.endswith("/"):
            (root / name).mkdir(parents=True)
        elif name.endswith(".csv"):
            (root / name).write_text(content)
        else:
            _image(root / name)
    with pytest.raises(UserError, match=message) as error:
        datasets.prepare("folder", "", str(tmp_path / "tfds"), str(root))
    assert "\n" not in str(error.value)


def test_prepare_command_prints_the_split_table(tmp_path, capsys):
    root = _identity_folders(tmp_path / "mine")
    args = ["folder", "--manual-dir", str(root), "--data-dir", str(tmp_path / "tfds")]
    assert prepare_cli.main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "train": {"images": 3, "ids": 2, "cams": 2},
        "query": {"images": 2, "ids": 2, "cams": 1},
        "gallery": {"images": 2, "ids": 2, "cams": 2},
    }
    assert prepare_cli.main(["folder", "--data-dir", str(tmp_path / "tfds")]) == 2
    assert "manual_dir" in capsys.readouterr().err


def test_register_dataset_is_one_call(tmp_path, monkeypatch):
    root = _identity_folders(tmp_path / "mine")
    calls = []

    def prepare(builder_config, data_dir, manual_dir, strict):
        calls.append((builder_config, data_dir, manual_dir, strict))
        return folder.prepare(str(root), data_dir)

    monkeypatch.setattr(datasets, "REGISTERED", dict(datasets.REGISTERED))
    datasets.register_dataset("my_cameras", prepare, eval_sets={"mine": ("query", "gallery")})
    builder = datasets.prepare("my_cameras", "", str(tmp_path / "tfds"), "")
    assert len(datasets.load_split(builder, "query")) == 2
    assert calls == [("", str(tmp_path / "tfds"), "", False)]
    assert datasets.eval_sets("my_cameras") == {"mine": ("query", "gallery")}
    with pytest.raises(ValueError, match="built-in"):
        datasets.register_dataset("market1501", prepare)


def test_a_run_evaluates_on_a_folder_by_test_name(tiny_config, tmp_path):
    from occreid_jax.training.run import Run

    config = tiny_config("baseline")
    config.data.test_name = "folder"
    config.data.test_manual_dir = str(_identity_folders(tmp_path / "mine"))
    assert datasets.eval_sets(config.data.test_name) == {"folder": ("query", "gallery")}
    splits = Run(config, str(tmp_path / "run")).eval_splits
    assert sorted(splits) == ["gallery", "query"]
    assert list(splits["gallery"].pids) == [3, 7]


def test_a_file_name_that_is_not_utf8_is_one_line_and_nothing_is_written(tmp_path):
    root = _identity_folders(tmp_path / "mine")
    name = os.fsdecode(b"g\xff\xfe.png")  # a Latin-1 name from an old camera, say
    _image(root / "gallery" / "3" / "plain.png")  # (cv2.imwrite crashes on such a name)
    os.rename(root / "gallery" / "3" / "plain.png", root / "gallery" / "3" / name)
    with pytest.raises(UserError, match=r"b'.*g\\xff\\xfe.png': a file name that is not valid"):
        datasets.prepare("folder", "", str(tmp_path / "tfds"), str(root))
    assert not (tmp_path / "tfds").exists() or not any((tmp_path / "tfds").rglob("*.tfrecord*"))
