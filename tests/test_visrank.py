"""--mode=visrank: border colours by the protocol, query order by AP, pictures and page."""

import os
import re

import cv2
import numpy as np
import pytest

from occreid_jax.errors import UserError
from occreid_jax.pictures import rank_pictures, visrank


def test_borders_follow_the_protocol():
    colours = visrank.border_colours(5, 0, np.array([5, 5, 7, 5]), np.array([1, 0, 1, 2]))
    green, grey, red = rank_pictures.GREEN, rank_pictures.GREY, rank_pictures.RED
    assert colours == [green, grey, red, green]


def test_query_order_by_ap():
    valid = np.array([True, False, True, True])
    ap = np.array([0.5, 0.2, 0.5])  # queries 0, 2, 3
    np.testing.assert_array_equal(visrank.query_order(ap, valid, "worst_ap"), [2, 0, 3])
    np.testing.assert_array_equal(visrank.query_order(ap, valid, "best_ap"), [0, 3, 2])
    np.testing.assert_array_equal(visrank.query_order(ap, valid, "index"), [0, 1, 2, 3])
    with pytest.raises(UserError, match="vis.sort"):
        visrank.query_order(ap, valid, "random")


def test_visrank_of_an_export_on_the_tiny_benchmark(tiny_config, tiny_bundle_dir, tmp_path):
    config = tiny_config("baseline")
    config.vis.num_queries, config.vis.top_k = 3, 4
    pages = visrank.visrank(config, str(tmp_path), export_path=tiny_bundle_dir)
    assert [os.path.basename(os.path.dirname(p)) for p in pages] == [
        "occluded_queries",
        "holistic_queries",
    ]
    with open(pages[0]) as f:
        page = f.read()
    aps = [float(a) for a in re.findall(r": AP ([0-9.]+)</p>", page)]
    assert len(aps) == 3 and aps == sorted(aps)  # worst first
    pictures = re.findall(r'src="([^"]+\.png)"', page)
    assert len(pictures) == 3
    strip = cv2.cvtColor(cv2.imread(os.path.join(os.path.dirname(pages[0]), pictures[0])), 4)
    width = 2 * 32 + 2 * rank_pictures.BORDER  # the 64 x 32 inputs drawn twice as large
    assert strip.shape[1] == width + rank_pictures.GAP + 4 * (width + 2)  # query, 4 matches
    first_match = tuple(int(v) for v in strip[1, width + rank_pictures.GAP + 1])
    query_border = tuple(int(v) for v in strip[1, 1])
    assert query_border == rank_pictures.QUERY
    assert first_match in (rank_pictures.GREEN, rank_pictures.RED, rank_pictures.GREY)


def test_part_scores_are_printed_for_pirt_and_mat():
    pirt = {"confidence": np.array([[0.5, 0.3, 0.2]])}
    mat = {"visibility": np.array([[1.0, 0.05]])}
    assert visrank._scores(pirt, 0) == "conf .50 .30 .20"
    assert visrank._scores(mat, 0) == "visi 1.00 .05"
    assert visrank._scores({"global": np.zeros((1, 4))}, 0) == ""
