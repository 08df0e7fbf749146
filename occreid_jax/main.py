"""Command line: train, evaluate, export and extract Re-ID models.

  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo
  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo --mode=eval
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=eval --export=runs/demo/export
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=export [--output=DIR]
      [--format=jax_export|savedmodel|onnx]
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=extract [--output=FILE.npz]
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=heatmaps \
      --config.pose.init=pose_hrnet_w48_256x192.pth
  python -m occreid_jax.main --config=configs/mat.py:synthetic --workdir=runs/mat --mode=visualize
  python -m occreid_jax.main --config=... --workdir=runs/demo --mode=visrank [--export=DIR]

Any config field can be overridden: --config.train.epochs=2 --config.data.batch_size=32.

Several machines (train and eval): run the same command on every host, adding
  --coordinator_address=HOST0:PORT --num_processes=N --process_id=I   (I = 0 .. N-1)
or --distributed where JAX detects them (SLURM, Open MPI, TPU pods); see README.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from contextlib import nullcontext

# TensorFlow only runs tf.data here. Its oneDNN kernels print a notice at import and make
# float results depend on the CPU; neither is wanted for image decoding and augmentation.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

from occreid_jax.errors import UserError

MODES = ("train", "eval", "export", "extract", "heatmaps", "visualize", "visrank")

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file and variant, e.g. configs/baseline.py:synthetic, or a shipped config by name: "
    "baseline:synthetic, mat:occluded_duke, pirt:synthetic,size=tiny.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run folder: checkpoints, logs, results.json. Default runs/<config>[-<variant>], e.g. "
    "runs/mat-synthetic for --config=configs/mat.py:synthetic.",
)
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_EXPORT = flags.DEFINE_string(
    "export", "", "eval, visrank: evaluate this export bundle instead of the checkpoint."
)
_OUTPUT = flags.DEFINE_string("output", "", "export: bundle folder; extract: .npz path.")
_FORMAT = flags.DEFINE_enum(
    "format",
    "msgpack",
    ("msgpack", "jax_export", "savedmodel", "onnx"),
    "export: also write the embedding function as jax.export StableHLO, a TF SavedModel or "
    'an ONNX file (onnx: pip install -e ".[onnx]") (loadable without occreid_jax; see '
    "occreid_jax/bundles/export_formats.py).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Several processes: process 0's host:port, the same everywhere."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one, 0..N-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Several processes, settings detected by JAX (SLURM, Open MPI, TPU pods, "
    "JAX_COORDINATOR_ADDRESS); flags given above take precedence.",
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The project's own warnings as one line each (`warning: ...`); others as Python shows."""
    if category.__module__.startswith("occreid_jax"):
        from tqdm import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)  # on its own line, above any bar
    else:
        # What Python's own showwarning prints; written here rather than by calling the
        # showwarning seen at import, which a caller (pytest, a notebook) may have replaced.
        text = warnings.formatwarning(message, category, filename, lineno, line)
        (file or sys.stderr).write(text)


def _run(argv) -> None:
    del argv
    warnings.showwarning = _show_warning
    # orbax and tfds log every checkpoint and file at INFO; keep the terminal for progress.
    logging.set_verbosity(logging.WARNING)
    try:
        config = _CONFIG.value
        config.model  # noqa: B018  (a config that failed to load raises on first access)
    except Exception as error:  # the config file failed to load
        raise UserError(f"cannot load --config: {_last_line(error)}") from error
    from occreid_jax import distributed

    # Before anything touches a device: JAX's multi-process runtime comes first.
    if distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
    ):
        print(distributed.joined_message(), flush=True)  # one line per process
    from occreid_jax.config_files import default_workdir

    workdir, mode = _WORKDIR.value, _MODE.value
    if workdir is None:
        workdir = default_workdir(flags.FLAGS["config"].config_filename)
        if distributed.is_main_process() and mode != "heatmaps":  # heatmaps: stored with the data
            print(
                f"workdir: {workdir} (the default for this config; --workdir sets another)",
                flush=True,
            )
    try:
        lines = _dispatch(config, workdir, mode)
    finally:
        _FINISHED[0] = True  # a SIGTERM from now on finds the work done: ignored
    if distributed.is_main_process():  # the other processes computed the same, silently
        print("\n".join(lines))


# Whether this command's work has ended (set once `_dispatch` returns or raises).
_FINISHED = [False]


def _interrupt(signum, frame) -> None:
    """SIGTERM (schedulers, `timeout`, `docker stop`) is handled as Ctrl-C: training saves at
    the current step and says how to resume. One that arrives after the work ended (while the
    result or the error line is printed) is ignored, so it cannot turn a saved run into a
    process killed by the signal."""
    del signum, frame
    if not _FINISHED[0]:
        raise KeyboardInterrupt


