"""Several processes, one training run: JAX's own multi-process runtime.

Every process runs the same program (`python -m occreid_jax.main ...` once per host, or once
per group of devices). `initialize` joins the run with `jax.distributed.initialize`, from the
command line flags or from what JAX detects by itself (SLURM, Open MPI, Cloud TPU pods,
`JAX_COORDINATOR_ADDRESS`). After that:

* `jax.devices()` lists the devices of every process, `jax.local_devices()` this process's; the
  pmapped train step runs over all of them, and each process passes only the rows of its own
  devices (`[local devices, b, ...]`). JAX orders devices by process, so with L local devices
  each (the same on every process) process `p` holds pmap positions p * L .. (p + 1) * L - 1,
  and its rows of a global batch laid out `[devices, b]` are the contiguous block
  `process_rows(batch_size, num_devices, shard)` (see `data/sampler.py`).
* Evaluation: each process embeds its block of every evaluation batch; `gather_rows` brings the
  features of all processes back into dataset order on every process, so the metrics are those
  of a single process with the same devices.
* Files (logs, metrics, results, exports) are written by process 0 (`is_main_process`);
  checkpoints by orbax, which writes replicated arrays once and lets every process restore.

With one process (no flags) every helper here is the identity, and nothing changes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from occreid_jax.errors import UserError

# The mapped axis of the data-parallel step (pmap / shard_map) and of its collectives.
AXIS = "batch"

Shard = tuple[int, int]  # (this process's index, number of processes)


def replicate(tree: Any) -> Any:
    """Places every array on all local devices, laid out as the pmapped step returns its state.

    Without this the second step recompiles: a freshly initialised (or restored) state sits on
    one device and its step is a Python int, unlike the state the first step returns.
    """
    mesh = Mesh(np.asarray(jax.local_devices()), (AXIS,))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def initialize(
    coordinator_address: str = "",
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Joins a multi-process run; must be called before any JAX computation.

    Args:
      coordinator_address: "host:port" of process 0, where it listens (the same on every
        process); "" to let JAX find it (`auto`).
      num_processes: number of processes in the run.
      process_id: this process's index, 0..num_processes-1.
      auto: join with the settings JAX detects in the environment (SLURM, Open MPI, TPU
        pods, `JAX_COORDINATOR_ADDRESS` ...) for whatever the arguments leave unset.

    Returns:
      True when a multi-process run was joined, False when nothing was asked (one process).

    Raises:
      UserError: incomplete settings, or the run could not be joined.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if not auto and all(value in ("", None) for value in explicit):
        return False
    if not auto and any(value in ("", None) for value in explicit):
        raise UserError(
            "a multi-process run needs --coordinator_address, --num_processes and "
            "--process_id together (or --distributed to let JAX detect them)"
        )
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise UserError(
            f"--process_id={process_id} must be in 0..{num_processes - 1} "
            f"(--num_processes={num_processes})"
        )
    # CPU processes exchange data through gloo (the default in recent JAX; older ones need it).
    with contextlib.suppress(AttributeError, ValueError):
        if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address or None,
            num_processes=num_processes,
            process_id=process_id,
        )
    except (ValueError, RuntimeError) as error:  # includes XlaRuntimeError
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
        raise UserError(
            f"cannot join the multi-process run ({detail}); check --coordinator_address "
            "(process 0's host:port, reachable from every host), --num_processes and "
            "--process_id, or run without them for one process"
        ) from error
    check_uniform_devices()
    return True


def check_uniform_devices() -> None:
    """Every process must drive the same number of devices (the batch is split evenly)."""
    local, total, processes = jax.local_device_count(), jax.device_count(), jax.process_count()
    if local * processes != total:
        raise UserError(
            f"processes drive different numbers of devices ({total} devices over {processes} "
            f"processes, {local} here); give every process the same number of devices"
        )


def is_main_process() -> bool:
    """True on process 0, the one that prints and writes files."""
    return jax.process_index() == 0


def shard() -> Shard:
    """(this process's index, number of processes), for the data pipelines."""
    return jax.process_index(), jax.process_count()


def describe() -> str:
    """E.g. "4 device(s)" or "4 device(s) over 2 processes (2 each)"."""
    total, processes = jax.device_count(), jax.process_count()
    if processes == 1:
        return f"{total} device(s)"
    return f"{total} device(s) over {processes} processes ({jax.local_device_count()} each)"


def joined_message() -> str:
    """The line each process prints once it has joined.

    E.g. "process 1 of 2 joined: 2 local device(s), 4 in all (cpu)".
    """
    return (
        f"process {jax.process_index()} of {jax.process_count()} joined: "
        f"{jax.local_device_count()} local device(s), {jax.device_count()} in all "
        f"({jax.default_backend()})"
    )


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
    """Process 0 runs the block first, the others after it (e.g. building a dataset once).

    Args:
      name: a name for the barriers, the same on every process.
    """
    if not is_main_process():
        barrier(f"{name}: process 0 done")
    yield
    if is_main_process():
        barrier(f"{name}: process 0 done")


def broadcast_json(value: Any) -> Any:
    """Process 0's `value` (any JSON-able object) on every process."""
    if jax.process_count() == 1:
        return value
    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main_process() else None
    size = int(multihost_utils.broadcast_one_to_all(np.int64(0 if data is None else data.size)))
    buffer = data if data is not None else np.zeros(size, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return json.loads(received.tobytes().decode())


def gather_rows(local: dict[str, np.ndarray], rows: np.ndarray, num_rows: int) -> dict:
    """Per-process rows of a dataset-ordered array, gathered in dataset order on every process.

    Args:
      local: name -> [n, ...] this process's rows.
      rows: [n] int, the dataset position of each local row (all processes together cover
        0..num_rows-1 once).
      num_rows: N.
    Returns:
      name -> [N, ...] numpy arrays, identical on every process.
    """
    if jax.process_count() == 1:
        if not np.array_equal(rows, np.arange(num_rows)):
            raise ValueError(f"one process must hold the rows 0..{num_rows - 1} in order")
        return local
    counts = np.asarray(multihost_utils.process_allgather(np.int64(len(rows))))
    width = int(counts.max())

    def padded(x):
        x = np.asarray(x)
        return np.concatenate([x, np.zeros((width - len(x), *x.shape[1:]), x.dtype)])

    all_rows = np.asarray(multihost_utils.process_allgather(padded(np.asarray(rows, np.int64))))
    valid = np.arange(width)[None, :] < counts[:, None]  # [processes, width]
    positions = all_rows[valid]
    if not np.array_equal(np.sort(positions), np.arange(num_rows)):
        raise ValueError(f"the rows of all processes do not cover 0..{num_rows - 1} once")
    out = {}
    for key in sorted(local):  # the same order on every process: each gather is collective
        gathered = np.asarray(multihost_utils.process_allgather(padded(local[key])))
        value = np.empty((num_rows, *gathered.shape[2:]), gathered.dtype)
        value[positions] = gathered[valid]
        out[key] = value
    return out
