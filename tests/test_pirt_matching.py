"""Pirt matching: a hand-computed toy case, the released defect, parity with a per-pair loop."""

import numpy as np
import pytest

from occreid_jax.evaluation import FeatureDistance
from occreid_jax.evaluation.pirt_matching import (
    CONFIDENCE_MODES,
    PirtDistance,
    check_settings,
    pirt_distance,
)
from occreid_jax.evaluation.protocol import evaluate_distance_blocks
from occreid_jax.evaluation.ranking import evaluate_rank

R2 = np.sqrt(2.0)  # distance of two orthogonal unit keys
COS45 = 1.0 - np.sqrt(0.5)  # cosine distance at 45 degrees


def _toy():
    """2 queries, 4 gallery images, D = 2, P = 3, chosen so every distance is a simple number.

    Stripe cosine distances (g1 = [3, 4] has cos 0.6 with [1, 0] and 0.8 with [0, 1]):
        q0: [0, 0.4, 1, 2] -> top-2 {g0, g1};  q1: [1, 0.2, 0, 1] -> top-2 {g1, g2}.
    Patch cosine distances (both queries [1, 0]): [1, 0, 1 - cos45, 0].
    Part keys (raw parts are rescaled copies of unit vectors) per part distance ||k_q - k_g||:
        (q0, g0): [0, R2, 0]   (q0, g1): [R2, 0, R2]   (q1, g1): [0, 0, 2]   (q1, g2): [0, R2, 0]
    """
    q = {
        "stripe": [[1.0, 0.0], [0.0, 1.0]],
        "patch": [[1.0, 0.0], [1.0, 0.0]],
        "parts": [
            [[2.0, 0.0], [0.5, 0.0], [0.0, 3.0]],
            [[0.0, 1.0], [0.25, 0.0], [7.0, 0.0]],
        ],
        "confidence": [[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]],
    }
    g = {
        "stripe": [[1.0, 0.0], [3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]],
        "patch": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]],
        "parts": [
            [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
            [[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]],
            [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]],
            [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
        ],
        "confidence": [
            [0.5, 0.25, 0.25],
            [0.125, 0.5, 0.375],
            [0.25, 0.25, 0.5],
            [1 / 3, 1 / 3, 1 / 3],
        ],
    }
    return q, g


# Local distances of the four top-2 pairs (q0,g0), (q0,g1), (q1,g1), (q1,g2), per weighting.
TOY_LOCAL = {
    # w = sqrt(c_q c_g)
    "query_and_gallery": [
        R2 * np.sqrt(0.25 * 0.25),
        R2 * np.sqrt(0.5 * 0.125) + R2 * np.sqrt(0.25 * 0.375),
        2 * np.sqrt(0.5 * 0.375),
        R2 * np.sqrt(0.25 * 0.25),
    ],
    # w = c_q
    "query": [R2 * 0.25, R2 * 0.5 + R2 * 0.25, 2 * 0.5, R2 * 0.25],
    # w = c_g
    "gallery": [R2 * 0.25, R2 * 0.125 + R2 * 0.375, 2 * 0.375, R2 * 0.25],
    # w = 1/3
    "none": [R2 / 3, 2 * R2 / 3, 2 / 3, R2 / 3],
}
# The released evaluator weights every candidate of query i with gallery_confs[i]:
# q0 with c_g = [0.5, 0.25, 0.25] (image g0), q1 with c_g = [0.125, 0.5, 0.375] (image g1).
TOY_LOCAL_RELEASED = {
    "query_and_gallery": [
        R2 * np.sqrt(0.25 * 0.25),
        R2 * np.sqrt(0.5 * 0.5) + R2 * np.sqrt(0.25 * 0.25),
        2 * np.sqrt(0.5 * 0.375),
        R2 * np.sqrt(0.25 * 0.5),
    ],
    "gallery": [R2 * 0.25, R2 * 0.5 + R2 * 0.25, 2 * 0.375, R2 * 0.5],
}


def _toy_expected(local):
    (l00, l01, l11, l12) = local
    return np.array(
        [
            [0.0 + 1.0 + l00, 0.4 + 0.0 + l01, 1.0 + COS45 + 1000, 2.0 + 0.0 + 1000],
            [1.0 + 1.0 + 1000, 0.2 + 0.0 + l11, 0.0 + COS45 + l12, 1.0 + 0.0 + 1000],
        ]
    )


@pytest.mark.parametrize("mode", CONFIDENCE_MODES)
def test_toy_by_hand(mode):
    q, g = _toy()
    dist = pirt_distance(q, g, {"top_n": 2, "confidence": mode})
    assert dist.shape == (2, 4)
    out = dist(slice(0, 2))
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_allclose(out, _toy_expected(TOY_LOCAL[mode]), rtol=1e-7, atol=1e-5)
    # One query at a time gives the same rows.
    np.testing.assert_allclose(np.concatenate([dist(slice(0, 1)), dist(slice(1, 2))]), out)


