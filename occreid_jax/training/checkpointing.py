"""Training checkpoints with orbax: save every N steps, resume from a workdir's latest.

Each checkpoint holds the whole train state (params, batch stats, optimiser state, step, rng)
and a JSON signature of the model (name, constructor arguments, input size). Restoring into a
different model stops with a one-line error instead of a tree-mismatch stack trace.

Several processes (occreid_jax/distributed.py): every process calls the same saves and restores;
orbax writes the replicated state and the signature once (process 0), synchronises the
processes around each save, and every process restores from the files, so the directory must be
one every host sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from occreid_jax import distributed
from occreid_jax.errors import UserError

# Markers of a failed read (tensorstore and orbax status words, JSON decoding), as opposed to a
# tree that does not fit the model.
READ_ERROR_MARKERS = (
    "OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "Error reading", "No such file",
    "Unterminated", "Expecting", "corrupt", "checksum", "truncated", "Unexpected end",
)  # fmt: skip
_WARNED: set[tuple[str, int]] = set()  # (directory, step): each broken step is named once


class Unreadable(Exception):
    """A checkpoint step whose files cannot be read (missing, truncated, bad JSON)."""


def is_read_error(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a failed read rather than a model mismatch."""
    while error is not None:
        if isinstance(error, OSError | EOFError | json.JSONDecodeError):
            return True
        if any(marker in str(error) for marker in READ_ERROR_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _quiet_closed_loop() -> None:
    """Silences the "Event loop is closed" callbacks a failed orbax read or write leaves.

    When one array of a restore (or a save) fails, orbax gives up on the step and closes its
    event loop while tensorstore's other reads or writes are still in flight; their completion
    callbacks then raise in threads (printed as tracebacks, harmless). Only that exact error is
    dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "quiet_closed_loop", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.quiet_closed_loop = True
    sys.unraisablehook = hook
    printed = sys.excepthook  # tensorstore's callbacks print theirs through sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        printed(kind, value, traceback)

    sys.excepthook = excepthook


class _FailedSaveLogs(logging.Filter):
    """Drops orbax's own error logs of a failed save: `Checkpointer` reports it in one line."""

    MARKERS = ("raised an exception", "Failed to run", "Save Finalize thread", "failed.")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        return not any(m in record.getMessage() for m in self.MARKERS)


def _quiet_failed_saves() -> None:
    """Installs `_FailedSaveLogs` on the absl logger orbax logs to (once)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _FailedSaveLogs) for f in logger.filters):
        logger.addFilter(_FailedSaveLogs())


def one_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an error message, cut at a word boundary to at most `limit` chars."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    line = lines[0]
    if len(line) <= limit:
        return line
    return line[: line.rfind(" ", 0, limit)].rstrip(" ,;:") + " ..."


class Checkpointer:
    """Orbax CheckpointManager over `<workdir>/checkpoints`.

    Args:
      directory: checkpoint folder (created if missing).
      signature: JSON-able description of the model; must match to restore.
      max_to_keep: how many recent checkpoints to keep.
      model_defaults: default values of model arguments; a checkpoint saved before the model
        had one of them restores when this run leaves it at its default.
      cleanup_tmp: remove the temporary folders of saves that failed or were killed (only the
        holder of the workdir's lock: another run's save in flight has one too).
    """

    def __init__(
        self,
        directory: str,
        signature: dict,
        max_to_keep: int = 3,
        model_defaults: dict | None = None,
        cleanup_tmp: bool = False,
    ):
        self.directory = os.path.abspath(directory)
        self.cleanup_tmp = cleanup_tmp
        self.signature = signature
        self.model_defaults = model_defaults or {}
        self._pending: int | None = None  # the step of an asynchronous save in flight
        self._failed = False
        _quiet_failed_saves()
        _quiet_closed_loop()  # a failed asynchronous save prints them before it raises
        try:
            self._manager = self._open_manager(max_to_keep)
        except OSError as error:
            raise UserError(
                f"cannot use the checkpoint folder {self.directory} ({error.strerror}); pass a "
                "writable --workdir"
            ) from None

    def _open_manager(self, max_to_keep: int) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=self.cleanup_tmp
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def saved_signature(self) -> dict | None:
        """The model signature of the newest readable checkpoint, or None without one."""
        for step in self._newest_first():
            try:
                return self._read_signature(step)
            except Unreadable as error:
                self._warn(step, error)
        return None

    def save(self, step: int, state: Any) -> None:
        """Saves `state` (any flax-serialisable pytree, e.g. a TrainState) at `step`.

        A second save at the step of the latest checkpoint is a no-op.
        """
        if self.latest_step() == step:
            return
        tree = jax.device_get(flax.serialization.to_state_dict(state))
        try:  # (an earlier asynchronous save that failed raises here too)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), signature=ocp.args.JsonSave(self.signature)
                ),
                force=True,
            )
        except Exception as error:
            raise self._not_saved(error, step) from None
        self._pending = step

    def restore_latest(self, state: Any, set_aside_broken: bool = False) -> Any:
        """Returns `state` filled from the newest intact checkpoint, or `state` itself if none.

        A checkpoint that cannot be read (a truncated or missing file) is skipped with a
        one-line warning naming its step; with `set_aside_broken` (training, which saves that
        step again) its folder is renamed `<step>.broken`. A checkpoint of another model is a
        `UserError`, as is a folder whose every checkpoint is unreadable.
        """
        steps = self._newest_first()
        for step in steps:
            try:
                restored = self._restore_step(step, state)
            except Unreadable as error:
                self._warn(step, error)
                if set_aside_broken:
                    self._set_aside(step)
                continue
            return restored
        if steps:
            raise UserError(
                f"no checkpoint in {self.directory} can be read (steps {steps} are broken); "
                "use a new --workdir, or move the broken step folders away"
            )
        return state

    def _newest_first(self) -> list[int]:
        return sorted(self._manager.all_steps(), reverse=True)

    def _read_signature(self, step: int) -> dict:
        try:
            return self._manager.restore(
                step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())
            ).signature
        except Exception as error:
            raise Unreadable(one_line(error)) from error

    def _restore_step(self, step: int, state: Any) -> Any:
        saved = self._with_defaults(self._read_signature(step))
        if saved != self.signature:
            differences = sorted(
                k for k in set(saved) | set(self.signature) if saved.get(k) != self.signature.get(k)
            )
            details = ", ".join(
                f"{k}: saved {saved.get(k)!r} vs now {self.signature.get(k)!r}" for k in differences
            )
            raise UserError(
                f"the checkpoint in {self.directory} is from a different model ({details}); "
                "use a new --workdir or the config it was trained with"
            )
        target = jax.device_get(flax.serialization.to_state_dict(state))
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            ).state
        except Exception as error:
            if is_read_error(error):
                _quiet_closed_loop()
                raise Unreadable(one_line(error)) from error
            raise UserError(
                f"the checkpoint at step {step} in {self.directory} does not fit this model "
                f"({one_line(error)}); use a new --workdir"
            ) from error
        return flax.serialization.from_state_dict(state, restored)

    def _warn(self, step: int, error: Exception) -> None:
        key = (self.directory, step)
        if key in _WARNED or not distributed.is_main_process():
            return
        _WARNED.add(key)
        print(
            f"warning: skipping the unreadable checkpoint at step {step} in {self.directory} "
            f"({error})",
            file=sys.stderr,
            flush=True,
        )

    def _set_aside(self, step: int) -> None:
        """Renames a broken step folder so that the step can be saved again (process 0)."""
        if distributed.is_main_process():
            folder = os.path.join(self.directory, str(step))
            if os.path.isdir(folder):
                os.replace(folder, f"{folder}.broken")
        distributed.barrier("set aside a broken checkpoint")
        self._manager.reload()

    def _with_defaults(self, saved: dict) -> dict:
        """`saved` with the model arguments it predates set to their defaults."""
        kwargs = saved.get("model_kwargs")
        current = self.signature.get("model_kwargs")
        if not isinstance(kwargs, dict) or not isinstance(current, dict):
            return saved
        missing = {
            k: self.model_defaults[k]
            for k in current
            if k not in kwargs and k in self.model_defaults
        }
        return {**saved, "model_kwargs": {**kwargs, **missing}} if missing else saved

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk.

        Raises:
            UserError: a save failed (full disk, a folder gone): the step not saved and the
                latest intact one, in one line.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._not_saved(error, self._pending) from None
        self._pending = None

    def close(self) -> None:
        """Waits for the saves (`wait`, which may raise) and closes the manager."""
        try:
            if not self._failed:
                self.wait()
        finally:
            with contextlib.suppress(Exception):  # (after a failed save, its threads' errors)
                self._manager.close()

    def _committed_steps(self) -> list[int]:
        """The steps whose folders orbax finished (renamed from their temporary names)."""
        with contextlib.suppress(OSError):
            names = os.listdir(self.directory)
            return sorted(int(n) for n in names if n.isdigit())
        return []

    def _not_saved(self, error: BaseException, step: int | None) -> UserError:
        """The one-line error of a failed save (the step in flight, or `step`)."""
        self._failed = True
        # Its other writes' tasks, failed too, would be logged at exit: the line says it all.
        logging.getLogger("asyncio").addFilter(
            lambda record: "exception was never retrieved" not in record.getMessage()
        )
        failing = self._pending if self._pending is not None else step
        intact = [s for s in self._committed_steps() if s != failing]
        text = str(error)
        no_space = "No space left" in text or "os_error_code='28'" in text
        reason = "no space left on the disk" if no_space else one_line(error)
        latest = f"step {intact[-1]}" if intact else "none, a rerun starts over"
        return UserError(
            f"could not save the checkpoint of step {failing} in {self.directory} ({reason}); "
            f"the latest intact checkpoint: {latest}; free some space (or fix the folder) and "
            "rerun the same command to resume"
        )
