"""Inference throughput of the HRNet pose nets (the frozen heatmap source of Pirt).

Times `jax.jit(HRNet.apply)` in eval mode on random images with random weights: one warm-up
call (compilation, reported apart), then the median of --repeats timed calls, each ended by
`block_until_ready`. With --torch, the PyTorch twin (benchmarks/torch_hrnet.py) is timed the
same way under `torch.inference_mode()` for comparison.

    python benchmarks/heatmap_benchmark.py                      # W32 and W48, batch 16, 256x128
    python benchmarks/heatmap_benchmark.py --size 384 128 --torch
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from occreid_jax.errors import OneLineArgumentParser, int_at_least
from occreid_jax.nets.hrnet import POSE_NETS

# Run as a file: make the repository root importable for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_variables(module, seed: int = 0) -> dict:
    """He-normal kernels, unit BN scale/variance, zero bias/mean; built in numpy (fast)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False)
    )

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, std, leaf.shape).astype(np.float32))
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_jax(arch: str, images: np.ndarray, dtype: str, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds per call) of the jitted forward."""
    module = POSE_NETS[arch](dtype=jnp.dtype(dtype))
    variables = random_variables(module)
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    x = jnp.asarray(images)
    start = time.perf_counter()
    forward(variables, x).block_until_ready()
    first = time.perf_counter() - start
    return first, _median_seconds(lambda: forward(variables, x).block_until_ready(), repeats)


def time_torch(arch: str, images: np.ndarray, repeats: int) -> float:
    """Median seconds per call of the PyTorch twin in eval mode."""
    import torch

    from benchmarks.torch_hrnet import PoseHighResolutionNet

    model = PoseHighResolutionNet(width=int(arch.removeprefix("hrnet_w"))).eval()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        model(x)
        return _median_seconds(lambda: model(x), repeats)


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(POSE_NETS), choices=list(POSE_NETS))
    parser.add_argument("--batch", type=int_at_least(1), default=16)
    parser.add_argument(
        "--size", type=int_at_least(1, 4096), nargs=2, default=(256, 128), metavar=("H", "W")
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int_at_least(1), default=5)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch twin")
    args = parser.parse_args()

    images = np.random.default_rng(0).normal(size=(args.batch, *args.size, 3)).astype(np.float32)
    device = jax.devices()[0]
    print(
        f"# HRNet heatmaps, batch {args.batch}, {args.size[0]}x{args.size[1]}, {args.dtype}, "
        f"median of {args.repeats}; jax {jax.__version__} on {device.platform} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    )
    header = "| arch | JAX img/s | JAX ms/batch | compile+first s |"
    if args.torch:
        header += " torch img/s | torch ms/batch |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for arch in args.archs:
        first, seconds = time_jax(arch, images, args.dtype, args.repeats)
        row = f"| {arch} | {args.batch / seconds:.1f} | {seconds * 1e3:.0f} | {first:.1f} |"
        if args.torch:
            torch_seconds = time_torch(arch, images, args.repeats)
            row += f" {args.batch / torch_seconds:.1f} | {torch_seconds * 1e3:.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
