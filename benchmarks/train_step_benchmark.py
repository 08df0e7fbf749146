"""Times one training step of the baseline (ResNet-50, BNNeck, CE + triplet) in JAX and PyTorch.

Both frameworks run the same network (benchmarks/torch_baseline.py is the PyTorch twin), the
same loss and torch-style Adam with coupled L2, on the same P x K batch at 256 x 128, in one
process, alternating, so the ratio is fair on a noisy shared machine.

    python benchmarks/train_step_benchmark.py                 # ResNet-50, batch 16, 5 steps
    python benchmarks/train_step_benchmark.py --batch 64 --steps 10 --backbone resnet50_ibn_a
    python benchmarks/train_step_benchmark.py --dtype bfloat16   # JAX compute dtype (GPU)

Prints a table of median step times and the ratio PyTorch / JAX (above 1: JAX is faster).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

from occreid_jax.errors import OneLineArgumentParser, int_at_least


def _torch_twin():
    # Run as a file: make the repository root importable for `benchmarks.*`.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import torch_baseline

    return torch_baseline


def _batch(batch: int, k: int, size: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, *size, 3)).astype(np.float32)
    labels = np.repeat(np.arange(batch // k), k).astype(np.int32)
    return images, labels


def jax_step(args, images, labels, num_classes):
    from occreid_jax import families
    from occreid_jax.losses.objectives import LossConfig, baseline_objective
    from occreid_jax.training import optim
    from occreid_jax.training.train import create_train_state, parallel_train_step

    cfg = ml_collections.ConfigDict(
        dict(
            optimizer="adam", lr=3.5e-4, weight_decay=5e-4, adam_betas=(0.9, 0.999),
            schedule="warmup_flat_cosine", warmup_epochs=0, warmup_factor=1.0,
            cosine_start_epoch=10, final_lr=1e-6, epochs=10,
        )
    )  # fmt: skip
    model = families.build_model(
        "baseline", num_classes=num_classes, backbone=args.backbone, dtype=args.dtype,
        bn_axis_name="batch",
    )  # fmt: skip
    tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 100))
    state = create_train_state(model, tx, jax.random.PRNGKey(0), tuple(images.shape[1:3]))
    step = parallel_train_step(functools.partial(baseline_objective, cfg=LossConfig()))
    batch = {"images": images[None], "labels": labels[None]}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    return run


def torch_step(args, images, labels, num_classes):
    import torch

    twin = _torch_twin()
    torch.manual_seed(0)
    model = twin.Baseline(num_classes, args.backbone, last_stride=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()

    def run():
        optimizer.zero_grad(set_to_none=True)
        _, aux = model(x)
        loss = twin.baseline_loss(aux, y, eps=0.1, margin=0.0)
        loss.backward()
        optimizer.step()

    return run


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int_at_least(1), default=16)
    parser.add_argument("--k", type=int_at_least(1), default=4)
    parser.add_argument("--height", type=int_at_least(1, 4096), default=256)
    parser.add_argument("--width", type=int_at_least(1, 4096), default=128)
    parser.add_argument(
        "--steps", type=int_at_least(1), default=5, help="timed steps per framework"
    )
    parser.add_argument("--dtype", default="float32", help="JAX compute dtype")
    args = parser.parse_args()

    import torch

    images, labels = _batch(args.batch, args.k, (args.height, args.width))
    num_classes = 751  # Market-1501's training identities
    runners = {
        "jax": jax_step(args, images, labels, num_classes),
        "pytorch": torch_step(args, images, labels, num_classes),
    }
    compile_start = time.perf_counter()
    runners["jax"]()  # compile
    compile_seconds = time.perf_counter() - compile_start
    runners["pytorch"]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.steps):
        for name, run in runners.items():  # alternate, so load changes hit both
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.backbone}, batch {args.batch} (P={args.batch // args.k} x K={args.k}), "
        f"{args.height}x{args.width}, JAX dtype {args.dtype}; {args.steps} timed steps each"
    )
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}"
    )
    print(f"JAX compile + first step: {compile_seconds:.1f} s")
    print(f"{'framework':<10}{'median s/step':>15}{'images/s':>10}")
    for name, median in medians.items():
        print(f"{name:<10}{median:>15.3f}{args.batch / median:>10.1f}")
    print(f"ratio pytorch / jax: {medians['pytorch'] / medians['jax']:.2f}")


if __name__ == "__main__":
    main()
