"""The MAT model: contract, maps, switches of Tables 1 and 2, and a real train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_optimizer

from occreid_jax import families
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import MatLossConfig, mat_objective
from occreid_jax.nets.mat import COCO_GROUPS, group_heatmaps
from occreid_jax.nets.mat_heads import LIMB_KEYPOINT_GROUPS
from occreid_jax.training.train import create_train_state, parallel_train_step

IMAGE = (64, 32)  # resnet_tiny: 4 x 2 feature maps
TINY = dict(
    backbone="resnet_tiny", num_parts=3, d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1
)


def _images(batch=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, *IMAGE, 3)), jnp.float32)


@functools.lru_cache
def _run(num_classes=5, **overrides):
    """(embeddings, aux, variables) of a tiny MAT on fixed images (one jitted init)."""
    model = families.build_model("mat", num_classes=num_classes, **{**TINY, **overrides})
    init = jax.jit(functools.partial(model.init_with_output, train=False))
    (embeddings, aux), variables = init(jax.random.PRNGKey(0), _images())
    return embeddings, aux, variables


def _shapes(num_classes=5, **overrides):
    """The same outputs as shapes only: traced, not compiled (fast)."""
    model = families.build_model("mat", num_classes=num_classes, **{**TINY, **overrides})
    init = functools.partial(model.init_with_output, train=False)
    (embeddings, aux), variables = jax.eval_shape(init, jax.random.PRNGKey(0), _images())
    return embeddings, aux, variables


def test_embeddings_and_aux_shapes():
    embeddings, aux, _ = _run()
    assert {k: v.shape for k, v in embeddings.items()} == {
        "global": (4, 16),
        "parts": (4, 3, 16),
        "visibility": (4, 3),
    }
    assert aux["logits"].shape == (4, 5) and aux["part_logits"].shape == (4, 3, 5)
    assert aux["segmentation"].shape == (4, 4, 2, 4)  # K + 1 channels at 4 x 2
    assert aux["keypoint_heatmaps"].shape == (4, 4, 2, 3)
    assert aux["keypoints"].shape == (4, 3, 2) and aux["jacobians"].shape == (4, 3, 2, 2)


def test_export_model_has_no_classifiers():
    embeddings, aux, variables = _shapes(num_classes=0)
    assert "logits" not in aux and "part_logits" not in aux
    assert "classifier" not in variables["params"]
    assert "part_classifier" not in variables["params"]
    assert set(embeddings) == {"global", "parts", "visibility"}


def test_maps_are_distributions_and_jacobians_start_at_identity():
    embeddings, aux, _ = _run()
    seg = np.asarray(aux["segmentation"])
    np.testing.assert_allclose(seg.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["keypoint_heatmaps"]).sum((1, 2)), 1.0, rtol=1e-5)
    assert np.abs(np.asarray(aux["keypoints"])).max() <= 1.0
    # FOMM's identity initialisation of the Jacobian head.
    np.testing.assert_allclose(
        aux["jacobians"], np.broadcast_to(np.eye(2), (4, 3, 2, 2)), atol=1e-6
    )
    # Visibility = segmentation mass per part; with the background it sums to 1.
    background = seg[..., 0].mean(axis=(1, 2))
    np.testing.assert_allclose(
        np.asarray(embeddings["visibility"]).sum(-1) + background, 1.0, rtol=1e-5
    )


def test_keypoints_are_the_soft_argmax_of_the_heatmaps():
    _, aux, _ = _run()
    heat = np.asarray(aux["keypoint_heatmaps"])
    from occreid_jax import motion

    grid = np.asarray(motion.make_grid(4, 2))
    expected = np.einsum("bhwk,hwc->bkc", heat, grid)
    np.testing.assert_allclose(aux["keypoints"], expected, rtol=1e-5, atol=1e-6)


def test_part_features_are_segmentation_weighted_means_of_the_encoder_output():
    _, aux, _ = _run()
    maps = np.asarray(aux["feature_maps"]).reshape(4, -1, 16)  # f_g [B, N, d]
    seg = np.asarray(aux["segmentation"]).reshape(4, -1, 4)[..., 1:]  # [B, N, K], no background
    expected = np.einsum("bnk,bnd->bkd", seg, maps) / seg.sum(1)[..., None]
    np.testing.assert_allclose(aux["part_feat"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aux["global_feat"], maps.mean(1), rtol=1e-5, atol=1e-6)
    # Heatmaps and segmentation are dot products of f_g with the head embeddings (scaled):
    # a softmax over channels of rank-(K+1) logits, i.e. not constant over positions.
    assert np.ptp(seg, axis=1).max() > 1e-4


@pytest.mark.parametrize(
    "overrides, present, absent",
    [
        ({"encoder_layers": 0, "decoder_layers": 0}, {"keypoints", "segmentation"}, set()),
        ({"decoder_layers": 0}, {"keypoints", "segmentation"}, set()),
        ({"keypoints": "none"}, {"segmentation", "part_feat"}, {"keypoints", "jacobians"}),
        ({"segmentation": False}, {"keypoints"}, {"segmentation", "part_logits"}),
        ({"position_embedding": "concat"}, {"keypoints", "segmentation"}, set()),
        ({"num_parts": 6}, {"keypoints", "segmentation"}, set()),
    ],
)
def test_ablation_switches(overrides, present, absent):
    embeddings, aux, variables = _shapes(**overrides)
    assert present <= set(aux) and not absent & set(aux)
    if overrides.get("decoder_layers") == 0:
        assert not any(name.startswith("decoder") for name in variables["params"])
    if overrides.get("encoder_layers") == 0:
        assert not any(name.startswith("encoder") for name in variables["params"])
    if overrides.get("segmentation") is False:
        assert set(embeddings) == {"global"}


def test_group_heatmaps_put_keypoints_on_their_joints():
    heatmaps = np.zeros((1, 16, 8, 17), np.float32)
    heatmaps[0, 2, 6, 5] = 1.0  # left shoulder near the top right
    heatmaps[0, 13, 1, 13] = heatmaps[0, 13, 1, 15] = 1.0  # left knee and ankle, bottom left
    grouped = np.asarray(group_heatmaps(jnp.asarray(heatmaps), (4, 2), 10))
    np.testing.assert_allclose(grouped.sum((1, 2)), 1.0, rtol=1e-5)
    shoulder = COCO_GROUPS[10].index((5,))
    left_leg = COCO_GROUPS[10].index((13, 15))
    assert np.unravel_index(grouped[0, ..., shoulder].argmax(), (4, 2)) == (0, 1)
    assert np.unravel_index(grouped[0, ..., left_leg].argmax(), (4, 2)) == (3, 0)
    # A group with no visible joint is uniform.
    np.testing.assert_allclose(grouped[0, ..., 0], 1.0 / 8, rtol=1e-4)


def test_limb_keypoint_groups_put_a_keypoint_on_each_limb():
    # Shoulder (row 2, column 6) and elbow (row 6, column 6): with "limbs" the upper arm's
    # keypoint sits between them, where "coco" gives the shoulder its own keypoint.
    heatmaps = np.zeros((1, 16, 8, 17), np.float32)
    heatmaps[0, 2, 6, 5] = heatmaps[0, 6, 6, 7] = 1.0
    limbs = group_heatmaps(jnp.asarray(heatmaps), (16, 8), 10, "limbs")
    coco = group_heatmaps(jnp.asarray(heatmaps), (16, 8), 10, "coco")
    upper_arm = LIMB_KEYPOINT_GROUPS[10].index((5, 7))
    shoulder = COCO_GROUPS[10].index((5,))
    rows = np.arange(16, dtype=np.float32)
    assert float(np.sum(np.asarray(limbs)[0, :, :, upper_arm].sum(1) * rows)) == pytest.approx(
        4.0, abs=0.05
    )
    assert float(np.sum(np.asarray(coco)[0, :, :, shoulder].sum(1) * rows)) == pytest.approx(
        2.0, abs=0.05
    )


def test_keypoint_groups_are_checked():
    with pytest.raises(UserError, match="keypoint_groups"):
        families.build_model("mat", num_classes=5, **{**TINY, "keypoint_groups": "joints"})


def test_heatmap_keypoints_follow_the_given_heatmaps():
    model = families.build_model("mat", num_classes=5, **{**TINY, "keypoints": "heatmaps"})
    images = _images()
    heatmaps = np.zeros((4, 16, 8, 17), np.float32)
    heatmaps[:, 14, 1, [13, 15]] = 1.0  # left knee / ankle: group (13, 15) of K=3 "legs"
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    init = jax.jit(functools.partial(model.init_with_output, train=True))  # train-mode outputs
    (_, aux), variables = init(rngs, images, heatmaps=jnp.asarray(heatmaps))
    legs = aux["keypoints"][:, 2]
    assert (legs[:, 0] < 0).all() and (legs[:, 1] > 0.4).all()  # left (x < 0), low (y > 0)
    # The joints themselves (for loss.consistency_motions="joints"): cell (14, 1) of 16 x 8.
    np.testing.assert_allclose(aux["joints"][:, 13], np.tile([-0.625, 0.8125], (4, 1)), atol=1e-6)
    weights = np.asarray(aux["joint_weights"])  # [B, K, 17]: in the group and visible
    assert weights.shape == (4, 3, 17) and weights.sum() == 4 * 2
    assert (weights[:, 2, [13, 15]] == 1).all() and (weights[:, :2] == 0).all()
    assert "keypoint_head" not in variables["params"]
    # Inference needs no heatmaps (no keypoints then); training without them is an error.
    _, aux = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
    assert "keypoints" not in aux and "segmentation" in aux
    with pytest.raises(UserError, match="pose.source"):
        jax.eval_shape(
            functools.partial(model.apply, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.PRNGKey(0)}),
            variables, images,
        )  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"keypoints": "pose"}, "model.keypoints"),
        ({"keypoints": "heatmaps", "num_parts": 4}, "num_parts"),
        ({"position_embedding": "cat"}, "position_embedding"),
        ({"d_model": 18}, "d_model"),
        ({"num_parts": 0}, "num_parts"),
        ({"segment_features": "pixels"}, "segment_features"),
    ],
)
def test_bad_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        families.build_model("mat", num_classes=3, **{**TINY, **overrides})


@pytest.mark.parametrize(
    "model_overrides, loss_overrides",
    [
        ({}, {}),
        (
            {"segment_features": "backbone"},
            {"consistency_target": "backbone", "consistency_stages": (1, 2),
             "consistency_pairs": "first", "keypoint_separation_weight": 1.0},
        ),
    ],
)  # fmt: skip
def test_a_train_step_reaches_every_parameter(model_overrides, loss_overrides):
    """One real pmapped step (two passes, Eq. 9): every parameter leaf gets a gradient, with
    the paper's settings and with the synthetic variant's (not in the paper).

    SGD without weight decay and momentum starting at zero: a leaf changes iff its gradient is
    non-zero somewhere.
    """
    model = families.build_model(
        "mat", num_classes=4, bn_axis_name="batch", **{**TINY, **model_overrides}
    )
    tx = make_optimizer(
        1, optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="warmup_multistep",
        warmup_epochs=0, warmup_factor=1.0, epochs=1, milestones=(10,),
    )  # fmt: skip
    state = create_train_state(model, tx, jax.random.PRNGKey(0), IMAGE)
    loss_cfg = MatLossConfig(
        triplet_metric="sqeuclidean", label_smoothing=0.0, group_size=4, **loss_overrides
    )
    step = parallel_train_step(
        functools.partial(mat_objective, cfg=loss_cfg),
        forward=families.get("mat").forward(loss_cfg),
    )
    devices = jax.local_device_count()
    batch = {
        "images": np.asarray(_images(8)).reshape(devices, 8 // devices, *IMAGE, 3),
        "labels": np.repeat(np.arange(2), 4).astype(np.int32).reshape(devices, -1),
    }
    params_before = jax.device_get(state.params)  # the step donates (deletes) `state`
    new_state, metrics = step(state, batch)
    for name in ("equivariance_value", "equivariance_jacobian", "consistency", "part_ce"):
        assert np.isfinite(metrics[name]).all()
    assert float(metrics["consistency"][0]) > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           params_before, new_state.params)  # fmt: skip
    flat = jax.tree_util.tree_flatten_with_path(changed)[0]
    frozen = [jax.tree_util.keystr(path) for path, moved in flat if not moved]
    assert not frozen, f"parameters without gradient: {frozen}"


def test_backbone_segment_features_come_from_their_own_projection():
    """segment_features="backbone": the segmentation multiplies its embeddings with a 1x1
    projection of the backbone map; changing it moves the segmentation, not the keypoints."""
    _, aux, variables = _run(segment_features="backbone")
    assert "segment_proj" in variables["params"] and "segment_proj" not in _run()[2]["params"]
    shapes = [m.shape for m in aux["backbone_maps"]]
    assert shapes == [(4, 16, 8, 64), (4, 8, 4, 128), (4, 4, 2, 256), (4, 4, 2, 512)]
    model = families.build_model("mat", num_classes=5, segment_features="backbone", **TINY)
    params = dict(variables["params"])
    params["segment_proj"] = jax.tree.map(lambda w: w * 3.0, params["segment_proj"])
    _, moved = jax.jit(functools.partial(model.apply, train=False))(
        {**variables, "params": params}, _images()
    )
    assert not np.allclose(moved["segmentation"], aux["segmentation"], atol=1e-4)
    np.testing.assert_allclose(moved["keypoints"], aux["keypoints"], atol=1e-6)


def test_every_ablation_row_is_a_valid_config():
    from configs import mat
    from occreid_jax.training.config_checks import check_config

    for table, rows in mat.ABLATIONS.items():
        seen = {}
        for label, overrides in rows.items():
            config = mat.get_config("synthetic")
            config.update_from_flattened_dict(overrides)
            check_config(config)  # builds the model: bad settings raise here
            # Two rows of one table that train the same config would repeat each other.
            key = config.to_json(sort_keys=True)
            assert key not in seen, f"{table}: {label!r} repeats {seen.get(key)!r}"
            seen[key] = label
    for table, (trained_table, trained_row) in mat.EVAL_ONLY.items():
        assert table in mat.ABLATIONS and trained_row in mat.ABLATIONS[trained_table]


def test_only_the_synthetic_variant_takes_the_hourglass_and_the_tables_keep_mats_parts():
    """The synthetic default is the hourglass with both keypoint sets; the paper's datasets and
    pets2009 keep MAT's own segmentation, and so does every row of the tables measured with it
    (a row that does not set its parts trains MAT's own)."""
    from configs import mat

    def parts(config):
        return config.model.segment_features, config.model.keypoint_features

    assert parts(mat.get_config("synthetic")) == ("hourglass", "both")
    for variant in ("occluded_duke", "market1501", "pets2009"):
        assert parts(mat.get_config(variant)) == ("backbone", "encoder"), variant
    for table in ("table1", "table2", "diagnostics", "flow"):
        for label, overrides in mat.ABLATIONS[table].items():
            config = mat.get_config("synthetic")
            config.update_from_flattened_dict(overrides)
            segment, keypoints = parts(config)  # some flow rows segment f_g ("encoder")
            assert segment in ("backbone", "encoder") and keypoints == "encoder", (table, label)
