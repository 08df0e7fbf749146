"""tf.data pipelines on the tiny synthetic set: batches hold the sampled examples, aligned."""

import numpy as np
import pytest
import tensorflow as tf

from occreid_jax.data import augment, datasets, pipeline
from occreid_jax.data.sampler import IdentitySampler


@pytest.fixture(scope="module")
def builder(tiny_data_dir):
    return datasets.prepare("synthetic", "tiny", tiny_data_dir)


def test_train_batches_carry_the_sampled_images_labels_and_heatmaps(builder):
    split = datasets.load_split(builder, "train", with_heatmaps=True)
    sampler = IdentitySampler(split.labels, batch_size=8, instances_per_id=4, num_devices=2)
    batches = pipeline.train_batches(
        split, sampler, start_step=1, image_size=(128, 64), num_devices=2, pad=0,
        flip_prob=0.0, erasing_prob=0.0, seed=0, with_heatmaps=True,
    )  # fmt: skip
    batch = next(batches)
    indices = sampler.epoch(0)[1]  # resumed at step 1
    assert batch["images"].shape == (2, 4, 128, 64, 3)
    assert batch["heatmaps"].shape == (2, 4, 32, 16, 17)
    np.testing.assert_array_equal(batch["labels"].reshape(-1), split.labels[indices])
    for slot, index in enumerate(indices):
        decoded = tf.io.decode_png(split.images[index]).numpy().astype(np.float32)
        expected = augment.normalize(tf.constant(decoded)).numpy()
        np.testing.assert_allclose(
            batch["images"].reshape(8, 128, 64, 3)[slot], expected, atol=1e-5
        )
        np.testing.assert_allclose(
            batch["heatmaps"].reshape(8, 32, 16, 17)[slot], split.heatmaps[index] / 255.0, atol=1e-6
        )


def test_train_batches_resize_images_and_heatmaps_together(builder):
    split = datasets.load_split(builder, "train", with_heatmaps=True)
    sampler = IdentitySampler(split.labels, batch_size=8, instances_per_id=4, num_devices=2)
    batch = next(
        pipeline.train_batches(
            split, sampler, start_step=0, image_size=(64, 32), num_devices=2, pad=4,
            flip_prob=0.5, erasing_prob=0.5, seed=0, with_heatmaps=True,
        )
    )  # fmt: skip
    assert batch["images"].shape == (2, 4, 64, 32, 3)
    assert batch["heatmaps"].shape == (2, 4, 16, 8, 17)
    assert batch["heatmaps"].min() >= 0.0 and batch["heatmaps"].max() <= 1.0


def test_eval_batches_keep_order_and_mask_the_padding(builder):
    split = datasets.load_split(builder, "query", with_heatmaps=False)
    batches = list(pipeline.eval_batches(split, image_size=(128, 64), batch_size=4, num_devices=2))
    masks = np.concatenate([b["mask"].reshape(-1) for b in batches])
    assert masks.sum() == len(split) and masks[: len(split)].all()
    images = np.concatenate([b["images"].reshape(-1, 128, 64, 3) for b in batches])[masks]
    last = tf.io.decode_png(split.images[-1]).numpy().astype(np.float32)
    np.testing.assert_allclose(images[-1], augment.normalize(tf.constant(last)), atol=1e-5)


def test_each_process_reads_its_devices_rows_of_the_global_batch(builder):
    """2 processes x 2 devices: the processes' batches, side by side, are the batch one process
    with 4 devices reads, bit for bit (the same images, labels and augmentations)."""
    split = datasets.load_split(builder, "train", with_heatmaps=False)
    sampler = IdentitySampler(split.labels, batch_size=16, instances_per_id=2, num_devices=4)
    common = dict(start_step=1, image_size=(64, 32), num_devices=4, pad=4, flip_prob=0.5,
                  erasing_prob=0.5, seed=3)  # fmt: skip
    whole = next(pipeline.train_batches(split, sampler, **common))
    parts = [next(pipeline.train_batches(split, sampler, **common, shard=(p, 2))) for p in (0, 1)]
    assert parts[0]["images"].shape == (2, 4, 64, 32, 3)
    for key in ("images", "labels"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])

    query = datasets.load_split(builder, "query", with_heatmaps=False)
    whole = list(pipeline.eval_batches(query, image_size=(64, 32), batch_size=8, num_devices=4))
    for index in (0, 1):
        part = list(
            pipeline.eval_batches(
                query, image_size=(64, 32), batch_size=8, num_devices=4, shard=(index, 2)
            )
        )
        assert len(part) == len(whole)  # every process runs as many batches (lockstep)
        _, mask = pipeline.eval_rows(len(query), 8, 4, (index, 2))
        for got, expected in zip(part, whole, strict=True):
            np.testing.assert_array_equal(
                got["images"], expected["images"][2 * index : 2 * index + 2]
            )
            np.testing.assert_array_equal(got["mask"], expected["mask"][2 * index : 2 * index + 2])
        masks = np.concatenate([b["mask"].reshape(-1) for b in part])
        np.testing.assert_array_equal(masks, mask)
    rows = [pipeline.eval_rows(len(query), 8, 4, (p, 2)) for p in (0, 1)]
    positions = np.concatenate([order[mask] for order, mask in rows])  # each image once
    np.testing.assert_array_equal(np.sort(positions), np.arange(len(query)))


def test_pair_geometry_crops_and_flips_the_second_image_like_the_first(builder):
    """An identity with one image gives a group of four copies: with `pair_geometry` the
    first two are augmented alike, the others independently (pad 8, flip 0.5)."""
    split = datasets.load_split(builder, "train", with_heatmaps=False)
    labels = np.where(np.arange(len(split)) == 0, 0, 1 + np.arange(len(split)) % 2)
    sampler = IdentitySampler(labels, batch_size=4, instances_per_id=4, seed=0)
    common = dict(
        start_step=0, image_size=(128, 64), num_devices=1, pad=8, flip_prob=0.5,
        erasing_prob=0.0, seed=0, with_keypoints=True,
    )  # fmt: skip
    while sampler.epoch(0)[0][0] != 0:  # the first batch must be the one-image identity
        sampler.seed += 1
    paired = next(pipeline.train_batches(split, sampler, **common, pair_geometry=True))
    plain = next(pipeline.train_batches(split, sampler, **common))
    images, points = paired["images"][0], paired["keypoints"][0]
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(points[0], points[1])
    np.testing.assert_array_equal(images[0], plain["images"][0][0])
    assert any(not np.array_equal(points[0], points[k]) for k in (2, 3))
    assert not np.array_equal(plain["keypoints"][0][0], plain["keypoints"][0][1])
