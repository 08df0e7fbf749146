"""Can the host feed a GPU? tf.data training-input throughput per core, and the gap between steps.

(1) The training input of each model, as `train_loop` builds it (`data.pipeline.train_batches`:
decode, bicubic resize, pad/crop/flip/erase, normalise; Pirt with its heatmaps read from a
float16 memory-mapped store, as `--mode=heatmaps` writes them), at the papers' input size and
batch (P=16 x K=4), with tf.data's pool capped at 1, 2 and all threads; images/s and images/s
per thread. The images are random smooth JPEGs of 256 x 128 (about a Re-ID crop's size; every
one is resized to the model's input, as real crops are).
(2) The gap between steps: a pmapped step that costs nothing (it reads one value of the batch)
driven (a) from host batches already in memory (the copy to the device and the dispatch only),
(b) by the pipeline as the loop feeds it today, (c) by the pipeline through
`device_prefetch.prefetch_to_devices`. Steps/s of (b) and (c) against (1)'s rate say whether
the loop adds anything to the pipeline's own time.

    python benchmarks/pipeline_benchmark.py                  # all models, 1/2/all threads
    python benchmarks/pipeline_benchmark.py --models baseline --batches 10
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

# Run as a file: make the repository root importable for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from occreid_jax.data import pipeline  # noqa: E402
from occreid_jax.data.datasets import Split  # noqa: E402
from occreid_jax.data.device_prefetch import prefetch_to_devices  # noqa: E402
from occreid_jax.data.sampler import IdentitySampler  # noqa: E402
from occreid_jax.errors import OneLineArgumentParser, int_at_least  # noqa: E402

# model -> (input size, heatmaps); all: batch 64 = 16 x 4, pad 10, flip 0.5, erasing 0.5.
INPUTS = {"baseline": ((384, 128), False), "pirt": ((384, 128), True), "mat": ((256, 128), False)}
STORED = (256, 128)


def synthetic_split(num_images: int, ids: int, heatmap_size: tuple[int, int] | None, folder: str):
    """Random smooth JPEG crops; heatmaps [N, h, w, 17] float16 in a memory map if asked."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(num_images):
        small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, STORED[::-1], interpolation=cv2.INTER_CUBIC)
        images.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    labels = np.arange(num_images) % ids
    heatmaps = None
    if heatmap_size is not None:
        path = os.path.join(folder, "heatmaps.f16")
        heatmaps = np.memmap(path, np.float16, "w+", shape=(num_images, *heatmap_size, 17))
        heatmaps[:] = rng.uniform(size=heatmaps.shape).astype(np.float16)
        heatmaps.flush()
        heatmaps = np.memmap(path, np.float16, "r", shape=heatmaps.shape)
    return Split(
        images=np.asarray(images, dtype=object),
        pids=labels.astype(np.int64),
        camids=np.zeros(num_images, np.int64),
        labels=labels.astype(np.int64),
        filenames=np.asarray([f"{i}.jpg" for i in range(num_images)]),
        heatmaps=heatmaps,
    )


AUGMENT = {"pad": 10, "flip_prob": 0.5, "erasing_prob": 0.5}
# --ablate: the baseline input at one thread with one stage removed at a time.
ABLATIONS = {
    "all stages": {},
    "no pad/crop": {"pad": 0},
    "no flip": {"flip_prob": 0.0},
    "no erasing": {"erasing_prob": 0.0},
    "no augmentation (decode, resize, normalise)": {
        "pad": 0,
        "flip_prob": 0.0,
        "erasing_prob": 0.0,
    },
}


def batches_for(model: str, split: Split, threads: int | None, devices: int = 1, **augment):
    size, with_heatmaps = INPUTS[model]
    sampler = IdentitySampler(split.labels, 64, 4, devices, seed=0)
    return pipeline.train_batches(
        split, sampler, start_step=0, image_size=size, num_devices=devices, seed=0,
        with_heatmaps=with_heatmaps, threads=threads, **{**AUGMENT, **augment},
    )  # fmt: skip


def images_per_sec(batches, count: int, warmup: int = 3) -> float:
    """Wall-clock images/s of `count` batches of 64 after `warmup` ones."""
    return rates(batches, count, warmup)[0]


