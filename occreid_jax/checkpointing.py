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

import os
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from occreid_jax.errors import UserError


class Checkpointer:
    """Orbax CheckpointManager over `<workdir>/checkpoints`.

    Args:
      directory: checkpoint folder (created if missing).
      signature: JSON-able description of the model; must match to restore.
      max_to_keep: how many recent checkpoints to keep.
      model_defaults: default values of model arguments; a checkpoint saved before the model
        had one of them restores when this run leaves it at its default.
    """

    def __init__(
        self,
        directory: str,
        signature: dict,
        max_to_keep: int = 3,
        model_defaults: dict | None = None,
    ):
        self.directory = os.path.abspath(directory)
        self.signature = signature
        self.model_defaults = model_defaults or {}
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def saved_signature(self) -> dict | None:
        """The model signature stored with the latest checkpoint, or None without one."""
        step = self.latest_step()
        if step is None:
            return None
        return self._manager.restore(
            step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())
        ).signature

    def save(self, step: int, state: Any) -> None:
        """Saves `state` (any flax-serialisable pytree, e.g. a TrainState) at `step`.

        A second save at the step of the latest checkpoint is a no-op.
        """
        if self.latest_step() == step:
            return
        tree = jax.device_get(flax.serialization.to_state_dict(state))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), signature=ocp.args.JsonSave(self.signature)
            ),
            force=True,
        )

    def restore_latest(self, state: Any) -> Any:
        """Returns `state` filled from the latest checkpoint, or `state` itself if there is none."""
        step = self.latest_step()
        if step is None:
            return state
        saved = self._with_defaults(self.saved_signature())
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
        except (ValueError, KeyError) as error:
            raise UserError(
                f"the checkpoint at step {step} in {self.directory} does not fit this model "
                f"({str(error).splitlines()[0][:200]}); use a new --workdir"
            ) from error
        return flax.serialization.from_state_dict(state, restored)

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
        """Blocks until asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
