"""One command that measures what matters on an accelerator: train, memory, FLOPs, eval, heatmaps.

    python -m benchmarks.device_suite --out=suite.json            # papers' sizes (a GPU)
    python -m benchmarks.device_suite --out=smoke.json --smoke    # every part tiny, on the CPU

Parts, each with its own time cap (the whole suite fits in `--budget` seconds; a part that would
start after the budget is reported as skipped, one that fails as an error, and the suite goes on):
  * train/<model>/<dtype>: the baseline, Pirt and MAT train step (donated, pmapped, the loop's
    own) at the papers' input size and batch (`benchmarks/step_setup.py`), float32 and bfloat16:
    compile time, steady-state step time and images/s (steps dispatched back to back, one sync
    at the end), peak memory (XLA's buffer assignment; and the device allocator's peak so far,
    where the backend reports one), FLOPs per step from XLA's cost analysis and the model FLOPs
    utilisation against `PEAK_TFLOPS`;
  * eval/msmt17: `evaluate_features` (distance blocks and exact ranking on the device) on
    random 2048-d features at the MSMT17 size (11,659 queries x 82,161 gallery images);
  * heatmaps/hrnet_w48: the frozen pose net's inference images/s, float32, batch 64 at the
    training input size 384 x 128.
Prints one table and writes every figure to the JSON file.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable

import jax
import numpy as np

# Run as a file too: make the repository root importable for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import step_setup  # noqa: E402
from benchmarks.device_peaks import peak_flops  # noqa: E402
from occreid_jax.errors import OneLineArgumentParser, positive_float  # noqa: E402

MIB = 2**20


def _device_peak_bytes() -> int | None:
    """The allocator's peak bytes in use on device 0 since the process started (GPU/TPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def train_part(model: str, dtype: str, cap_s: float, smoke: bool) -> dict:
    """Compile, then time steps until `steps` are done or the cap is reached."""
    quick = jax.config.values["jax_disable_most_optimizations"]
    # The smoke run compiles with XLA's quick mode, except Pirt: on jax 0.10 (CPU) its quick
    # compile returns NaN gradients (tests/conftest.py, the `full_xla` marker).
    jax.config.update("jax_disable_most_optimizations", quick and model != "pirt")
    try:
        return _timed_train_step(model, dtype, cap_s, smoke)
    finally:
        jax.config.update("jax_disable_most_optimizations", quick)


def _timed_train_step(model: str, dtype: str, cap_s: float, smoke: bool) -> dict:
    config = step_setup.model_config(model, dtype, tiny=smoke)
    case = step_setup.build_case(config, 8 if smoke else step_setup.OCCLUDED_DUKE_IDS)
    start = time.perf_counter()
    compiled = case.compile()
    compile_s = time.perf_counter() - start
    memory = step_setup.memory_figures(compiled)
    flops = step_setup.step_flops(compiled)  # per device
    jax.block_until_ready(case.run())  # warm-up: first run's allocations
    steps, timed_start = 0, time.perf_counter()
    while steps < (2 if smoke else 50):
        metrics = case.run()
        steps += 1
        if steps % 5 == 0:  # sync now and then, so the cap is respected
            jax.block_until_ready(metrics)
            if time.perf_counter() - timed_start > cap_s:
                break
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - timed_start) / steps
    peak, source = peak_flops(jax.local_devices()[0].device_kind, dtype)
    row = {
        "input": list(config.data.image_size),
        "global_batch": case.global_batch,
        "devices": jax.local_device_count(),
        "compile_s": compile_s,
        "timed_steps": steps,
        "step_s": step_s,
        "images_per_sec": case.global_batch / step_s,
        "loss_finite": bool(np.isfinite(np.asarray(metrics["loss"])).all()),
        "memory_bytes": memory,
        "device_peak_bytes_so_far": _device_peak_bytes(),
        "flops_per_step_per_device": flops,
        "peak_flops_per_device": peak,
        "peak_source": source,
        "mfu": None if flops is None or peak is None else flops / step_s / peak,
    }
    del case
    return row


def eval_part(cap_s: float, smoke: bool) -> dict:
    """`evaluate_features` at the MSMT17 size on random identity-clustered features."""
    from benchmarks.eval_benchmark import make_data
    from occreid_jax.evaluation import blocks as tiling
    from occreid_jax.evaluation import evaluate_features

    sizes = dict(queries=11659, gallery=82161, query_ids=3060, gallery_ids=3060, cameras=15)
    if smoke:
        sizes = dict(queries=200, gallery=1000, query_ids=40, gallery_ids=60, cameras=4)
    args = argparse.Namespace(**sizes, dim=64 if smoke else 2048, noise=4.0, seed=0)
    data = make_data(args)
    ids = (data["q_pids"], data["g_pids"], data["q_camids"], data["g_camids"])
    backend = tiling.resolve_backend("auto")
    times = []
    while not times or (len(times) < 3 and sum(times) < cap_s / 2):
        start = time.perf_counter()
        metrics = evaluate_features(data["q"], data["g"], *ids, metric="cosine", backend=backend)
        times.append(time.perf_counter() - start)
    return {
        **sizes,
        "dim": args.dim,
        "backend": backend,
        "runs": len(times),
        "seconds": float(np.median(times)),
        "mAP": float(metrics["mAP"]),
    }


