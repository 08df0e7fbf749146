"""P x K identity sampler: every batch holds P identities with K images each.

The batch is laid out identity-major (the K images of an identity are adjacent), so splitting
the global batch into `num_devices` contiguous slices gives every device whole identities and
batch-hard triplet mining can stay on the device.

The order is a pure function of (seed, epoch): a resumed run that skips to step s of an epoch
sees exactly the batches an uninterrupted run would have seen.

Several processes (occreid_jax/distributed.py): every process draws the same global batches and
keeps the contiguous rows of its own devices (`process_rows`), so the identities of a batch are
partitioned across processes and devices, each device gets whole identities, and over an epoch
every identity is seen once overall, exactly as with one process driving all the devices.
"""

from __future__ import annotations

import numpy as np

from occreid_jax.errors import UserError


def check_batch_layout(batch_size: int, instances_per_id: int, num_devices: int) -> int:
    """Validates the global batch and returns P, the number of identities per batch."""
    if instances_per_id < 1 or batch_size < 1:
        raise UserError(
            f"data.batch_size={batch_size} and data.instances_per_id={instances_per_id} must be "
            "positive; set --config.data.batch_size and --config.data.instances_per_id"
        )
    if batch_size % (num_devices * instances_per_id):
        raise UserError(
            f"data.batch_size={batch_size} is not divisible by devices x K = {num_devices} x "
            f"{instances_per_id}; set --config.data.batch_size to a multiple of "
            f"{num_devices * instances_per_id}"
        )
    return batch_size // instances_per_id


def process_rows(batch_size: int, num_devices: int, shard: tuple[int, int] = (0, 1)) -> slice:
    """The rows of a global batch that belong to one process's devices.

    Args:
      batch_size: global batch size, laid out [num_devices, batch_size / num_devices].
      num_devices: devices over all processes (each process drives the same number).
      shard: (process index, number of processes); process p drives the global devices
        p * L .. (p + 1) * L - 1, L = num_devices / processes (JAX's order).
    Returns:
      slice(p * B / processes, (p + 1) * B / processes).
    """
    index, count = shard
    if num_devices % count or batch_size % num_devices or not 0 <= index < count:
        raise ValueError(
            f"cannot split a batch of {batch_size} over {num_devices} devices and "
            f"{count} processes (process {index})"
        )
    rows = batch_size // count
    return slice(index * rows, (index + 1) * rows)


class IdentitySampler:
    """Yields global batches of dataset indices, P identities x K images each.

    Per epoch the identities are shuffled and taken P at a time (the last incomplete group of
    identities wraps into a reshuffled pass, so every batch is full); each identity contributes
    K of its images drawn without replacement, or with replacement when it has fewer than K
    (as fast-reid's identity samplers do).

    Args:
      labels: [N] int train labels (0..C-1) of the split, in dataset order.
      batch_size: global batch size P * K.
      instances_per_id: K.
      num_devices: devices the batch is split over; P must be divisible by it.
      seed: base seed; the epoch is folded in.
      steps_per_epoch: batches per epoch; default len(labels) // batch_size, like fast-reid.
      camids: [N] camera ids, needed by `same_camera_pairs`.
      same_camera_pairs: make the second image of each identity's K another image from the
        first one's camera when the identity has one there (in real datasets, a frame of the
        same tracklet; MAT's feature consistency pairs them). Not in either paper.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        instances_per_id: int,
        num_devices: int = 1,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        camids: np.ndarray | None = None,
        same_camera_pairs: bool = False,
    ):
        self.num_ids_per_batch = check_batch_layout(batch_size, instances_per_id, num_devices)
        self.batch_size = batch_size
        self.instances_per_id = instances_per_id
        self.seed = seed
        labels = np.asarray(labels)
        self.identities = np.unique(labels)
        if len(self.identities) < self.num_ids_per_batch:
            raise UserError(
                f"the train split has {len(self.identities)} identities but a batch needs "
                f"P={self.num_ids_per_batch}; lower --config.data.batch_size"
            )
        self._members = {pid: np.flatnonzero(labels == pid) for pid in self.identities}
        self._camids = None
        if same_camera_pairs:
            if camids is None or len(camids) != len(labels):
                raise ValueError("same_camera_pairs needs one camera id per image (camids)")
            self._camids = np.asarray(camids)
        self.steps_per_epoch = steps_per_epoch or max(1, len(labels) // batch_size)

    def epoch(self, epoch: int) -> np.ndarray:
        """Returns all batches of one epoch, [steps_per_epoch, batch_size] int64 indices."""
        rng = np.random.default_rng([self.seed, epoch])
        k = self.instances_per_id
        batches = np.empty((self.steps_per_epoch, self.batch_size), np.int64)
        flat = batches.reshape(-1, k)
        for row, pid in enumerate(self._identity_order(rng)):
            members = self._members[pid]
            flat[row] = rng.choice(members, size=k, replace=len(members) < k)
            if self._camids is not None and k > 1:
                flat[row, 1] = self._camera_partner(rng, members, flat[row])
        return batches

    def _camera_partner(self, rng: np.random.Generator, members: np.ndarray, row: np.ndarray):
        """An image from the camera of `row[0]`, preferring ones not yet in `row`; row[1] when
        the identity has no other image in that camera."""
        cams = self._camids[members]
        same = members[(cams == self._camids[row[0]]) & (members != row[0])]
        if not len(same):
            return row[1]
        fresh = same[~np.isin(same, row[2:])]
        return rng.choice(fresh if len(fresh) else same)

    def _identity_order(self, rng: np.random.Generator) -> list[int]:
        """Identities for the whole epoch, P per batch, never twice in one batch."""
        p = self.num_ids_per_batch
        order: list[int] = []
        pool: list[int] = []
        while len(order) < self.steps_per_epoch * p:
            batch: list[int] = []
            while len(batch) < p:
                # Identities already in this batch wait for the next one (only at a wrap).
                pick = next((i for i, pid in enumerate(pool) if pid not in batch), None)
                if pick is None:
                    pool.extend(rng.permutation(self.identities).tolist())
                    continue
                batch.append(pool.pop(pick))
            order.extend(batch)
        return order

    def batches_from(self, step: int):
        """Yields (global_step, indices [batch_size]) forever, starting at `step`."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        while True:
            for position, indices in enumerate(self.epoch(epoch)[offset:], start=offset):
                yield epoch * self.steps_per_epoch + position, indices
            epoch, offset = epoch + 1, 0
