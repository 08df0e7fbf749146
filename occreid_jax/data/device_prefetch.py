"""Host batches copied to the devices ahead of the step that reads them.

The pmapped step copies a numpy batch to the devices when it is called, so the copy sits
between one step and the next. `prefetch_to_devices` keeps `size` batches already placed on
the local devices (split along the leading device axis, as pmap reads them), so the copy of
batch t + 1 runs while step t does (as flax's `jax_utils.prefetch_to_device`, without its
extra host copy).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from occreid_jax.distributed import AXIS


def prefetch_to_devices(batches: Iterator[dict], size: int = 2) -> Iterator[dict]:
    """Yields the batches of `batches` ([D, b, ...] numpy arrays, D local devices) as device
    arrays split over the local devices, `size` of them placed ahead."""
    sharding = NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), PartitionSpec(AXIS))
    queue: collections.deque = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(batches, count):
            queue.append(jax.device_put(batch, sharding))  # asynchronous copy

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