def heatmap_part(cap_s: float, smoke: bool) -> dict:
    """HRNet-W48 inference images/s at the training input size (`--mode=heatmaps`)."""
    from benchmarks.heatmap_benchmark import time_jax

    batch, size = (2, (64, 32)) if smoke else (64, (384, 128))
    images = np.random.default_rng(0).normal(size=(batch, *size, 3)).astype(np.float32)
    repeats = 2 if smoke else 10
    first_s, seconds = time_jax("hrnet_w48", images, "float32", repeats)
    return {
        "batch": batch,
        "input": list(size),
        "compile_and_first_s": first_s,
        "seconds_per_batch": seconds,
        "images_per_sec": batch / seconds,
    }


def parts(smoke: bool) -> list[tuple[str, Callable[[float], dict], float]]:
    """(name, run(cap_s) -> row, cap_s) in the order they run: bfloat16 training first (the
    dtype to train in on a current GPU), evaluation and heatmaps, then float32 training."""
    listed = [
        (f"train/{model}/bfloat16", functools.partial(train_part, model, "bfloat16"), 20.0)
        for model in step_setup.MODELS
    ]
    listed.append(("eval/msmt17", eval_part, 60.0))
    listed.append(("heatmaps/hrnet_w48", heatmap_part, 30.0))
    listed += [
        (f"train/{model}/float32", functools.partial(train_part, model, "float32"), 20.0)
        for model in step_setup.MODELS
    ]
    return [(name, functools.partial(run, smoke=smoke), cap) for name, run, cap in listed]


def run_suite(smoke: bool, budget_s: float, only: tuple[str, ...] = ()) -> dict:
    """Runs every part within `budget_s`; returns the JSON-able report."""
    device = jax.local_devices()[0]
    report = {
        "smoke": smoke,
        "jax": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "local_devices": jax.local_device_count(),
        "host": platform.processor() or platform.machine(),
        "budget_s": budget_s,
        "parts": {},
    }
    suite_start = time.perf_counter()
    for name, run, cap_s in parts(smoke):
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        left = budget_s - (time.perf_counter() - suite_start)
        if left < min(cap_s, 15.0):
            report["parts"][name] = {"status": "skipped", "reason": f"{left:.0f} s of budget left"}
            continue
        start = time.perf_counter()
        try:
            row = {"status": "ok", **run(cap_s=min(cap_s, left))}
        except Exception as error:  # a failed part is reported, the suite goes on
            row = {"status": "error", "error": f"{type(error).__name__}: {error}"[:500]}
            traceback.print_exc()
        row["wall_s"] = time.perf_counter() - start
        report["parts"][name] = row
        print(f"{name}: {row['status']} in {row['wall_s']:.1f} s", file=sys.stderr, flush=True)
        gc.collect()
        jax.clear_caches()
    report["total_s"] = time.perf_counter() - suite_start
    return report


def table(report: dict) -> str:
    """The report as one markdown table."""
    lines = [
        f"# {report['device_kind']} x {report['local_devices']} ({report['platform']}), "
        f"jax {report['jax']}{', smoke' if report['smoke'] else ''}; "
        f"{report['total_s']:.0f} s in all",
        "| part | status | compile s | step ms | img/s | XLA peak MiB | device peak MiB "
        "| GFLOP/step | MFU |",
        "|" + "---|" * 9,
    ]

    def fmt(value, scale=1.0, digits=0):
        return "-" if value is None else f"{value * scale:,.{digits}f}"

    for name, row in report["parts"].items():
        status = row["status"] if row["status"] == "ok" else row.get("reason", row.get("error"))
        if name.startswith("train/") and row["status"] == "ok":
            memory = row["memory_bytes"].get("peak_estimate")
            cells = [
                fmt(row["compile_s"], digits=1),
                fmt(row["step_s"], 1e3, 1),
                fmt(row["images_per_sec"], digits=1),
                fmt(memory, 1 / MIB),
                fmt(row["device_peak_bytes_so_far"], 1 / MIB),
                fmt(row["flops_per_step_per_device"], 1e-9, 1),
                fmt(row["mfu"], 100, 1) + ("%" if row["mfu"] is not None else ""),
            ]
        elif name.startswith("eval/") and row["status"] == "ok":
            cells = ["-", fmt(row["seconds"], 1e3, 0), "-", "-", "-", "-", "-"]
            status = f"ok ({row['queries']} x {row['gallery']}, {row['backend']})"
        elif name.startswith("heatmaps/") and row["status"] == "ok":
            cells = [
                fmt(row["compile_and_first_s"], digits=1),
                fmt(row["seconds_per_batch"], 1e3, 1),
                fmt(row["images_per_sec"], digits=1),
            ] + ["-"] * 4
        else:
            cells = ["-"] * 7
        lines.append(f"| {name} | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON report")
    parser.add_argument("--smoke", action="store_true", help="every part tiny, on the CPU")
    parser.add_argument(
        "--budget", type=positive_float, default=None, help="seconds for the whole suite"
    )
    parser.add_argument("--only", nargs="*", default=(), help="part name prefixes to run")
    args = parser.parse_args()
    if args.smoke:  # tiny shapes: XLA's quick compile keeps the smoke run short
        jax.config.update("jax_disable_most_optimizations", True)
    budget = args.budget or (170.0 if args.smoke else 450.0)
    report = run_suite(args.smoke, budget, tuple(args.only))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(table(report))


if __name__ == "__main__":
    main()
