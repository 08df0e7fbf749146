"""What the MAT benchmarks measure of parts and limbs: merged partitions, limb shares."""

import numpy as np

from occreid_jax.probes import limb_flows
from occreid_jax.probes.limb_flows import cell_labels, limb_shares, merge_parts


def test_merging_limbs_moves_their_mass_onto_the_part_that_takes_them():
    seg = np.zeros((1, 1, 2, 4), np.float32)  # background and parts 0-2 (channels 1-3)
    seg[0, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    seg[0, 0, 1] = [0.0, 0.0, 0.5, 0.5]
    out = merge_parts(seg, [(0, [2]), (1, [])])
    np.testing.assert_allclose(out[0, 0], [[0.1, 0.6, 0.3, 0.0], [0.0, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(seg[0, 0, 0], [0.1, 0.2, 0.3, 0.4])  # the input is kept


def test_limb_shares_by_hand():
    """Six person cells: 3 of limb 1 (two won by part 1, one by the background), 3 of limb 2
    (one won by part 2, two by part 1); the background cell does not count."""
    labels = np.asarray([[[1, 1, 1, 2, 2, 2, 0]]])
    winners = np.asarray([[[1, 1, 0, 2, 1, 1, 2]]])
    seg = np.eye(3)[winners]
    shares = limb_shares(seg, labels)
    assert shares["background"] == 1 / 6
    assert shares["own"] == 3 / 6 and shares["other"] == 2 / 6
    np.testing.assert_allclose(shares["per_limb"], [[1 / 3, 2 / 3, 0], [0, 2 / 3, 1 / 3]])


def test_cell_labels_take_each_cells_majority_limb():
    """A person standing upright in a 128 x 64 image, 4 x 4-pixel cells: the head's cells at
    the top, the torso's between shoulders and hips, the corner empty."""
    x = [32, 31, 33, 30, 34, 24, 40, 20, 44, 18, 46, 26, 38, 27, 37, 27, 37]
    y = [12, 10, 10, 12, 12, 30, 30, 48, 48, 62, 62, 70, 70, 95, 95, 120, 120]
    joints = np.stack([x, y, np.ones(17)], -1)[None].astype(np.float32)
    labels = cell_labels(joints, (128, 64), (32, 16), limb_flows.LIMB_GROUPS[10])
    assert labels.shape == (1, 32, 16)
    assert labels[0, 3, 8] == 1  # pixels 12-15 down, 32-35 across: the head (group 0)
    assert labels[0, 12, 8] == 2  # 48-51 down, on the centre line: the torso (group 1)
    assert labels[0, 0, 0] == 0
