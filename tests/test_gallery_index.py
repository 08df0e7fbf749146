"""A gallery indexed once, searched many times: the same ranked lists as a plain search, runs
that resume and grow, and one-line errors for a wrong bundle, a changed image or a damaged
index."""

import csv
import os
import shutil

import cv2
import numpy as np
import pytest

from occreid_jax import families, search
from occreid_jax import index as index_command
from occreid_jax.bundles import gallery_index, gallery_search, index_search


def _write(path, rng, size=(64, 32)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return path


@pytest.fixture()
def gallery(tmp_path):
    """12 images in two folders, two of them pixel copies of others (exact ties)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "gallery"
    paths = [_write(str(root / f"cam{i % 2}" / f"p{i:02d}.png"), rng) for i in range(10)]
    shutil.copy(paths[3], root / "cam0" / "z_copy_of_3.png")
    shutil.copy(paths[6], root / "a_copy_of_6.png")
    query = tmp_path / "query"
    query.mkdir()
    shutil.copy(paths[3], query / "q0.png")
    _write(str(query / "q1.png"), rng, (90, 40))
    return root, query


def _ranks(out):
    with open(os.path.join(out, "ranks.csv")) as f:
        rows = list(csv.reader(f))[1:]
    return [(os.path.abspath(q), r, os.path.abspath(g), d) for q, r, g, d in rows]


def _index(bundle, root, out, capsys=None, *extra):
    status = index_command.main([f"--bundle={bundle}", f"--gallery={root}", f"--out={out}", *extra])
    err = capsys.readouterr() if capsys is not None else None
    return status, err


def _search(bundle, query, out, *gallery_args):
    args = [f"--bundle={bundle}", f"--query={query}", "--top-k=12", f"--out={out}"]
    assert search.main([*args, *gallery_args]) == 0


def test_an_index_ranks_like_a_search_of_the_folder_and_grows(
    tiny_bundle_dir, gallery, tmp_path, capsys
):
    root, query = gallery
    index = str(tmp_path / "g.index")
    status, err = _index(tiny_bundle_dir, root, index, capsys, "--chunk-size=5")
    assert status == 0, err
    assert "12 images (12 new" in err.out
    assert len(gallery_index.read_manifest(index)["chunks"]) == 3  # 5 + 5 + 2
    _search(tiny_bundle_dir, query, str(tmp_path / "plain"), f"--gallery={root}")
    _search(tiny_bundle_dir, query, str(tmp_path / "indexed"), f"--index={index}")
    plain = _ranks(str(tmp_path / "plain"))
    assert _ranks(str(tmp_path / "indexed")) == plain  # paths, order, distances as printed
    q0 = [(g, d) for q, _, g, d in plain if q.endswith("q0.png")]
    # An exact tie: the copy in cam0/ comes first in the folders' order (cam0/ before cam1/).
    assert q0[0][0].endswith("cam0/z_copy_of_3.png") and q0[1][0].endswith("cam1/p03.png")
    assert q0[0][1] == q0[1][1]

    # A new image that sorts first: only it is embedded; the lists still equal a plain search.
    _write(str(root / "cam0" / "a_new.png"), np.random.default_rng(5))
    status, err = _index(tiny_bundle_dir, root, index, capsys, "--chunk-size=5")
    assert status == 0 and "13 images (1 new, 0 changed and embedded again, 12 kept" in err.out
    _search(tiny_bundle_dir, query, str(tmp_path / "plain2"), f"--gallery={root}")
    _search(tiny_bundle_dir, query, str(tmp_path / "indexed2"), f"--index={index}")
    assert _ranks(str(tmp_path / "indexed2")) == _ranks(str(tmp_path / "plain2"))


def test_an_interrupted_index_goes_on_from_its_committed_chunks(
    tiny_bundle_dir, gallery, tmp_path, capsys, monkeypatch
):
    root, _ = gallery
    index = str(tmp_path / "g.index")
    commit = gallery_index.commit_chunk
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        commit(*args)

    monkeypatch.setattr(gallery_index, "commit_chunk", interrupted)
    status, err = _index(tiny_bundle_dir, root, index, capsys, "--chunk-size=4")
    assert status == 130 and "interrupted: the chunks committed so far are kept" in err.err
    assert len(gallery_index.open_index(index).live) == 4
    monkeypatch.setattr(gallery_index, "commit_chunk", commit)
    status, err = _index(tiny_bundle_dir, root, index, capsys, "--chunk-size=4")
    assert status == 0 and "12 images (8 new" in err.out and "4 kept" in err.out


def test_changed_gone_and_foreign_inputs_give_one_line(tiny_bundle_dir, gallery, tmp_path, capsys):
    root, query = gallery
    index = str(tmp_path / "g.index")
    assert _index(tiny_bundle_dir, root, index, capsys)[0] == 0
    out = str(tmp_path / "out")

    def search_error(*extra):
        status = search.main([f"--bundle={tiny_bundle_dir}", f"--query={query}", f"--out={out}",
                              *extra])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert status == 2 and "\n" not in err and "Traceback" not in err, err
        return err

    changed = str(root / "cam1" / "p05.png")
    _write(changed, np.random.default_rng(9), (70, 30))
    assert "changed since indexed" in search_error(f"--index={index}")
    status, err = _index(tiny_bundle_dir, root, index, capsys)
    assert status == 0 and "1 changed and embedded again" in err.out
    os.remove(str(root / "cam0" / "p04.png"))
    assert "gone from the disk" in search_error(f"--index={index}")
    status, err = _index(tiny_bundle_dir, root, index, capsys)
    assert status == 0 and "11 images" in err.out and "1 gone from the gallery" in err.out
    _search(tiny_bundle_dir, query, str(tmp_path / "ok"), f"--index={index}")
    broken = root / "cam1" / "p07.png"
    broken.write_bytes(b"not an image any more")
    status, err = _index(tiny_bundle_dir, root, index, capsys)
    assert status == 0 and "10 images" in err.out and "1 unreadable and left out" in err.out
    assert "skipping unreadable image" in err.err and str(broken) in err.err
    _search(tiny_bundle_dir, query, str(tmp_path / "ok2"), f"--index={index}")  # not "changed"

    assert "not both" in search_error(f"--index={index}", f"--gallery={root}")
    assert "is not a gallery index" in search_error(f"--index={root}")
    other = str(tmp_path / "other_bundle")
    shutil.copytree(tiny_bundle_dir, other)
    with open(os.path.join(other, "model.json")) as f:
        text = f.read()
    with open(os.path.join(other, "model.json"), "w") as f:
        f.write(text.replace('"flip": true', '"flip": false'))
    status = search.main([f"--bundle={other}", f"--query={query}", f"--out={out}",
                          f"--index={index}"])  # fmt: skip
    assert status == 2 and "made with another bundle" in capsys.readouterr().err
    chunk = os.path.join(index, "chunks", "00000", "global.npy")
    with open(chunk, "r+b") as f:
        f.truncate(os.path.getsize(chunk) - 64)
    assert "is damaged (chunk 00000" in search_error(f"--index={index}")
    status, err = _index(tiny_bundle_dir, root, str(tmp_path / "gallery"), capsys)
    assert status == 2 and "holds other files" in err.err


def test_float16_storage_halves_the_arrays_and_keeps_the_nearest(
    tiny_bundle_dir, gallery, tmp_path, capsys
):
    root, query = gallery
    index = str(tmp_path / "g16.index")
    assert _index(tiny_bundle_dir, root, index, capsys, "--storage=float16")[0] == 0
    array = np.load(os.path.join(index, "chunks", "00000", "global.npy"), mmap_mode="r")
    assert array.dtype == np.float16
    status, err = _index(tiny_bundle_dir, root, index, capsys)  # float32 asked: one line
    assert status == 2 and "stores float16; pass --storage=float16" in err.err
    _search(tiny_bundle_dir, query, str(tmp_path / "half"), f"--index={index}")
    nearest = [g for q, r, g, _ in _ranks(str(tmp_path / "half")) if q.endswith("q0.png")]
    assert {os.path.basename(p) for p in nearest[:2]} == {"p03.png", "z_copy_of_3.png"}


def test_an_own_rule_ranks_the_index_like_the_in_memory_gallery(tmp_path, pirt_embeddings):
    """Pirt's top-N rule over features committed in chunks out of gallery order."""
    rng = np.random.default_rng(1)
    q, g = pirt_embeddings(rng, 5), pirt_embeddings(rng, 9)
    folder = tmp_path / "imgs"
    paths = [_write(str(folder / f"{i}.png"), rng, (8, 4)) for i in range(9)]
    index = str(tmp_path / "rule.index")
    os.makedirs(index)
    manifest = gallery_index.new_manifest("x", [str(folder)], "float32")
    gallery_index.remove_uncommitted(index, manifest)
    for rows in ([5, 6, 7, 8], [0, 1, 2, 3, 4]):  # the later chunk holds the first images
        stamps = [gallery_index.file_stamp(paths[r]) for r in rows]
        gallery_index.commit_chunk(index, manifest, stamps, {k: v[rows] for k, v in g.items()})
    opened = gallery_index.open_index(index)
    ordered = index_search.OrderedGallery(opened, paths, [])
    settings = {"metric": "cosine", "top_n": 4}
    matching = families.get("pirt").matching
    got = index_search.index_top_k(ordered, matching, settings, q, 6)
    want = gallery_search.top_k(matching, settings, q, g, 6)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("command", "flag", "expected"),
    [
        (search, "--batch-size=0", "--batch-size: must be >= 1, got 0"),
        (search, "--memory-mib=nan", "--memory-mib: must be a finite number > 0, got nan"),
        (search, "--memory-mib=-2", "--memory-mib: must be a finite number > 0, got -2"),
        (search, "--top-k=ten", "--top-k: not a whole number: 'ten'"),
        (search, "--pose-net=hrnet_w99", "--pose-net: invalid choice: 'hrnet_w99'"),
        (index_command, "--chunk-size=0", "--chunk-size: must be >= 1, got 0"),
        (index_command, "--storage=int8", "--storage: invalid choice: 'int8'"),
    ],
)
def test_numeric_and_choice_flags_are_checked_before_any_work(command, flag, expected, capsys):
    args = ["--bundle=B", "--gallery=G", "--out=O", "--query=Q", flag]
    if command is index_command:
        args.remove("--query=Q")
    with pytest.raises(SystemExit) as stop:
        command.main(args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and expected in err, err


def test_an_out_path_that_is_a_file_or_read_only_stops_before_any_embedding(
    tmp_path, capsys, monkeypatch
):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["--bundle=missing", "--query=Q", "--gallery=G"]
    assert search.main([*base, f"--out={afile}"]) == 2  # (before the bundle is even read)
    assert "is a file; pass a folder" in capsys.readouterr().err
    assert index_command.main(["--bundle=B", "--gallery=G", f"--out={afile}"]) == 2
    assert "is a file; the index is a folder" in capsys.readouterr().err
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("occreid_jax.errors.tempfile.mkstemp", refuse)  # a read-only mount
    assert search.main([*base, f"--out={tmp_path / 'out'}"]) == 2
    assert "is not writable (Read-only file system)" in capsys.readouterr().err
