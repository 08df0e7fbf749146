"""The synthetic occluded Re-ID benchmark: determinism, split layout, keypoints and occluders."""

import re

import numpy as np
import pytest

from occreid_jax.data.synthetic import builder as synthetic
from occreid_jax.data.synthetic import render
from occreid_jax.errors import UserError


def _load(b) -> dict[str, list[dict]]:
    return {s: list(b.as_dataset(split=s).as_numpy_iterator()) for s in synthetic.SPLITS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, list[dict]]:
    return _load(synthetic.build("tiny", str(tmp_path_factory.mktemp("tfds_a"))))


def _pids(examples: list[dict]) -> set[int]:
    return {int(e["pid"]) for e in examples}


def test_two_builds_give_identical_examples_in_identical_order(tiny, tmp_path):
    again = _load(synthetic.build("tiny", str(tmp_path)))
    for split in synthetic.SPLITS:
        assert len(again[split]) == len(tiny[split]) > 0
        for a, b in zip(tiny[split], again[split], strict=True):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{split}/{k}")


def test_features_have_documented_shapes_and_types(tiny):
    ex = tiny["train"][0]
    assert ex["image"].shape == (128, 64, 3) and ex["image"].dtype == np.uint8
    assert ex["keypoints"].shape == (17, 3) and ex["keypoints"].dtype == np.float32
    assert ex["heatmaps"].shape == (32, 16, 17) and ex["heatmaps"].dtype == np.uint8
    assert ex["pid"].dtype == ex["camid"].dtype == ex["label"].dtype == np.int64
    assert ex["occlusion_fraction"].dtype == np.float32 and ex["occluded"].dtype == np.bool_


def test_filenames_encode_split_pid_camera_and_index(tiny):
    for split, examples in tiny.items():
        names = set()
        for e in examples:
            m = re.fullmatch(rf"{split}/(\d{{4}})_c(\d+)_(\d{{4}})\.png", e["filename"].decode())
            assert m, e["filename"]
            assert (int(m[1]), int(m[2]) - 1) == (e["pid"], e["camid"])
            names.add(e["filename"])
        assert len(names) == len(examples)


def test_train_and_test_identities_are_disjoint_and_gallery_has_distractors(tiny):
    train, query, gallery = _pids(tiny["train"]), _pids(tiny["query"]), _pids(tiny["gallery"])
    assert not train & (query | gallery)
    assert query <= gallery
    assert gallery - query  # distractors: gallery people nobody looks for


def test_the_gallery_is_stored_shuffled(tiny):
    """Not grouped by identity, so no tie order can leak the labels (evaluation/ties.py)."""
    pids = [int(e["pid"]) for e in tiny["gallery"]]
    changes = sum(a != b for a, b in zip(pids, pids[1:], strict=False))
    assert changes > len(set(pids))  # grouped storage changes id len(set) - 1 times


def test_train_labels_are_contiguous_in_sorted_pid_order(tiny):
    pairs = {(int(e["pid"]), int(e["label"])) for e in tiny["train"]}
    pids = sorted(p for p, _ in pairs)
    assert sorted(pairs) == [(p, i) for i, p in enumerate(pids)]
    assert all(e["label"] == -1 for s in ("query", "gallery", "query_holistic") for e in tiny[s])


def test_every_query_is_occluded_within_the_fraction_range(tiny):
    for e in tiny["query"]:
        assert e["occluded"] and 0.2 <= e["occlusion_fraction"] <= 0.6


@pytest.mark.parametrize("split", ["train", "gallery"])
def test_about_ten_percent_of_train_and_gallery_are_occluded(tiny, split):
    flags = np.array([e["occluded"] for e in tiny[split]])
    assert abs(flags.mean() - 0.1) < 0.05
    for e in tiny[split]:
        frac = e["occlusion_fraction"]
        assert 0.2 <= frac <= 0.6 if e["occluded"] else frac == 0.0


def test_every_query_has_a_positive_in_another_camera(tiny):
    gallery = {(int(e["pid"]), int(e["camid"])) for e in tiny["gallery"]}
    for q in tiny["query"]:
        assert any(p == q["pid"] and c != q["camid"] for p, c in gallery)


def test_holistic_queries_align_with_occluded_queries(tiny):
    assert len(tiny["query_holistic"]) == len(tiny["query"])
    for q, h in zip(tiny["query"], tiny["query_holistic"], strict=True):
        assert (q["pid"], q["camid"]) == (h["pid"], h["camid"])
        assert not h["occluded"] and h["occlusion_fraction"] == 0.0
        np.testing.assert_array_equal(q["keypoints"][:, :2], h["keypoints"][:, :2])
        assert np.all(h["keypoints"][:, 2] >= q["keypoints"][:, 2])
        assert q["filename"].split(b"/")[1] == h["filename"].split(b"/")[1]


def test_occluder_changes_the_pixels_of_hidden_keypoints_only(tiny):
    hidden_diffs, shown_diffs, hides_some = [], [], []
    for q, h in zip(tiny["query"], tiny["query_holistic"], strict=True):
        diff = np.abs(q["image"].astype(int) - h["image"].astype(int)).sum(-1)
        hidden = (h["keypoints"][:, 2] > 0) & (q["keypoints"][:, 2] == 0)
        hides_some.append(hidden.any())
        hidden_diffs += [diff[y, x] for x, y in q["keypoints"][hidden, :2].astype(int)]
        shown = q["keypoints"][:, 2] > 0
        shown_diffs += [diff[y, x] for x, y in q["keypoints"][shown, :2].astype(int)]
    assert np.mean(hides_some) > 0.9
    assert np.mean(np.array(hidden_diffs) > 15) > 0.9
    assert np.mean(np.array(shown_diffs) < 15) > 0.9  # only joints at the occluder's edge change


