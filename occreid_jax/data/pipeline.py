"""tf.data input pipelines: host batches shaped [devices, per_device_batch, ...].

Training: the P x K sampler picks indices, tf.data decodes, resizes and augments each image
with a stateless seed derived from (run seed, step, slot) and batches them identity-major, so
device d receives whole identities. Evaluation: decode, resize, normalise, and pad the last
batch with a mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import tensorflow as tf

from occreid_jax.data import augment
from occreid_jax.data.datasets import Split
from occreid_jax.data.sampler import IdentitySampler, process_rows
from occreid_jax.errors import UserError

# tf.data only feeds the host; keep TensorFlow off any accelerator JAX uses.
tf.config.set_visible_devices([], "GPU")


def _decode(encoded: tf.Tensor, image_size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded bytes -> ([H, W, 3] float32 RGB in 0..255 at `image_size`, stored (h, w)).

    Images of another size are resized bicubically (fast-reid's T.Resize(interpolation=3)).
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    stored_size = tf.shape(image)[:2]
    image = tf.cast(image, tf.float32)
    height, width = image_size
    same_size = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
    image = tf.cond(
        same_size,
        lambda: image,
        lambda: tf.clip_by_value(tf.image.resize(image, image_size, method="bicubic"), 0, 255),
    )
    return tf.ensure_shape(image, [height, width, 3]), stored_size


def _heatmap_reader(heatmaps: np.ndarray):
    """A tf op index -> [h, w, J] float32 heatmaps, read from host memory or a memory map.

    uint8 arrays hold 0..1 as 0..255 (the synthetic ground truth); float16 ones (a
    `HeatmapStore`) hold the values themselves.
    """
    scale = 1.0 / 255.0 if heatmaps.dtype == np.uint8 else 1.0

    def read(index):
        return np.asarray(heatmaps[int(index)], np.float32) * np.float32(scale)

    def op(index):
        maps = tf.numpy_function(read, [index], tf.float32, stateful=False)
        return tf.ensure_shape(maps, heatmaps.shape[1:])

    return op


def _resize_heatmaps(heatmaps: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Heatmaps [h, w, J] -> [H/4, W/4, J] for the model's input size (bilinear)."""
    size = (image_size[0] // augment.HEATMAP_STRIDE, image_size[1] // augment.HEATMAP_STRIDE)
    same_size = tf.logical_and(tf.shape(heatmaps)[0] == size[0], tf.shape(heatmaps)[1] == size[1])
    heatmaps = tf.cond(
        same_size, lambda: heatmaps, lambda: tf.image.resize(heatmaps, size, method="bilinear")
    )
    return tf.ensure_shape(heatmaps, [size[0], size[1], heatmaps.shape[-1]])


def _to_devices(batch: dict, num_devices: int) -> dict:
    """Reshapes every [G, ...] entry to [devices, G / devices, ...]."""
    return {k: tf.reshape(v, [num_devices, -1, *v.shape[1:]]) for k, v in batch.items()}


def find_unreadable(split: Split) -> str | None:
    """Name of the first image of `split` that does not decode, or None."""
    for name, encoded in zip(split.filenames, split.images, strict=True):
        if cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR) is None:
            return str(name)
    return None


def _numpy_batches(ds: tf.data.Dataset, split: Split) -> Iterator[dict]:
    """Iterates a dataset as numpy, turning a decode failure into a one-line UserError."""
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            bad = find_unreadable(split)
            if bad is None:
                raise
            raise UserError(
                f"image {bad!r} cannot be decoded; replace or delete it and rebuild the dataset"
            ) from error


