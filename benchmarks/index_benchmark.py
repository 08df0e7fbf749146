"""A gallery indexed once, searched many times: embed and search times at 100,000 images.

    python benchmarks/index_benchmark.py --images 100000 --queries 100 --work /tmp/ib

Makes the gallery (JPEG files of noise and gradients, every one different, at the bundle's
size), an untrained bundle of the demo's architecture (resnet_tiny at 128 x 64: embedding
speed does not depend on the weights) unless --bundle is given, then runs, each as a fresh
process (`occreid index`, `occreid search`), timing it and reading its peak RSS:

* index: `occreid index` over the whole gallery (float32), and with --storage=float16;
* search: 100 queries against the index (--index), and against the gallery folder
  (--gallery, which embeds the gallery again) on the first --compare images, where the two
  ranked lists must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

from occreid_jax.errors import OneLineArgumentParser, int_at_least

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_images(folder: str, count: int, size: tuple[int, int], seed: int) -> None:
    """`count` different JPEG files in folders of 1,000 (kept when already there)."""
    rng = np.random.default_rng(seed)
    height, width = size
    ramp = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    for i in range(count):
        path = os.path.join(folder, f"{i // 1000:04d}", f"{i:07d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        noise = rng.normal(0, 30, (height, width, 3)).astype(np.float32)
        cv2.imwrite(path, np.clip(ramp * colour + noise, 0, 255).astype(np.uint8))


def make_bundle(path: str, size: tuple[int, int]) -> str:
    """An untrained resnet_tiny baseline bundle at `size`."""
    import jax

    from occreid_jax import families
    from occreid_jax.bundles import export

    kwargs = {"num_classes": 10, "backbone": "resnet_tiny", "last_stride": 1, "dtype": "float32"}
    model = families.build_model("baseline", **kwargs)
    variables = jax.device_get(
        model.init(jax.random.PRNGKey(0), np.zeros((1, *size, 3), np.float32), train=False)
    )
    return export.write(
        path, model_name="baseline", model_kwargs=kwargs, variables=variables,
        image_size=size, matching={"metric": "cosine", "flip": False},
    )  # fmt: skip


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of a command run as a child process (its own rusage)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int_at_least(1), default=100_000)
    p.add_argument("--queries", type=int_at_least(1), default=100)
    p.add_argument(
        "--compare", type=int_at_least(1), default=2000, help="gallery of the --gallery search"
    )
    p.add_argument("--work", default="/tmp/index_benchmark")
    p.add_argument("--bundle", default="")
    p.add_argument("--size", type=int_at_least(1, 4096), nargs=2, default=(128, 64))
    args = p.parse_args()
    size = tuple(args.size)
    gallery, queries = os.path.join(args.work, "gallery"), os.path.join(args.work, "queries")
    small = os.path.join(args.work, "small_gallery")
    start = time.perf_counter()
    make_images(gallery, args.images, size, seed=0)
    make_images(queries, args.queries, size, seed=1)
    if not os.path.isdir(small):  # the first --compare images, as links
        for i in range(args.compare):
            name = f"{i // 1000:04d}/{i:07d}.jpg"
            os.makedirs(os.path.dirname(os.path.join(small, name)), exist_ok=True)
            os.link(os.path.join(gallery, name), os.path.join(small, name))
    print(f"images made in {time.perf_counter() - start:.0f} s")
    bundle = args.bundle or make_bundle(os.path.join(args.work, "bundle"), size)
    cli = [sys.executable, "-m", "occreid_jax.cli"]
    rows = {}
    for name, extra, folder in (
        ("small float32", [], small),
        ("float32", [], gallery),
        ("float16", ["--storage=float16"], gallery),
    ):
        out = os.path.join(args.work, f"{name.replace(' ', '_')}.index")
        rows[f"index {name}"] = timed([*cli, "index", f"--bundle={bundle}", f"--gallery={folder}",
                                       f"--out={out}", *extra, "--batch-size=256"])  # fmt: skip
    for name, gallery_flag in (
        ("small, --gallery", f"--gallery={small}"),
        ("small, --index", f"--index={os.path.join(args.work, 'small_float32.index')}"),
        ("float16 --index", f"--index={os.path.join(args.work, 'float16.index')}"),
        ("float32 --index", f"--index={os.path.join(args.work, 'float32.index')}"),
    ):
        out = os.path.join(args.work, "search_" + name.replace(" ", "_").replace(",", ""))
        rows[f"search {name}"] = timed([*cli, "search", f"--bundle={bundle}",
                                        f"--query={queries}", gallery_flag, f"--out={out}",
                                        "--top-k=10", "--batch-size=256"])  # fmt: skip
    with open(os.path.join(args.work, "search_small_--gallery", "ranks.csv")) as f:
        plain = f.read()
    with open(os.path.join(args.work, "search_small_--index", "ranks.csv")) as f:
        indexed = f.read()
    print("| step | images | seconds | images/s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, (seconds, peak) in rows.items():
        n = args.compare if "small" in name else args.images
        n = args.queries + (args.compare if "--gallery" in name else 0) if "search" in name else n
        print(f"| {name} | {n:,} | {seconds:.1f} | {n / seconds:.0f} | {peak:,.0f} |")
    print(f"ranked lists of the small gallery equal (--index vs --gallery): {plain == indexed}")
    print(json.dumps({k: list(v) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