def test_heatmaps_peak_at_visible_keypoints_and_vanish_for_hidden_ones(tiny):
    for split in ("train", "query"):
        for e in tiny[split]:
            for k, (x, y, v) in enumerate(e["keypoints"]):
                hm = e["heatmaps"][..., k]
                if v == 0:
                    assert not hm.any()
                    continue
                r, c = np.unravel_index(np.argmax(hm), hm.shape)
                assert abs(c + 0.5 - x / 4) <= 1 and abs(r + 0.5 - y / 4) <= 1
                assert hm.max() > 150


def test_heatmap_of_a_keypoint_on_a_heatmap_pixel_centre():
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (10.0, 22.0, 1.0)  # heatmap coords (2.5, 5.5): centre of column 2, row 5
    kp[1] = (30.0, 30.0, 0.0)
    hm = render.keypoint_heatmaps(kp, 32, 16)
    assert hm.shape == (8, 4, 17)
    assert hm[5, 2, 0] == 255 and hm[5, 3, 0] == round(255 * np.exp(-0.5))
    assert not hm[..., 1:].any()


def test_a_config_with_a_bad_image_size_is_a_user_error():
    cfg = synthetic.SyntheticOccludedReidConfig(name="bad", image_height=130)
    with pytest.raises(UserError, match="multiples of 4"):
        cfg.validate()


def test_a_tracklet_keeps_view_and_background_while_the_walk_advances():
    rng = np.random.default_rng(0)
    camera = render.sample_camera(np.random.default_rng(1), 128, 64)
    identity = render.sample_identity(np.random.default_rng(2))
    frames = render.render_tracklet(rng, identity, camera, 128, 64, [False] * 4)
    assert len(frames) == 4
    shoulders = [np.sign(f.keypoints[5, 0] - f.keypoints[6, 0]) for f in frames]
    assert len(set(shoulders)) == 1  # one view
    moved = [np.abs(f.keypoints[:, :2] - frames[0].keypoints[:, :2]).max() for f in frames[1:]]
    assert min(moved) > 0.5  # the joints move from frame to frame (pixels)
    # Above the head only the background shows: the same window, so only noise differs.
    top = min(f.keypoints[:5, 1].min() for f in frames) - 16
    assert top > 4
    skies = [f.image[: int(top)].astype(np.float32) for f in frames]
    other = render.render_example(rng, identity, camera, 128, 64, occluded=False)
    same = np.mean([np.abs(s - skies[0]).mean() for s in skies[1:]])
    assert same < 0.5 * np.abs(other.image[: int(top)].astype(np.float32) - skies[0]).mean()


def test_side_view_tracklets_swing_the_legs_in_the_image_plane():
    """A front or back walk turned to the side: both shoulders at one image x (the skeleton
    puts them on the body's axis in side views), and the ankles' horizontal gap changes from
    frame to frame, where seen from the front it stays the hips' width."""
    camera = render.sample_camera(np.random.default_rng(1), 128, 64)
    identity = render.sample_identity(np.random.default_rng(2))
    seed = next(  # a walk the camera shows from the front or back
        s
        for s in range(50)
        for f in render.render_tracklet(
            np.random.default_rng(s), identity, camera, 128, 64, [False]
        )
        if abs(f.keypoints[5, 0] - f.keypoints[6, 0]) > 3
    )

    def walk(side_view):
        frames = render.render_tracklet(
            np.random.default_rng(seed),
            identity,
            camera,
            128,
            64,
            [False] * 5,
            phase_step=(0.8, 1.6),
            side_view=side_view,
        )
        shoulders = [abs(f.keypoints[5, 0] - f.keypoints[6, 0]) for f in frames]
        gaps = [f.keypoints[15, 0] - f.keypoints[16, 0] for f in frames]
        return max(shoulders), np.ptp(gaps)

    front_shoulders, front_gap_range = walk(False)
    side_shoulders, side_gap_range = walk(True)
    assert front_shoulders > 3 and side_shoulders < 1e-6
    assert side_gap_range > 5 and front_gap_range < 1  # pixels of the 128 x 64 image


def test_tracklets_change_only_the_train_split(tmp_path, tiny):
    config = synthetic.SyntheticOccludedReidConfig(
        **{**_tiny_fields(), "name": "tiny_tracklets", "tracklets": True}
    )
    walks = _load(synthetic.build(config, str(tmp_path)))
    for split in ("query", "gallery", "query_holistic"):
        for a, b in zip(tiny[split], walks[split], strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
    assert [e["filename"] for e in walks["train"]] == [e["filename"] for e in tiny["train"]]
    assert any(
        not np.array_equal(a["image"], b["image"])
        for a, b in zip(tiny["train"], walks["train"], strict=True)
    )


def _tiny_fields() -> dict:
    import dataclasses

    tiny_config = synthetic.SyntheticOccludedReid.builder_configs["tiny"]
    return {
        f.name: getattr(tiny_config, f.name)
        for f in dataclasses.fields(tiny_config)
        if f.init and f.name not in ("name", "description", "version", "release_notes")
    }
