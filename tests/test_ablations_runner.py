"""The ablation runner's row selection: labels that hold commas, unknown labels."""

import pytest

from benchmarks.table_rows import wanted_rows
from occreid_jax.errors import UserError

ROWS = {"#1 baseline (ResNet, BNNeck)": {}, "#5 MAT": {}, "#6 MAT, ground-truth keypoints": {}}


def test_labels_with_commas_are_selected_whole():
    text = "#1 baseline (ResNet, BNNeck),#6 MAT, ground-truth keypoints"
    assert wanted_rows(text, ROWS) == [
        "#1 baseline (ResNet, BNNeck)",
        "#6 MAT, ground-truth keypoints",
    ]
    assert wanted_rows("#5 MAT", ROWS) == ["#5 MAT"]


def test_an_unknown_label_is_a_one_line_error_listing_the_rows():
    with pytest.raises(UserError, match=r"no row '#7 other' in this table; it has: #1 baseline"):
        wanted_rows("#5 MAT,#7 other", ROWS)