def _options(threads: int | None = None) -> tf.data.Options:
    """Deterministic order; `threads` caps tf.data's pool (None: one thread per core)."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def train_batches(
    split: Split,
    sampler: IdentitySampler,
    *,
    start_step: int,
    image_size: tuple[int, int],
    num_devices: int,
    pad: int,
    flip_prob: float,
    erasing_prob: float,
    seed: int,
    with_heatmaps: bool = False,
    with_keypoints: bool = False,
    shard: tuple[int, int] = (0, 1),
    pair_geometry: bool = False,
    threads: int | None = None,
) -> Iterator[dict]:
    """Infinite training batches starting at `start_step` (resumes mid-epoch exactly).

    `num_devices` counts the devices of all processes; with several processes (`shard` =
    (process index, number of processes)) each process reads, augments and yields only the
    rows of its own devices, D = num_devices / processes of them, augmented exactly as one
    process driving every device would (the seed of an image is its global slot).
    `pair_geometry` crops and flips the second image of each identity's K like the first
    (the same-camera pairs of `IdentitySampler(same_camera_pairs=True)`). `threads` caps
    tf.data's thread pool (benchmarks/pipeline_benchmark.py; None: all cores).

    Yields dicts of numpy arrays (b = B / num_devices images per device):
      images: [D, b, H, W, 3] float32, ImageNet-normalised.
      labels: [D, b] int32 train labels.
      heatmaps: [D, b, H/4, W/4, 17] float32, only when `with_heatmaps` (from
        `split.heatmaps`: ground truth or a precomputed store), moved with the image.
      keypoints: [D, b, 17, 3] float32 (x, y, visibility), only when `with_keypoints`.
    """
    image_size = tuple(image_size)
    global_batch = sampler.batch_size
    rows = process_rows(global_batch, num_devices, shard)
    local_batch = rows.stop - rows.start
    images = tf.constant(split.images.tolist(), tf.string)
    labels = tf.constant(split.labels, tf.int32)
    if with_heatmaps and split.heatmaps is None:
        raise UserError(
            "this model needs keypoint heatmaps but none were loaded; set pose.source to "
            "ground_truth (synthetic), precomputed (after --mode=heatmaps) or online"
        )
    if with_keypoints and split.keypoints is None:
        raise UserError("keypoints were requested but the dataset has no keypoints feature")
    read_heatmaps = _heatmap_reader(split.heatmaps) if with_heatmaps else None
    keypoints = tf.constant(split.keypoints, tf.float32) if with_keypoints else None

    def one_example(step, slot, index):
        example_seed = tf.stack([tf.constant(seed, tf.int64), step * global_batch + slot])
        geometry_seed = None
        if pair_geometry:  # the second of a group takes the first one's crop and flip
            first = slot - tf.cast(slot % sampler.instances_per_id == 1, tf.int64)
            geometry_seed = tf.stack([tf.constant(seed, tf.int64), step * global_batch + first])
        image, stored_size = _decode(tf.gather(images, index), image_size)
        maps = _resize_heatmaps(read_heatmaps(index), image_size) if with_heatmaps else None
        points = None
        if with_keypoints:
            # Keypoints are in stored-image pixels; the resize scales them with the image.
            scale = tf.constant([image_size[1], image_size[0]], tf.float32) / tf.cast(
                stored_size[::-1], tf.float32
            )
            points = tf.gather(keypoints, index) * tf.concat([scale, [1.0]], 0)
        image, maps, points = augment.train_augment(
            image, maps, example_seed, pad=pad, flip_prob=flip_prob, erasing_prob=erasing_prob,
            keypoints=points, geometry_seed=geometry_seed,
        )  # fmt: skip
        out = {"images": image, "labels": tf.gather(labels, index)}
        if with_heatmaps:
            out["heatmaps"] = maps
        if with_keypoints:
            out["keypoints"] = points
        return out

    ds = tf.data.Dataset.from_generator(
        lambda: ((step, indices[rows]) for step, indices in sampler.batches_from(start_step)),
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([local_batch], tf.int64),
        ),
    )
    slots = tf.range(rows.start, rows.stop, dtype=tf.int64)  # positions in the global batch
    ds = ds.flat_map(
        lambda step, indices: tf.data.Dataset.from_tensor_slices(
            (tf.fill([local_batch], step), slots, indices)
        )
    )
    ds = ds.map(one_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(lambda batch: _to_devices(batch, num_devices // shard[1]))
    ds = ds.prefetch(2).with_options(_options(threads))
    return _numpy_batches(ds, split)


def eval_rows(
    num_images: int, batch_size: int, num_devices: int, shard: tuple[int, int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """Which images one process embeds: its devices' rows of every padded global batch.

    Returns:
      order: [T * B / processes] int64 dataset positions (0 on padding), in the order
        `eval_batches` yields them; mask: same shape, False on padding.
    """
    if batch_size % num_devices:
        raise UserError(
            f"data.eval_batch_size={batch_size} is not divisible by the {num_devices} devices; "
            f"set --config.data.eval_batch_size to a multiple of {num_devices}"
        )
    padded = -(-num_images // batch_size) * batch_size
    positions = np.arange(padded).reshape(-1, batch_size)[
        :, process_rows(batch_size, num_devices, shard)
    ]
    positions = positions.reshape(-1)
    mask = positions < num_images
    return np.where(mask, positions, 0), mask


def eval_batches(
    split: Split,
    *,
    image_size: tuple[int, int],
    batch_size: int,
    num_devices: int,
    shard: tuple[int, int] = (0, 1),
    with_heatmaps: bool = False,
) -> Iterator[dict]:
    """One pass over `split` in order, the last batch padded.

    With several processes (`shard`), each yields only its devices' rows of every global batch
    of `batch_size` (the positions `eval_rows` returns), D = num_devices / processes of them.

    Yields dicts of numpy arrays:
      images: [D, B/num_devices, H, W, 3] float32, ImageNet-normalised.
      mask: [D, B/num_devices] bool, False on padding.
      heatmaps: [D, B/num_devices, H/4, W/4, 17] float32, only when `with_heatmaps` (from
        `split.heatmaps`, resized to the input size like the training ones).
    """
    if with_heatmaps and split.heatmaps is None:
        raise UserError(
            "this model needs keypoint heatmaps at test time but none were loaded; set "
            "pose.source to ground_truth (synthetic), precomputed (after --mode=heatmaps) or online"
        )
    read_heatmaps = _heatmap_reader(split.heatmaps) if with_heatmaps else None
    image_size = tuple(image_size)
    order, mask = eval_rows(len(split), batch_size, num_devices, shard)
    local_devices = num_devices // shard[1]
    images = tf.constant(split.images.tolist(), tf.string)

    def one_example(index, valid):
        image, _ = _decode(tf.gather(images, index), image_size)
        out = {"images": augment.normalize(image), "mask": valid}
        if with_heatmaps:
            out["heatmaps"] = _resize_heatmaps(read_heatmaps(index), image_size)
        return out

    ds = tf.data.Dataset.from_tensor_slices((order, mask))
    ds = ds.map(one_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size // shard[1]).map(lambda batch: _to_devices(batch, local_devices))
    ds = ds.prefetch(2).with_options(_options())
    return _numpy_batches(ds, split)