def rates(batches, count: int, warmup: int = 3) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process). The second is the
    throughput of one core, whatever else the machine runs (the wall rate is not, on a
    shared machine)."""
    for _ in range(warmup):
        next(batches)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        next(batches)
    images = 64 * count
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def step_rate(step, batches, count: int, warmup: int = 3) -> float:
    """Steps/s of the zero-cost step fed by `batches`, synchronised once at the end."""
    for _ in range(warmup):
        out = step(next(batches))
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(count):
        out = step(next(batches))
    jax.block_until_ready(out)
    return count / (time.perf_counter() - start)


def ablate(args) -> None:
    """Where the baseline input's time goes: one thread, one stage off at a time, alternating
    rounds (the machine's load hits every row alike); and the same at the input size (no
    resize: crops stored at 384 x 128)."""
    global STORED
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        splits = {"": synthetic_split(args.images, args.images // 8, None, folder)}
        STORED = INPUTS["baseline"][0]
        splits[", stored at 384x128 (no resize)"] = synthetic_split(
            args.images, args.images // 8, None, folder
        )
        for _ in range(3):
            for suffix, split in splits.items():
                for name, change in ABLATIONS.items():
                    pair = rates(batches_for("baseline", split, 1, **change), args.batches)
                    results.setdefault(name + suffix, []).append(pair)
    print("# baseline input, 1 thread, median of 3 alternating rounds")
    print("| stages | img/s | img per CPU-s | CPU ms/image |")
    print("|---|---|---|---|")
    for name, pairs in results.items():
        wall, cpu = np.median(np.asarray(pairs), axis=0)
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {1e3 / cpu:.2f} |")


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--images", type=int_at_least(1), default=1024)
    parser.add_argument("--batches", type=int_at_least(1), default=20, help="timed batches of 64")
    parser.add_argument("--ablate", action="store_true", help="only the stage ablation")
    args = parser.parse_args()
    if args.ablate:
        ablate(args)
        return
    cores = os.cpu_count() or 1
    threads = sorted({1, min(2, cores), cores})
    print(f"# tf.data training input, batch 64, {args.batches} timed batches; {cores} cores")
    print(
        "| model | input | "
        + " | ".join(f"{t} thr: img/s, per thread, per CPU-s" for t in threads)
        + " |"
    )
    print("|" + "---|" * (2 + len(threads)))
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            size, with_heatmaps = INPUTS[model]
            heatmap_size = (size[0] // 4, size[1] // 4) if with_heatmaps else None
            split = synthetic_split(args.images, args.images // 8, heatmap_size, folder)
            cells = []
            for count in threads:
                wall, cpu = rates(batches_for(model, split, count), args.batches)
                cells.append(f"{wall:.0f}, {wall / count:.0f}, {cpu:.0f}")
            print(f"| {model} | {size[0]}x{size[1]} | " + " | ".join(cells) + " |", flush=True)

        split = synthetic_split(args.images, args.images // 8, None, folder)
        devices = jax.local_device_count()
        zero_cost = jax.pmap(lambda batch: batch["images"][0, 0, 0, 0] + 0 * batch["labels"][0])
        held = [next(batches_for("baseline", split, None, devices)) for _ in range(4)]
        in_memory = (held[i % 4] for i in range(10**9))
        feeds = {
            "(a) host batches in memory (copy + dispatch only)": lambda: in_memory,
            "(b) the pipeline, numpy into pmap": lambda: batches_for(
                "baseline", split, None, devices
            ),
            "(c) the pipeline through prefetch_to_devices (the loop)": lambda: prefetch_to_devices(
                batches_for("baseline", split, None, devices)
            ),
        }
        measured: dict[str, list[float]] = {name: [] for name in [*feeds, "the pipeline alone"]}
        for _ in range(3):  # alternating rounds: the machine's load hits every row alike
            for name, feed in feeds.items():
                measured[name].append(step_rate(zero_cost, feed(), args.batches))
            alone = batches_for("baseline", split, None, devices)
            measured["the pipeline alone"].append(images_per_sec(alone, args.batches) / 64)
    print(f"\n# zero-cost step, baseline input, {devices} device(s), batch 64")
    print("| fed by | steps/s | ms between steps |")
    print("|---|---|---|")
    for name, values in measured.items():
        rate = float(np.median(values))
        print(f"| {name} | {rate:.2f} | {1e3 / rate:.1f} |")
    jnp.zeros(())  # keep the backend alive until the end of the prints


if __name__ == "__main__":
    main()
