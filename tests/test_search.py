"""Searching your own image folders with a bundle: top-k by blocks, files in, pictures out."""

import csv
import os
import types

import cv2
import numpy as np
import pytest

from occreid_jax import families, search
from occreid_jax.bundles import export, gallery_search
from occreid_jax.data import image_files
from occreid_jax.errors import UserError
from occreid_jax.evaluation import pirt_matching
from occreid_jax.evaluation.distances import pairwise_distance
from occreid_jax.pictures import rank_pictures


def _dense_top_k(d, k):
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.mark.parametrize("memory_mib", [1e-4, 256.0])  # gallery tiles of a few entries; whole
def test_top_k_by_global_feature_matches_a_dense_stable_sort(memory_mib):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(7, 5)).astype(np.float32)
    g = rng.normal(size=(23, 5)).astype(np.float32)
    g[10] = g[3]  # an exact tie: the lower gallery index ranks first
    q[2] = g[3]
    got_idx, got_d = gallery_search.top_k(
        families.get("baseline").matching, {"metric": "euclidean"}, {"global": q}, {"global": g},
        k=6, memory_mib=memory_mib,
    )  # fmt: skip
    want_idx, want_d = _dense_top_k(pairwise_distance(q, g, "euclidean"), 6)
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6, atol=1e-6)
    assert got_idx[2, 0] == 3 and got_idx[2, 1] == 10


def test_top_k_uses_the_models_own_rule(pirt_embeddings):
    rng = np.random.default_rng(1)
    q, g = pirt_embeddings(rng, 5), pirt_embeddings(rng, 12)
    settings = {"metric": "cosine", "top_n": 4}
    got_idx, got_d = gallery_search.top_k(
        families.get("pirt").matching, settings, q, g, k=20, memory_mib=1e-4
    )
    dense = pirt_matching.pirt_distance(q, g, {"top_n": 4})(slice(0, 5))
    want_idx, want_d = _dense_top_k(dense, 12)  # k is clipped to the gallery size
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6)