@pytest.mark.parametrize("mode", CONFIDENCE_MODES)
def test_toy_released_defect(mode):
    q, g = _toy()
    settings = {"top_n": 2, "confidence": mode, "released_index_defect": True}
    out = pirt_distance(q, g, settings)(slice(0, 2))
    local = TOY_LOCAL_RELEASED.get(mode, TOY_LOCAL[mode])  # "query" / "none" read no c_g
    np.testing.assert_allclose(out, _toy_expected(local), rtol=1e-7, atol=1e-5)
    default = pirt_distance(q, g, {"top_n": 2, "confidence": mode})(slice(0, 2))
    if mode in TOY_LOCAL_RELEASED:
        assert np.abs(out - default).max() > 0.05  # the confidences of g0/g1 and g2 differ
    else:
        np.testing.assert_array_equal(out, default)


def test_released_defect_needs_as_many_gallery_images_as_queries():
    q, g = _toy()
    small = {k: np.asarray(v)[:1] for k, v in g.items()}
    with pytest.raises(ValueError, match="released_index_defect"):
        pirt_distance(q, small, {"released_index_defect": True})
    # Modes that never read a gallery confidence are unaffected by the defect.
    pirt_distance(q, small, {"released_index_defect": True, "confidence": "query"})(slice(0, 2))


def _random(seed, n, dim=16, parts=3):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.05, 1.0, (n, parts))
    conf /= conf.sum(1, keepdims=True)
    return {
        "stripe": rng.standard_normal((n, dim)).astype(np.float32),
        "patch": rng.standard_normal((n, dim)).astype(np.float32),
        "parts": (rng.standard_normal((n, parts, dim)) * conf[..., None]).astype(np.float32),
        "confidence": conf.astype(np.float32),
    }


def _naive(q, g, top_n, mode, defect=False):
    """Per query, per candidate, in float64 (the released loop, generalised to every mode)."""
    q = {k: np.asarray(v, np.float64) for k, v in q.items()}
    g = {k: np.asarray(v, np.float64) for k, v in g.items()}

    def cos_dist(a, b):
        return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    num_q, num_g = len(q["stripe"]), len(g["stripe"])
    num_p = q["parts"].shape[1]
    out = np.zeros((num_q, num_g))
    for i in range(num_q):
        d_stripe = np.array([cos_dist(q["stripe"][i], g["stripe"][j]) for j in range(num_g)])
        top = np.argsort(d_stripe, kind="stable")[: min(top_n, num_g)]
        for j in range(num_g):
            out[i, j] = d_stripe[j] + cos_dist(q["patch"][i], g["patch"][j])
            if j not in top:
                out[i, j] += 1000.0
                continue
            c_g = g["confidence"][i if defect else j]
            for p in range(num_p):
                kq = q["parts"][i, p] / np.linalg.norm(q["parts"][i, p])
                kg = g["parts"][j, p] / np.linalg.norm(g["parts"][j, p])
                w = {
                    "query_and_gallery": np.sqrt(q["confidence"][i, p] * c_g[p]),
                    "query": q["confidence"][i, p],
                    "gallery": c_g[p],
                    "none": 1.0 / num_p,
                }[mode]
                out[i, j] += np.linalg.norm(kq - kg) * w
    return out


@pytest.mark.parametrize("mode", CONFIDENCE_MODES)
@pytest.mark.parametrize("defect", [False, True])
def test_parity_with_naive_loop(mode, defect):
    q, g = _random(0, 7), _random(1, 23)
    for top_n in (5, 23, 50):
        settings = {"top_n": top_n, "confidence": mode, "released_index_defect": defect}
        expected = _naive(q, g, top_n, mode, defect)
        assert (expected > 500).sum() == 7 * (23 - min(top_n, 23))
        dist = pirt_distance(q, g, settings)
        for size in (1, 3, 7):
            out = np.concatenate([dist(slice(s, min(s + size, 7))) for s in range(0, 7, size)])
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
            np.testing.assert_allclose(out[expected < 500], expected[expected < 500], atol=1e-5)
        # Tiny gather chunks (one query each) give the same numbers.
        small = PirtDistance(q, g, settings, chunk_elements=1)(slice(0, 7))
        np.testing.assert_allclose(small, dist(slice(0, 7)), rtol=0, atol=1e-6)
        # Index arrays select rows like slices.
        np.testing.assert_allclose(dist(np.array([4, 2])), dist(slice(0, 7))[[4, 2]], atol=1e-6)


