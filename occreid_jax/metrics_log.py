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
