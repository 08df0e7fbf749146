"""Heatmap store: resumable precompute, refusal of a mismatched store, and the round trip through
the training pipeline (flips and crops move every joint's peak with its keypoint)."""

import numpy as np
import pytest

from occreid_jax.data import datasets, heatmap_store, pipeline
from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.errors import UserError

SIZE = (128, 64)


@pytest.fixture(scope="module")
def train_split(tiny_data_dir):
    builder = datasets.prepare("synthetic", "tiny", tiny_data_dir)
    return datasets.load_split(builder, "train", with_heatmaps=True)


def _ground_truth_pose_fn(split, calls):
    """Stands in for the pose net: returns the split's ground-truth heatmaps in order."""
    position = {"next": 0}

    def pose_fn(images):
        calls.append(position["next"])
        count = images.shape[0] * images.shape[1]
        index = np.arange(position["next"], position["next"] + count) % len(split)
        position["next"] += count
        maps = split.heatmaps[index].astype(np.float32) / 255.0
        return maps.reshape(*images.shape[:2], *maps.shape[1:])

    return pose_fn, position


def _interrupted_after(pose_fn, calls, batches):
    """`pose_fn`, but Ctrl-C arrives when it is called for the (batches + 1)-th time."""

    def failing(images):
        if len(calls) == batches:
            raise KeyboardInterrupt
        return pose_fn(images)

    return failing


def _precompute(store, split, pose_fn, batch_size=8):
    batches = pipeline.eval_batches(split, image_size=SIZE, batch_size=batch_size, num_devices=2)
    heatmap_store.precompute(store, "train", split.filenames, batches, pose_fn, batch_size, chunk=8)


def test_interrupted_precompute_resumes_and_stores_exact_heatmaps(train_split, tmp_path):
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    calls = []
    pose_fn, position = _ground_truth_pose_fn(train_split, calls)

    failing = _interrupted_after(pose_fn, calls, batches=3)

    with pytest.raises(KeyboardInterrupt):
        _precompute(store, train_split, failing)
    # Reopen (as a new run would) and continue: only the missing batches are computed.
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    done = store.done("train")
    assert 0 < done < len(train_split)
    calls.clear()
    position["next"] = done
    _precompute(store, train_split, pose_fn)
    assert calls[0] == done
    stored = store.read("train", train_split.filenames)
    assert stored.dtype == np.float16 and stored.shape == (len(train_split), 32, 16, 17)
    np.testing.assert_allclose(stored, train_split.heatmaps / 255.0, atol=1e-3)


def test_a_store_of_another_pose_net_or_size_is_refused(tmp_path):
    heatmap_store.HeatmapStore(str(tmp_path / "s"), "hrnet_w48", (256, 128))
    with pytest.raises(UserError, match="pose_net"):
        heatmap_store.HeatmapStore(str(tmp_path / "s"), "hrnet_w32", (256, 128))
    with pytest.raises(UserError, match="image_size"):
        heatmap_store.HeatmapStore(str(tmp_path / "s"), "hrnet_w48", (384, 128))
    with pytest.raises(UserError, match="run --mode=heatmaps"):
        heatmap_store.HeatmapStore(str(tmp_path / "s"), "hrnet_w48", (256, 128)).read("q", ["a"])


def test_a_store_of_other_images_is_refused(train_split, tmp_path):
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    _precompute(store, train_split, _ground_truth_pose_fn(train_split, [])[0])
    renamed = list(train_split.filenames[::-1])
    with pytest.raises(UserError, match="missing, incomplete .* or of other images"):
        store.read("train", renamed)
    with pytest.raises(UserError, match="holds split 'train' of other images"):
        store.write("train", renamed, iter([]))
    # Deleting the array, as the message says, lets the other images be stored.
    (tmp_path / "store" / "train.npy").unlink()
    store.write("train", renamed, iter([]))
    assert store.done("train") == 0


def test_stored_heatmaps_follow_flips_and_crops_in_the_pipeline(train_split, tmp_path):
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    _precompute(store, train_split, _ground_truth_pose_fn(train_split, [])[0])
    train_split.heatmaps = store.read("train", train_split.filenames)
    sampler = IdentitySampler(train_split.labels, 8, 4, num_devices=2, seed=1)
    batches = pipeline.train_batches(
        train_split, sampler, start_step=0, image_size=SIZE, num_devices=2, pad=10,
        flip_prob=0.5, erasing_prob=0.5, seed=4, with_heatmaps=True, with_keypoints=True,
    )  # fmt: skip
    checked, flipped_pairs = 0, 0
    for _ in range(3):
        batch = next(batches)
        maps = batch["heatmaps"].reshape(-1, 32, 16, 17)
        points = batch["keypoints"].reshape(-1, 17, 3)
        for example_maps, example_points in zip(maps, points, strict=True):
            for joint in range(17):
                x, y, visible = example_points[joint]
                inside = 2 <= x < SIZE[1] - 2 and 2 <= y < SIZE[0] - 2
                if not visible or not inside or example_maps[..., joint].max() < 0.5:
                    continue
                row, col = np.unravel_index(np.argmax(example_maps[..., joint]), (32, 16))
                assert abs(col + 0.5 - x / 4) <= 1.0 and abs(row + 0.5 - y / 4) <= 1.0
                checked += 1
            # Left joints of a flipped person lie on the image's left for a front view and
            # vice versa; count examples where the left shoulder is right of the right one.
            flipped_pairs += int(example_points[5, 0] > example_points[6, 0])
    assert checked > 100
    assert flipped_pairs > 0


def test_a_deleted_array_is_recomputed_from_the_start(train_split, tmp_path):
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    calls = []
    pose_fn, _ = _ground_truth_pose_fn(train_split, calls)

    failing = _interrupted_after(pose_fn, calls, batches=3)

    with pytest.raises(KeyboardInterrupt):
        _precompute(store, train_split, failing)
    (tmp_path / "store" / "train.npy").unlink()
    store = heatmap_store.HeatmapStore(str(tmp_path / "store"), "ground_truth", SIZE)
    pose_fn, _ = _ground_truth_pose_fn(train_split, [])
    _precompute(store, train_split, pose_fn)
    np.testing.assert_allclose(
        store.read("train", train_split.filenames), train_split.heatmaps / 255.0, atol=1e-3
    )
