"""Command line: train, evaluate, export and extract Re-ID models.

  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo
  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo --mode=eval
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=eval --export=runs/demo/export
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=export [--output=DIR]
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=extract [--output=FILE.npz]

Any config field can be overridden: --config.train.epochs=2 --config.data.batch_size=32.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from occreid_jax.errors import UserError

MODES = ("train", "eval", "export", "extract")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/baseline.py:synthetic.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, results.json.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_EXPORT = flags.DEFINE_string("export", "", "eval: evaluate this export bundle instead.")
_OUTPUT = flags.DEFINE_string("output", "", "export: bundle folder; extract: .npz path.")


def _run(argv) -> None:
    del argv
    from occreid_jax import evaluation, experiment

    config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
    if mode == "train":
        record = experiment.train_and_evaluate(config, workdir)
        rows = dict(record["results"])
        if "untrained" in record:
            rows.update({f"untrained, {k}": v for k, v in record["untrained"].items()})
        print(evaluation.format_results_table(rows))
        print(f"results: {os.path.join(os.path.abspath(workdir), 'results.json')}")
    elif mode == "eval":
        print(evaluation.format_results_table(experiment.evaluate(config, workdir, _EXPORT.value)))
    elif mode == "export":
        print(f"export: {experiment.export_bundle(config, workdir, _OUTPUT.value)}")
    else:
        print(f"features: {experiment.extract(config, workdir, _OUTPUT.value)}")


def main() -> None:
    """Entry point: user mistakes end with one line on stderr and exit status 2."""
    flags.mark_flags_as_required(["config", "workdir"])
    try:
        app.run(_run)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
