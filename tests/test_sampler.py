"""P x K identity sampler: composition, device layout, determinism, resumption."""

import numpy as np
import pytest

from occreid_jax.data.sampler import IdentitySampler, check_batch_layout, process_rows
from occreid_jax.errors import UserError


def _labels():
    # 10 identities with 1..10 images each (identity 0 has fewer than K).
    return np.repeat(np.arange(10), np.arange(1, 11))


def test_every_batch_is_p_identities_times_k_images():
    labels = _labels()
    sampler = IdentitySampler(labels, batch_size=16, instances_per_id=4, num_devices=2, seed=3)
    batches = sampler.epoch(0)
    assert batches.shape == (sampler.steps_per_epoch, 16)
    assert sampler.steps_per_epoch == len(labels) // 16
    for batch in batches:
        ids = labels[batch].reshape(4, 4)  # identity-major: P rows of K
        assert (ids == ids[:, :1]).all(), "the K images of an identity must be adjacent"
        assert len(set(ids[:, 0])) == 4, "P distinct identities per batch"
        # Each device (contiguous half) receives whole identities.
        halves = labels[batch].reshape(2, 8)
        assert not set(halves[0]) & set(halves[1])


def test_images_drawn_without_replacement_when_enough():
    labels = _labels()
    sampler = IdentitySampler(labels, batch_size=8, instances_per_id=4, seed=0)
    for batch in sampler.epoch(1):
        for group in batch.reshape(-1, 4):
            members = set(np.flatnonzero(labels == labels[group[0]]))
            assert set(group) <= members
            if len(members) >= 4:
                assert len(set(group)) == 4


def test_deterministic_per_seed_and_epoch():
    labels = _labels()
    a = IdentitySampler(labels, 8, 4, seed=5)
    b = IdentitySampler(labels, 8, 4, seed=5)
    np.testing.assert_array_equal(a.epoch(2), b.epoch(2))
    assert not np.array_equal(a.epoch(2), a.epoch(3))
    assert not np.array_equal(a.epoch(2), IdentitySampler(labels, 8, 4, seed=6).epoch(2))


def test_resuming_mid_epoch_gives_the_same_stream():
    labels = _labels()
    sampler = IdentitySampler(labels, 8, 4, seed=1)
    full = sampler.batches_from(0)
    stream = [next(full) for _ in range(3 * sampler.steps_per_epoch)]
    resumed = sampler.batches_from(sampler.steps_per_epoch + 2)
    for expected in stream[sampler.steps_per_epoch + 2 :]:
        step, indices = next(resumed)
        assert step == expected[0]
        np.testing.assert_array_equal(indices, expected[1])


def test_identities_used_evenly_over_an_epoch():
    labels = np.repeat(np.arange(8), 8)
    sampler = IdentitySampler(labels, 16, 4, seed=0)  # 4 steps x 4 identities = 2 passes of 8
    counts = np.bincount(labels[sampler.epoch(0)].reshape(-1, 4)[:, 0], minlength=8)
    np.testing.assert_array_equal(counts, np.full(8, 2))


def test_bad_batch_layout_is_a_user_error():
    with pytest.raises(UserError, match="not divisible by devices x K"):
        check_batch_layout(batch_size=30, instances_per_id=4, num_devices=2)
    with pytest.raises(UserError, match="identities"):
        IdentitySampler(np.zeros(10, int), batch_size=8, instances_per_id=4)


def test_processes_split_every_batch_into_whole_identities():
    """2 processes x 2 devices: each process keeps its devices' rows; together they are the
    global batch, every device has whole identities, and no identity is on two processes."""
    labels = np.repeat(np.arange(16), 6)
    sampler = IdentitySampler(labels, batch_size=32, instances_per_id=4, num_devices=4, seed=2)
    assert process_rows(32, 4, (0, 2)) == slice(0, 16)
    assert process_rows(32, 4, (1, 2)) == slice(16, 32)
    seen = []
    for batch in sampler.epoch(0):
        parts = [batch[process_rows(32, 4, (p, 2))] for p in range(2)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        ids = [set(labels[part]) for part in parts]
        assert not ids[0] & ids[1]
        for part in parts:
            for device in labels[part].reshape(2, 8):  # 2 local devices, 2 identities each
                assert (device.reshape(2, 4) == device.reshape(2, 4)[:, :1]).all()
        seen.extend(labels[batch].reshape(-1, 4)[:, 0])
    # 3 steps x 8 identities over an epoch of 16 identities: each once, then a new pass.
    assert len(set(seen[:16])) == 16
    with pytest.raises(ValueError, match="cannot split"):
        process_rows(32, 3, (0, 2))


def test_same_camera_pairs_put_an_image_of_the_first_ones_camera_second():
    """Identity i has images in cameras (0, 0, 1, 1, 2); identity 9 has one per camera, so
    its second image keeps the plain draw. Everything else is the plain sampler's draw."""
    labels = np.repeat(np.arange(10), 5)
    camids = np.tile([0, 0, 1, 1, 2], 10)
    camids[45:] = [0, 1, 2, 3, 4]
    plain = IdentitySampler(labels, batch_size=8, instances_per_id=4, seed=1)
    paired = IdentitySampler(
        labels, batch_size=8, instances_per_id=4, seed=1, camids=camids, same_camera_pairs=True
    )
    for before, after in zip(plain.epoch(0), paired.epoch(0), strict=True):
        for old, new in zip(before.reshape(-1, 4), after.reshape(-1, 4), strict=True):
            assert new[0] == old[0] and (new[2:] == old[2:]).all()
            assert labels[new[1]] == labels[new[0]] and new[1] != new[0]
            own_camera = (labels == labels[new[0]]) & (camids == camids[new[0]])
            if own_camera.sum() > 1:
                assert camids[new[1]] == camids[new[0]]
            else:
                assert new[1] == old[1]
    with pytest.raises(ValueError, match="camids"):
        IdentitySampler(labels, batch_size=8, instances_per_id=4, same_camera_pairs=True)
