"""Augmentations keep image and heatmaps aligned (eagerly and inside tf.data)."""

import numpy as np
import pytest
import tensorflow as tf

from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD, augment

H, W = 128, 64
JOINT = 7  # left elbow; its mirror is 8 (right elbow)


def _scene(x: float, y: float):
    """An image with a bright 4x4 blob centred at (x, y) and a heatmap peak for JOINT there."""
    image = np.zeros((H, W, 3), np.float32)
    x0, y0 = int(x) - 2, int(y) - 2
    image[y0 : y0 + 4, x0 : x0 + 4] = 255.0
    hy, hx = np.mgrid[0 : H // 4, 0 : W // 4] + 0.5  # heatmap pixel centres
    heatmaps = np.zeros((H // 4, W // 4, 17), np.float32)
    heatmaps[..., JOINT] = np.exp(-((hx - x / 4) ** 2 + (hy - y / 4) ** 2) / 2.0)
    return tf.constant(image), tf.constant(heatmaps)


def _centroid(weights: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]] + 0.5
    total = weights.sum()
    return np.array([(xs * weights).sum() / total, (ys * weights).sum() / total])


def _check_aligned(image, heatmaps):
    """Returns the joint channel holding the peak; asserts peak = blob / 4 within 1 heatmap px."""
    image, heatmaps = np.asarray(image), np.asarray(heatmaps)
    blob = _centroid((image[..., 0] > 128).astype(np.float32))
    channel = int(np.argmax(heatmaps.reshape(-1, 17).max(0)))
    peak = _centroid(np.maximum(heatmaps[..., channel] - 0.5, 0))
    np.testing.assert_allclose(peak * 4, blob, atol=4.0)
    return channel, blob


@pytest.mark.parametrize("seed", range(6))
def test_pad_and_crop_moves_heatmaps_with_the_image(seed):
    image, heatmaps = _scene(30.0, 60.0)
    out_image, out_maps, _ = augment.pad_and_crop(image, heatmaps, tf.constant([seed, 1]), pad=10)
    channel, blob = _check_aligned(out_image, out_maps)
    assert channel == JOINT
    assert np.all(np.abs(blob - [30.0, 60.0]) <= 10.0)  # moved by at most the padding


def test_whole_pixel_shift_equals_the_bilinear_translate_at_every_offset():
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (H, W, 3)).astype(np.float32))
    for dx in range(-3, 4):
        for dy in (-3, 0, 2):
            expected = augment.translate(image, float(dx), float(dy))
            got = augment.shift(image, tf.constant(dx), tf.constant(dy), pad=3)
            np.testing.assert_array_equal(got, expected)
    moved = np.asarray(augment.shift(image, tf.constant(2), tf.constant(-1), pad=3))
    np.testing.assert_array_equal(moved[1:, : W - 2], np.asarray(image)[:-1, 2:])  # by hand
    assert not moved[0].any() and not moved[:, W - 2 :].any()  # zeros shifted in


def test_flip_mirrors_and_swaps_left_right_joints():
    image, heatmaps = _scene(20.0, 50.0)
    out_image, out_maps, _ = augment.flip(image, heatmaps, tf.constant(True))
    channel, blob = _check_aligned(out_image, out_maps)
    assert channel == augment.COCO_FLIP_PERMUTATION[JOINT] == 8
    np.testing.assert_allclose(blob, [W - 20.0, 50.0], atol=0.5)
    same_image, same_maps, _ = augment.flip(image, heatmaps, tf.constant(False))
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_maps, heatmaps)


def test_flip_permutation_is_the_coco_left_right_swap():
    perm = np.asarray(augment.COCO_FLIP_PERMUTATION)
    np.testing.assert_array_equal(perm[perm], np.arange(17))  # an involution
    assert perm[0] == 0 and perm[5] == 6 and perm[11] == 12 and perm[16] == 15


def test_random_erasing_fills_a_box_with_the_mean_and_leaves_the_rest():
    image = tf.fill([H, W, 3], 7.0)
    out = np.asarray(augment.random_erasing(image, tf.constant([0, 3]), prob=1.0))
    erased = np.any(out != 7.0, axis=-1)
    assert 0.02 * H * W * 0.8 <= erased.sum() <= 0.4 * H * W * 1.2
    rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
    assert erased[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all(), "one rectangle"
    np.testing.assert_allclose(out[erased], np.broadcast_to(IMAGENET_MEAN, out[erased].shape))
    untouched = augment.random_erasing(image, tf.constant([0, 3]), prob=0.0)
    np.testing.assert_array_equal(untouched, image)


def test_full_chain_inside_tf_data_is_aligned_and_deterministic():
    image, heatmaps = _scene(32.0, 64.0)
    seeds = tf.stack([tf.zeros(24, tf.int64), tf.range(24, dtype=tf.int64)], axis=1)

    def chain(seed, erasing):
        out_image, out_maps, _ = augment.train_augment(
            image, heatmaps, seed, pad=10, flip_prob=0.5, erasing_prob=erasing
        )
        # Undo the normalisation to find the blob again.
        return out_image * IMAGENET_STD + IMAGENET_MEAN, out_maps

    ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: chain(s, 0.0))
    channels = set()
    for out_image, out_maps in ds.as_numpy_iterator():
        channel, _ = _check_aligned(out_image, out_maps)
        channels.add(channel)
    assert channels == {7, 8}, "some samples flipped, some not"
    # Same seed, same result; erasing reaches the image only, never the heatmaps.
    a_img, a_maps = chain(seeds[3], 1.0)
    b_img, b_maps = chain(seeds[3], 1.0)
    np.testing.assert_array_equal(a_img, b_img)
    _, plain_maps = chain(seeds[3], 0.0)
    np.testing.assert_array_equal(a_maps, plain_maps)


def test_normalize_matches_imagenet_statistics():
    pixel = tf.constant([[[123.675 + 58.395, 116.28, 103.53 - 57.375]]])
    np.testing.assert_allclose(augment.normalize(pixel), [[[1.0, 0.0, -1.0]]], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_keypoints_move_with_the_image(seed):
    image, heatmaps = _scene(30.0, 60.0)
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[JOINT] = [30.0, 60.0, 1.0]
    out_image, _, out_kp = augment.train_augment(
        image, heatmaps, tf.constant([seed, 9]), pad=10, flip_prob=0.5, erasing_prob=0.0,
        keypoints=tf.constant(keypoints),
    )  # fmt: skip
    out_image = np.asarray(out_image * IMAGENET_STD + IMAGENET_MEAN)
    blob = _centroid((out_image[..., 0] > 128).astype(np.float32))
    joint = int(np.flatnonzero(np.asarray(out_kp)[:, 2])[0])
    assert joint in (JOINT, augment.COCO_FLIP_PERMUTATION[JOINT])
    np.testing.assert_allclose(np.asarray(out_kp)[joint, :2], blob, atol=0.5)


def test_random_erasing_without_a_fitting_box_leaves_the_image():
    """All attempts too wide for the image: torchvision erases nothing (and must not crash)."""
    image = tf.fill([384, 128, 3], 7.0)
    for seed in range(5):
        out = augment.random_erasing(
            image, tf.constant([seed, 1]), prob=1.0, scale=(0.39, 0.4), ratio=(0.3, 0.31)
        )
        np.testing.assert_array_equal(out, image)
