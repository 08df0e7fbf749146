"""Training augmentations as TensorFlow ops, with keypoint heatmaps kept aligned.

Every random op is stateless: it draws from a seed pair, so the same (run seed, step, slot)
gives the same augmentation whether the run was interrupted or not.

Geometry convention: continuous pixel coordinates, pixel i covers [i, i + 1). Heatmaps have
stride 4 (heatmap x = image x / 4). A horizontal flip maps x -> W - x and swaps the left and
right COCO joints; the pad-and-crop moves the image by an integer offset (dx, dy) and the
heatmaps by (dx / 4, dy / 4), resampled bilinearly.

Random erasing changes only the image: an erased body part keeps its heatmap. Pose-guided
models reading precomputed or ground-truth heatmaps therefore see joints under the erased
box, whereas the released Pirt runs its pose net after erasing.
"""

from __future__ import annotations

import tensorflow as tf

from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD

HEATMAP_STRIDE = 4
# COCO order (docs/pretrained-weights.md): a horizontal flip swaps each left joint with its right.
COCO_FLIP_PERMUTATION = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


def _seeds(seed: tf.Tensor, num: int) -> tf.Tensor:
    """Splits one stateless seed [2] into `num` independent seeds [num, 2]."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def translate(image: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Shifts content: out(x, y) = in(x + dx, y + dy), zeros outside, bilinear.

    Args:
      image: [H, W, C] float32.
      dx, dy: scalar float shifts in this image's pixels.
    Returns:
      [H, W, C] float32.
    """
    size = tf.shape(image)[:2]
    one, zero = tf.constant(1.0), tf.constant(0.0)
    transform = tf.stack([one, zero, tf.cast(dx, tf.float32), zero, one, tf.cast(dy, tf.float32)])
    transform = tf.concat([transform, [0.0, 0.0]], axis=0)[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=size,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]


def shift(image: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, pad: int) -> tf.Tensor:
    """`translate` by whole pixels |dx|, |dy| <= pad: zero-pad and slice, no resampling.

    Gives exactly `translate`'s result at integer shifts (bilinear weights are then 0 and 1),
    at a fraction of its cost (the projective-transform kernel was the input pipeline's most
    expensive op, benchmarks/pipeline_benchmark.py --ablate).

    Args:
      image: [H, W, C] float32 with a static shape.
      dx, dy: scalar int32 shifts.
    Returns:
      [H, W, C] float32.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    out = tf.slice(padded, tf.stack([pad + dy, pad + dx, 0]), tf.stack([height, width, -1]))
    return tf.ensure_shape(out, image.shape)


def pad_and_crop(image, heatmaps, seed, pad: int, keypoints=None):
    """Pads by `pad` zero pixels on every side and crops back at a random offset.

    Args:
      image: [H, W, 3] float32 in 0..255.
      heatmaps: [H/4, W/4, J] float32, or None.
      seed: stateless seed [2].
      pad: padding in pixels (10 in the papers).
      keypoints: [J, 3] float32 (x, y, visibility) in image pixels, or None.
    Returns:
      (image, heatmaps, keypoints), moved together.
    """
    if pad <= 0:
        return image, heatmaps, keypoints
    offsets = tf.random.stateless_uniform([2], seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    image = shift(image, offsets[0] - pad, offsets[1] - pad, pad)
    dx, dy = tf.cast(offsets[0] - pad, tf.float32), tf.cast(offsets[1] - pad, tf.float32)
    if heatmaps is not None:
        heatmaps = translate(heatmaps, dx / HEATMAP_STRIDE, dy / HEATMAP_STRIDE)
    if keypoints is not None:
        keypoints = keypoints - tf.stack([dx, dy, 0.0])
    return image, heatmaps, keypoints


def flip(image, heatmaps, do_flip: tf.Tensor, keypoints=None):
    """Mirrors the image (x -> W - x), heatmaps and keypoints, swapping left and right joints."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
    if heatmaps is not None:
        flipped = tf.gather(heatmaps[:, ::-1], COCO_FLIP_PERMUTATION, axis=2)
        heatmaps = tf.cond(do_flip, lambda: flipped, lambda: heatmaps)
    if keypoints is not None:
        mirrored = tf.gather(keypoints, COCO_FLIP_PERMUTATION) * [-1.0, 1.0, 1.0] + [width, 0, 0]
        keypoints = tf.cond(do_flip, lambda: mirrored, lambda: keypoints)
    return image, heatmaps, keypoints


def random_flip(image, heatmaps, seed, prob: float, keypoints=None):
    """Flips with probability `prob`; see `flip`."""
    do_flip = tf.random.stateless_uniform([], seed) < prob
    return flip(image, heatmaps, do_flip, keypoints)


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    prob: float,
    scale=(0.02, 0.4),
    ratio=(0.3, 3.3),
    fill=IMAGENET_MEAN,
    attempts: int = 10,
) -> tf.Tensor:
    """Random erasing (Zhong et al. 2020) as torchvision's RandomErasing with a pixel-mean fill.

    With probability `prob`, a box of area fraction in `scale` and log-uniform aspect ratio in
    `ratio` is filled with `fill`; the first of `attempts` draws that fits is used, none if none
    fits (torchvision's rule).

    Args:
      image: [H, W, 3] float32 in 0..255.
      seed: stateless seed [2].
    Returns:
      [H, W, 3] float32.
    """
    seeds = _seeds(seed, 6)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(height * width, tf.float32)
    target = area * tf.random.stateless_uniform([attempts], seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform(
        [attempts], seeds[1], tf.math.log(ratio[0]), tf.math.log(ratio[1])
    )
    aspect = tf.exp(log_ratio)
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    choice = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    any_fits = tf.reduce_any(fits)
    # Without a fitting box nothing is erased; a zero box keeps the position draws valid.
    box_h = tf.where(any_fits, box_h[choice], 0)
    box_w = tf.where(any_fits, box_w[choice], 0)
    top = tf.random.stateless_uniform([], seeds[2], 0, height - box_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, width - box_w + 1, dtype=tf.int32)
    erase = any_fits & (tf.random.stateless_uniform([], seeds[4]) < prob)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    inside = inside & erase
    return tf.where(inside[..., None], tf.constant(fill, tf.float32), image)


def normalize(image: tf.Tensor) -> tf.Tensor:
    """ImageNet mean/std normalisation of 0..255 RGB pixels."""
    return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def train_augment(
    image,
    heatmaps,
    seed,
    *,
    pad: int,
    flip_prob: float,
    erasing_prob: float,
    keypoints=None,
    geometry_seed=None,
):
    """The training chain: pad-and-crop, flip, random erasing, normalisation.

    Args:
      image: [H, W, 3] float32 in 0..255, already at the model's input size.
      heatmaps: [H/4, W/4, J] float32, or None.
      seed: stateless seed [2].
      keypoints: [J, 3] float32 (x, y, visibility) in image pixels, or None.
      geometry_seed: stateless seed [2] of the crop and the flip (default `seed`): two
        images given the same one are cropped and flipped alike.
    Returns:
      (normalised image [H, W, 3], heatmaps or None, keypoints or None).
    """
    seeds = _seeds(seed, 3)
    geometry = seeds if geometry_seed is None else _seeds(geometry_seed, 3)
    image, heatmaps, keypoints = pad_and_crop(image, heatmaps, geometry[0], pad, keypoints)
    image, heatmaps, keypoints = random_flip(image, heatmaps, geometry[1], flip_prob, keypoints)
    if erasing_prob > 0:
        image = random_erasing(image, seeds[2], erasing_prob)
    return normalize(image), heatmaps, keypoints
