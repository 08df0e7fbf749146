"""What donating the train state saves: XLA's memory analysis of each model's compiled step.

Compiles the donated, pmapped train step of the baseline, Pirt and MAT at their papers' input
size and batch (one device holds the whole batch of 64) and prints, per device, the state's
size, the step's arguments, outputs, temporaries and aliased bytes, and the peak estimate
with and without donation (without it, the old and the new state are both live at the end of
the step: the aliased bytes come back). Buffer assignment is the compiler's, so this runs on
the CPU; a GPU compile gives its own temporaries.

    python benchmarks/donation_memory.py                      # float32, all three models
    python benchmarks/donation_memory.py --models baseline --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

# Run as a file: make the repository root importable for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import step_setup  # noqa: E402

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(step_setup.MODELS))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tiny", action="store_true", help="size=tiny configs (a quick check)")
    args = parser.parse_args()
    print(
        f"# donated train step, {args.dtype}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.local_device_count()} device(s)); MiB per device"
    )
    print(
        "| model | input, batch | state | arguments | outputs | temporaries | aliased "
        "| peak, donated | peak, not donated | saved | compile s |"
    )
    print("|" + "---|" * 11)
    for model in args.models:
        config = step_setup.model_config(model, args.dtype, tiny=args.tiny)
        case = step_setup.build_case(config)
        start = time.perf_counter()
        figures = step_setup.memory_figures(case.compile())
        seconds = time.perf_counter() - start
        height, width = config.data.image_size
        saved = 1 - figures["peak_estimate"] / figures["peak_without_donation"]
        print(
            f"| {model} | {height}x{width}, {config.data.batch_size} "
            f"| {step_setup.state_bytes(case.state) / MIB:.0f} "
            + "".join(
                f"| {figures[name] / MIB:.0f} "
                for name in ("argument", "output", "temp", "alias", "peak_estimate")
            )
            + f"| {figures['peak_without_donation'] / MIB:.0f} | {100 * saved:.0f}% "
            f"| {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