def _dispatch(config, workdir: str, mode: str) -> list[str]:
    """Runs one --mode; returns the lines to print."""
    from occreid_jax import evaluation, experiment
    from occreid_jax.training import workdir_lock

    lines = []
    if mode == "train":
        record = experiment.train_and_evaluate(config, workdir)
        rows = dict(record["results"])
        if "untrained" in record:
            rows.update({f"untrained, {k}": v for k, v in record["untrained"].items()})
        lines.append(evaluation.format_results_table(rows))
        lines.append(f"results: {os.path.join(os.path.abspath(workdir), 'results.json')}")
    elif mode == "eval":
        results = experiment.evaluate(config, workdir, _EXPORT.value)
        lines.append(evaluation.format_results_table(results))
    elif mode == "heatmaps":
        lines.extend(
            f"heatmaps: {root}" for root in experiment.precompute_heatmaps(config, workdir)
        )
    elif mode == "visualize":
        from occreid_jax.pictures import visualize

        lines.append(f"visualize: {os.path.dirname(visualize.visualize(config, workdir)[-1])}")
    elif mode == "visrank":
        from occreid_jax.pictures import visrank

        lines.extend(f"visrank: {page}" for page in visrank.visrank(config, workdir, _EXPORT.value))
    elif mode == "export":
        with workdir_lock.held(workdir, "export") if os.path.isdir(workdir) else nullcontext():
            lines.append(f"export: {_export(config, workdir)}")
    else:
        lines.append(f"features: {experiment.extract(config, workdir, _OUTPUT.value)}")
    return lines


def _export(config, workdir: str) -> str:
    """--mode=export: the bundle, Pirt's pose net beside it, another format if asked."""
    from occreid_jax import distributed, experiment

    path = experiment.export_bundle(config, workdir, _OUTPUT.value)
    if config.pose.init and distributed.is_main_process():  # Pirt: store its pose net too
        from occreid_jax.bundles import bundle_pose

        bundle_pose.write_from_config(path, config)
    if _FORMAT.value != "msgpack" and distributed.is_main_process():
        from occreid_jax.bundles import export_formats

        path = export_formats.write(path, _FORMAT.value)
    return path


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad --config (file, variant, override) reported in one line.

    `--config=mat:synthetic` names a shipped config (`config_files.resolve_config_arg`)."""
    from occreid_jax.config_files import resolve_config_arg

    argv = [
        f"--config={resolve_config_arg(a[len('--config=') :])}" if a.startswith("--config=") else a
        for a in argv
    ]
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # config_flags wraps the config file's own exceptions
        unknown = _unknown_field(argv)
        _fail(unknown or f"bad command line: {_last_line(error)}")
    return []


def _unknown_field(argv: list[str]) -> str | None:
    """`unknown config field train.learning_rate; did you mean train.lr?`, or None.

    Loads the --config file itself and looks up every --config.PATH override in it.
    """
    import difflib

    from occreid_jax.config_files import load_config_file

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        config = (
            load_config_file(path).get_config(arg) if arg else load_config_file(path).get_config()
        )
    except Exception:  # the file itself is bad: the generic message says why
        return None
    for flag in argv:
        if not flag.startswith("--config."):
            continue
        names = flag[len("--config.") :].split("=", 1)[0].split(".")
        node = config
        for depth, name in enumerate(names):
            parent = ".".join(names[:depth])
            if not hasattr(node, "keys"):
                return f"config field {parent} is a value, not a group; set --config.{parent}=VALUE"
            fields = list(node.keys())
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1)
                hint = (
                    f"; did you mean {'.'.join([*names[:depth], close[0]])}?"
                    if close
                    else (f"; the {parent or 'top-level'} fields are {', '.join(fields)}")
                )
                return f"unknown config field {'.'.join(names[: depth + 1])}{hint}"
            node = node[name]
    return None


def _last_line(error: Exception) -> str:
    """The informative end of a multi-line (wrapped) exception message, on one line."""
    lines = [
        line.strip()
        for line in str(error).replace("\\n", "\n").splitlines()
        if line.strip() and not line.strip().startswith(("Pass --help", "File ", "^"))
    ]
    if not lines:
        return str(error)
    tail = lines[-2:] if lines[-1].startswith("Did you mean") else lines[-1:]
    return " ".join(tail).replace("'", "").replace("\\", "")


def main(restore_signal_handler: bool = True) -> None:
    """Entry point: user mistakes end with one line on stderr and exit status 2.

    Args:
      restore_signal_handler: put the caller's SIGTERM handler back at the end (a caller
        that goes on running); a process that ends with the command ignores SIGTERM from then
        on (else a signal that arrives while it exits would turn a run that saved and said so
        into a process killed by it: Python's exit resets its own handlers to the default).
    """
    flags.mark_flags_as_required(["config"])
    _FINISHED[0] = False
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        app.run(_run, flags_parser=_parse_flags)
    except UserError as error:
        _fail(str(error))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside training, which saves on its own
        print("error: interrupted; nothing was saved by this command", file=sys.stderr)
        sys.exit(130)
    finally:
        if restore_signal_handler:
            signal.signal(signal.SIGTERM, previous_handler)
        else:  # the work is over: ignored in C, which Python's exit does not reset to the
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # default (a Python handler, it does)


if __name__ == "__main__":
    main(restore_signal_handler=False)