def test_outside_top_n_is_global_plus_1000_and_inside_ranks_by_local():
    q, g = _random(2, 7), _random(3, 23)
    dist = pirt_distance(q, g, {"top_n": 5})
    rows = slice(2, 6)
    out = dist(rows)
    d_stripe = FeatureDistance(q["stripe"], g["stripe"])(np.arange(7)[rows])
    d_patch = FeatureDistance(q["patch"], g["patch"])(np.arange(7)[rows])
    top = np.argsort(d_stripe, axis=1, kind="stable")[:, :5]
    inside = np.zeros(out.shape, bool)
    np.put_along_axis(inside, top, True, axis=1)
    np.testing.assert_array_equal(out[~inside], (d_stripe + d_patch + np.float32(1000))[~inside])
    assert (out[inside] < 10).all()
    assert (out[~inside] > 1000 - 1e-3).all()

    # A hand-made ranking: g0 is nearest by stripe but its parts disagree; g1, second by
    # stripe, has identical parts; g2 is outside the top-2 with identical parts too.
    e = np.eye(3, dtype=np.float32)  # P = 3 parts, D = 3: part p of every image is e_p
    qf = {"stripe": [[1, 0, 0]], "patch": [[1, 0, 0]], "parts": e[None]}
    qf["confidence"] = [[1 / 3] * 3]
    gf = {
        "stripe": [[1, 0, 0], [1, 0.1, 0], [1, 1, 0]],
        "patch": [[1, 0, 0]] * 3,
        "parts": np.stack([-e, e, e]),  # g0: opposite keys, distance 2 per part
        "confidence": [[1 / 3] * 3] * 3,
    }
    row = pirt_distance(qf, gf, {"top_n": 2})(slice(0, 1))[0]
    stripe_order = np.argsort(FeatureDistance(qf["stripe"], gf["stripe"])(slice(0, 1))[0])
    np.testing.assert_array_equal(stripe_order, [0, 1, 2])
    np.testing.assert_array_equal(np.argsort(row, kind="stable"), [1, 0, 2])
    np.testing.assert_allclose(row[0], 0 + 0 + 2.0, atol=1e-6)  # sum_p 2 * 1/3


def test_ties_at_the_top_n_boundary_go_to_the_smaller_gallery_index():
    # Stripe distances of the query: g0 0.5 (tied), g1 0, g2 0.5 (tied), g3 0.5 (tied).
    cos60 = [0.5, np.sqrt(0.75)]
    qf = {"stripe": [[1.0, 0.0]], "patch": [[1.0, 0.0]], "parts": [[[1.0, 0.0]]]}
    qf["confidence"] = [[1.0]]
    gf = {
        "stripe": [cos60, [1.0, 0.0], cos60, cos60],
        "patch": [[1.0, 0.0]] * 4,
        "parts": [[[1.0, 0.0]]] * 4,
        "confidence": [[1.0]] * 4,
    }
    dist = pirt_distance(qf, gf, {"top_n": 3})
    d_stripe = dist.stripe(slice(0, 1))
    assert d_stripe[0, 0] == d_stripe[0, 2] == d_stripe[0, 3]
    np.testing.assert_array_equal(dist.top_candidates(d_stripe), [[0, 1, 2]])
    out = dist(slice(0, 1))[0]
    assert out[3] > 1000 and out[:3].max() < 1


def test_evaluates_through_the_block_protocol():
    q, g = _random(4, 7), _random(5, 23)
    q_pids, g_pids = np.arange(7) % 4, np.arange(23) % 4
    q_cams, g_cams = np.zeros(7, int), np.ones(23, int)
    dist = pirt_distance(q, g, {"top_n": 5})
    blocks = evaluate_distance_blocks(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=3)
    full = evaluate_rank(dist(slice(0, 7)), q_pids, g_pids, q_cams, g_cams)
    assert blocks["mAP"] == pytest.approx(full["mAP"], abs=1e-12)


def test_bad_inputs_raise():
    q, g = _toy()
    with pytest.raises(ValueError, match="lack \\['confidence'\\]"):
        pirt_distance({k: v for k, v in q.items() if k != "confidence"}, g)
    with pytest.raises(ValueError, match="number of images"):
        pirt_distance({**q, "patch": [[1.0, 0.0]]}, g)
    with pytest.raises(ValueError, match="per-image shape"):
        pirt_distance({**q, "stripe": [[1.0, 0.0, 0.0]] * 2}, g)
    with pytest.raises(ValueError, match=r"must be \[N, P, D\]"):
        pirt_distance({**q, "parts": [[1.0, 0.0]] * 2}, g)
    with pytest.raises(ValueError, match="confidence"):
        pirt_distance({**q, "confidence": [[0.5, 0.5]] * 2}, g)
    with pytest.raises(ValueError, match="NaN"):
        pirt_distance({**q, "stripe": [[np.nan, 0.0], [0.0, 1.0]]}, g)
    with pytest.raises(ValueError, match="negative"):
        pirt_distance({**q, "confidence": [[1.5, -0.25, -0.25]] * 2}, g)
    with pytest.raises(ValueError, match="unknown confidence"):
        pirt_distance(q, g, {"confidence": "both"})
    with pytest.raises(ValueError, match="unknown Pirt matching setting"):
        pirt_distance(q, g, {"topn": 5})
    with pytest.raises(ValueError, match="top_n"):
        pirt_distance(q, g, {"top_n": 0})
    with pytest.raises(ValueError, match="released_index_defect"):
        pirt_distance(q, g, {"released_index_defect": "yes"})
    assert check_settings(None) == {
        "top_n": 100,
        "confidence": "query_and_gallery",
        "released_index_defect": False,
    }