def _write_images(folder, rng, sizes):
    """Random-noise person crops of the given sizes in several formats; returns their paths."""
    paths = []
    for i, (h, w) in enumerate(sizes):
        ext = (".png", ".jpg", ".tif", ".bmp")[i % 4]
        path = os.path.join(folder, f"sub{i % 2}", f"img{i}{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_search_command_writes_ranks_features_pictures_and_page(tiny_bundle_dir, tmp_path, capsys):
    rng = np.random.default_rng(2)
    gallery = _write_images(str(tmp_path / "gallery"), rng, [(128, 64), (70, 30), (64, 32)] * 2)
    with open(tmp_path / "gallery" / "broken.jpg", "wb") as f:
        f.write(b"not an image")
    query_dir = tmp_path / "query"
    query_dir.mkdir()
    query = str(query_dir / "q0.png")
    cv2.imwrite(query, cv2.imread(gallery[4]))  # the same pixels as a gallery image
    out = str(tmp_path / "out")

    status = search.main(
        [f"--bundle={tiny_bundle_dir}", f"--query={query_dir}", "--gallery",
         str(tmp_path / "gallery"), "--top-k=3", f"--out={out}"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "skipped unreadable images: 1" in captured.err and "broken.jpg" in captured.err

    with open(os.path.join(out, "ranks.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", "rank", "gallery", "distance"]
    assert [r[1] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[1][2] == gallery[4] and abs(float(rows[1][3])) < 1e-4  # itself, distance ~0
    assert [float(r[3]) for r in rows[1:]] == sorted(float(r[3]) for r in rows[1:])

    features = np.load(os.path.join(out, "features.npz"))
    assert list(features["gallery_paths"]) == sorted(gallery)  # recursive, sorted, no broken
    # The features are the bundle's own, flip-averaged (the bundle says flip=True), of the
    # images resized to its input size.
    bundle = export.load(tiny_bundle_dir)
    same_size = sorted(gallery).index(gallery[2])  # stored at 64 x 32: no resize involved
    pixels = cv2.cvtColor(cv2.imread(gallery[2]), cv2.COLOR_BGR2RGB)[None].astype(np.float32)
    plain, mirrored = bundle.embed(pixels)["global"], bundle.embed(pixels[:, :, ::-1])["global"]
    np.testing.assert_allclose(
        features["gallery_features"][same_size], ((plain + mirrored) / 2)[0], atol=1e-4
    )

    pictures = [f for f in os.listdir(out) if f.endswith(".png")]
    assert pictures == ["00000_q0.png"]
    strip = cv2.imread(os.path.join(out, pictures[0]))
    panel_width = 2 * 32 + 2 * rank_pictures.BORDER  # 64 x 32 inputs drawn twice as large
    assert strip.shape[0] >= 128 and strip.shape[1] >= 4 * panel_width  # the query and 3
    with open(os.path.join(out, "index.html")) as f:
        page = f.read()
    assert 'src="00000_q0.png"' in page and "1 unreadable images skipped" in page


def test_search_errors_are_one_line(tiny_bundle_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rng = np.random.default_rng(3)
    _write_images(str(tmp_path / "g"), rng, [(64, 32)])
    args = [f"--bundle={tiny_bundle_dir}", f"--gallery={tmp_path / 'g'}", f"--out={tmp_path}/o"]
    assert search.main([f"--query={tmp_path / 'empty'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no query images") and err.count("\n") == 1
    assert search.main([f"--query={tmp_path / 'missing'}", *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        search.main(args)  # no --query
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--query" in err


def test_a_pose_guided_bundle_without_pose_names_the_flag(tmp_path):
    pirt = types.SimpleNamespace(model_name="pirt", model_kwargs={"use_pose": True})
    with pytest.raises(UserError, match="--pose=HRNET.pth"):
        gallery_search.embed_files(pirt, str(tmp_path))
    assert not gallery_search.needs_heatmaps("pirt", {"use_pose": False})
    assert gallery_search.needs_heatmaps("mat", {"keypoints": "heatmaps"})


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), np.zeros((8, 4, 3), np.uint8))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(image_files.UnreadableImageWarning, match="b.jpg"):
        encoded, kept, skipped = image_files.read_encoded([str(good), str(bad)])
    assert kept == [str(good)] and skipped == [str(bad)] and len(encoded) == 1


@pytest.mark.slow
def test_a_pirt_bundle_with_its_pose_net_searches_without_pose_flag(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """The pose net stored in the bundle (bundle_pose.py) sees the normalised images and Pirt
    gets its heatmaps. A one-layer stand-in takes HRNet's place: no HRNet checkpoint in tests."""
    import flax.linen as nn
    import jax

    from occreid_jax.bundles import bundle_pose
    from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD
    from occreid_jax.nets import convert

    class StandInPose(nn.Module):  # [B, H, W, 3] -> [B, H/4, W/4, 17] in (0, 1)
        @nn.compact
        def __call__(self, x, train):
            return nn.sigmoid(nn.Conv(17, (4, 4), strides=(4, 4), name="head")(x))

    monkeypatch.setitem(convert.ARCHS, "hrnet_w32", StandInPose)
    pose_variables = StandInPose().init(jax.random.PRNGKey(1), np.zeros((1, 64, 32, 3)), False)
    config = tiny_config("pirt")
    kwargs = families.model_kwargs(config, num_classes=4)
    model = families.build_model("pirt", **kwargs)
    rng = np.random.default_rng(5)
    heatmaps = rng.uniform(0, 1, (1, 16, 8, 17)).astype(np.float32)
    variables = model.init(
        jax.random.PRNGKey(0), np.zeros((1, 64, 32, 3), np.float32), train=False,
        heatmaps=heatmaps,
    )  # fmt: skip
    folder = export.write(
        str(tmp_path / "pirt"), model_name="pirt", model_kwargs=kwargs, variables=variables,
        image_size=(64, 32), matching={"metric": "cosine", "flip": False, "top_n": 100},
    )  # fmt: skip
    bundle_pose.write(folder, "hrnet_w32", pose_variables)
    paths = [str(tmp_path / "images" / f"{i}.png") for i in range(3)]  # lossless: same pixels
    os.makedirs(tmp_path / "images")
    for path in paths:
        cv2.imwrite(path, rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8))
    images = str(tmp_path / "images")
    out = str(tmp_path / "out")
    args = [f"--bundle={folder}", f"--query={images}", f"--gallery={images}", f"--out={out}"]
    assert search.main(args) == 0, capsys.readouterr().err

    bundle = export.load(folder)
    pixels = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths])
    pixels = pixels.astype(np.float32)
    normalized = ((pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    maps = StandInPose().apply(pose_variables, normalized, False)
    want = jax.device_get(bundle.embed(pixels, maps))
    got = np.load(os.path.join(out, "features.npz"))
    assert {"parts", "confidence"} <= set(want)
    for key in want:
        np.testing.assert_allclose(got[f"query_{key}"], want[key], atol=2e-4)
    with open(os.path.join(out, "ranks.csv")) as f:
        first = [row for row in csv.reader(f)][1]
    assert first[2] == first[0]  # each image finds itself first


def test_export_stores_the_pose_net_only_for_models_that_read_heatmaps(
    tiny_bundle_dir, tiny_config, tmp_path, monkeypatch
):
    from occreid_jax.bundles import bundle_pose
    from occreid_jax.nets import convert
    from occreid_jax.training import pose

    stored = {"params": {"w": np.arange(3.0)}}
    monkeypatch.setattr(pose, "load_pose_net", lambda config: (None, stored))
    config = tiny_config("pirt")
    config.pose.net = "hrnet_w32"
    assert bundle_pose.write_from_config(tiny_bundle_dir, config) == ""  # the baseline
    pirt = tmp_path / "pirt"
    pirt.mkdir()
    (pirt / "model.json").write_text('{"model": "pirt", "model_kwargs": {"use_pose": true}}')
    folder = bundle_pose.write_from_config(str(pirt), config)
    assert bundle_pose.find(str(pirt)) == folder
    module, variables = bundle_pose.load(folder)
    assert module == convert.build("hrnet_w32")  # the net named in pose.json
    np.testing.assert_array_equal(variables["params"]["w"], stored["params"]["w"])


def test_a_search_into_the_folder_of_an_earlier_one_says_so_and_drops_its_pictures(
    tiny_bundle_dir, tmp_path, capsys
):
    rng = np.random.default_rng(4)
    gallery = _write_images(str(tmp_path / "gallery"), rng, [(64, 32)] * 3)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, count in ((first, 2), (second, 1)):
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"{folder.name}{i}.png"), cv2.imread(gallery[i]))
    out = str(tmp_path / "out")
    for queries in (first, second):
        args = [f"--bundle={tiny_bundle_dir}", f"--query={queries}", f"--gallery={gallery[0]}",
                f"--out={out}"]  # fmt: skip
        assert search.main(args) == 0
    err = capsys.readouterr().err
    assert f"note: {out} held an earlier search: replaced (2 of its pictures" in err
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["00000_second0.png"]


def test_file_names_that_are_not_utf8_are_searched_and_written_as_they_are(
    tiny_bundle_dir, tmp_path
):
    rng = np.random.default_rng(6)
    gallery = _write_images(str(tmp_path / "gallery"), rng, [(64, 32)] * 2)
    odd = os.path.join(str(tmp_path / "gallery"), os.fsdecode(b"caf\xe9.png"))  # Latin-1 bytes
    os.rename(gallery[0], odd)
    out = str(tmp_path / "out")
    args = [f"--bundle={tiny_bundle_dir}", f"--query={gallery[1]}", f"--gallery={tmp_path}/gallery",
            f"--out={out}"]  # fmt: skip
    assert search.main(args) == 0
    with open(os.path.join(out, "ranks.csv"), "rb") as f:
        table = f.read()
    assert os.fsencode(odd) in table  # the very bytes of the name: the file can be opened
    assert list(np.load(os.path.join(out, "features.npz"))["gallery_paths"]).count(odd) == 1
