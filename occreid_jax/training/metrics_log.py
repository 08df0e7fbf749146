"""Run metrics: one JSON object per line in `<workdir>/metrics.jsonl`, and TensorBoard summaries."""

from __future__ import annotations

import json
import os
import time

import numpy as np


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "tolist"):
        return np.asarray(value).tolist()
    return value


class MetricsLog:
    """Appends metrics to a JSON-lines file and writes scalars to TensorBoard under `tb/`.

    `enabled=False` (every process but process 0 of a multi-process run) writes nothing.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._writer = None
        if tensorboard:
            import tensorflow as tf

            self._tf = tf
            self._writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

    def records(self) -> list[dict]:
        """Every record written so far (an empty list when disabled or without a file)."""
        if not self.enabled or not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a killed process
                    continue
        return records

    def forget_after(self, step: int, kinds_at_step: tuple[str, ...] = ()) -> None:
        """Drops the records after `step` (and those of `kinds_at_step` at it): a run resumed
        from a checkpoint at `step` writes them again, so every step appears once."""
        if not self.enabled:
            return
        records = self.records()

        def keep(record: dict) -> bool:
            at = record.get("step", 0)
            return at < step or (at == step and record.get("kind") not in kinds_at_step)

        kept = [r for r in records if keep(r)]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def write(self, kind: str, step: int, values: dict) -> None:
        """Records `values` (scalars, or nested dicts of scalars) of one `kind` at `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time(), **_plain(values)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            return
        with self._writer.as_default(step=int(step)):
            for name, value in _flatten(values):
                self._tf.summary.scalar(f"{kind}/{name}", value)
        self._writer.flush()


def _flatten(values: dict, prefix: str = ""):
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "/")
        elif np.ndim(value) == 0:
            yield name, float(value)
