"""Pirt's parts on hand-checkable cases, its transformer against torch, its size, its loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax.losses.classification import cross_entropy_label_smoothing
from occreid_jax.losses.objectives import (
    LossConfig,
    PirtLossConfig,
    grouped_triplet,
    pirt_objective,
)
from occreid_jax.nets.pirt import Pirt
from occreid_jax.nets.pirt_parts import (
    JOINT_GROUPS,
    ConfidenceScore,
    StripeAttention,
    TransformerLayer,
    joint_features,
    pose_guidance,
)

TINY = dict(backbone="resnet_tiny", irm_width=32, ffn_dim=32, csm_width=16, num_layers=2)


def _heatmaps_with_peaks(peaks, shape=(1, 8, 8, 17)):
    maps = np.zeros(shape, np.float32)
    for joint, (row, col), value in peaks:
        maps[0, row, col, joint] = value
    return maps


def test_group_masks_and_confidences_from_known_heatmaps():
    # Nose (head group) 0.9 in the top-left 4x4 block; left shoulder (in the arms AND the
    # head group, as released) 0.7 bottom-left; left hip (legs) 0.5 bottom-right; the
    # right wrist 0.0005 is below tau = 0.001.
    maps = _heatmaps_with_peaks(
        [(0, (1, 2), 0.9), (5, (6, 1), 0.7), (11, (7, 7), 0.5), (10, (0, 7), 0.0005)]
    )
    guide = jax.tree.map(np.asarray, pose_guidance(jnp.asarray(maps), (2, 2), threshold=0.001))

    np.testing.assert_allclose(guide["group_confidence"], [[0.7, 0.5, 0.9]])  # arms, legs, head
    np.testing.assert_allclose(guide["human_mask"][0, ..., 0], [[0.9, 0.0005], [0.7, 0.5]])
    joint_masks = guide["joint_masks"][0]
    assert joint_masks[0, 0, 0] == 1 and joint_masks[..., 0].sum() == 1
    assert joint_masks[1, 0, 5] == 1 and joint_masks[..., 5].sum() == 1
    assert joint_masks[1, 1, 11] == 1 and joint_masks[..., 11].sum() == 1
    assert joint_masks[..., 10].sum() == 0  # 0.0005 <= tau
    assert joint_masks.sum() == 3


def test_joint_features_average_over_the_whole_grid_not_the_mask_area():
    fmap = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    masks = np.zeros((1, 2, 2, 17), np.float32)
    masks[0, 0, 1, 4] = 1.0
    masks[0, :, :, 7] = 1.0
    feats = np.asarray(joint_features(jnp.asarray(fmap), jnp.asarray(masks)))
    np.testing.assert_allclose(feats[0, 4], fmap[0, 0, 1] / 4)  # one cell / (h * w)
    np.testing.assert_allclose(feats[0, 7], fmap[0].mean(axis=(0, 1)))
    np.testing.assert_allclose(feats[0, 0], 0.0)


def test_stripe_attention_only_mixes_positions_within_a_stripe():
    layer = StripeAttention(num_heads=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 8))
    variables = layer.init(jax.random.PRNGKey(1), x)
    perturbed = x.at[:, 2].add(jax.random.normal(jax.random.PRNGKey(2), (2, 4, 8)))
    before, after = layer.apply(variables, x), layer.apply(variables, perturbed)
    changed = np.abs(np.asarray(after - before)).max(axis=(0, 2, 3))
    assert changed[2] > 1e-3
    np.testing.assert_array_equal(np.delete(changed, 2), 0.0)


def test_confidences_sum_to_one_and_follow_the_pose_scores():
    csm = ConfidenceScore(hidden_dim=4)
    parts = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 6))
    group_conf = jnp.array([[0.9, 0.5, 0.2], [0.0, 0.8, 0.8], [0.0, 0.0, 0.0]])
    variables = csm.init(jax.random.PRNGKey(1), parts, group_conf)
    conf = np.asarray(csm.apply(variables, parts, group_conf))
    np.testing.assert_allclose(conf[:2].sum(-1), 1.0, rtol=1e-6)
    assert conf[1, 0] == 0.0  # an invisible group gets no weight
    np.testing.assert_array_equal(conf[2], 0.0)  # no keypoint at all: all zero, no NaN


def test_transformer_layer_matches_torch_post_ln_encoder_layer():
    torch = pytest.importorskip("torch")
    dim, heads, ffn = 16, 4, 8
    reference = torch.nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=ffn, dropout=0.1, activation="relu", batch_first=True
    ).eval()
    for param in reference.parameters():
        torch.nn.init.normal_(param, std=0.3)
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    head_dim = dim // heads
    w_q, w_k, w_v = np.split(state["self_attn.in_proj_weight"], 3)
    b_q, b_k, b_v = np.split(state["self_attn.in_proj_bias"], 3)

    def qkv(w, b):
        return {"kernel": w.T.reshape(dim, heads, head_dim), "bias": b.reshape(heads, head_dim)}

    params = {
        "attention": {
            "query": qkv(w_q, b_q),
            "key": qkv(w_k, b_k),
            "value": qkv(w_v, b_v),
            "out": {
                "kernel": state["self_attn.out_proj.weight"].T.reshape(heads, head_dim, dim),
                "bias": state["self_attn.out_proj.bias"],
            },
        },
        "linear1": {"kernel": state["linear1.weight"].T, "bias": state["linear1.bias"]},
        "linear2": {"kernel": state["linear2.weight"].T, "bias": state["linear2.bias"]},
        "norm1": {"scale": state["norm1.weight"], "bias": state["norm1.bias"]},
        "norm2": {"scale": state["norm2.weight"], "bias": state["norm2.bias"]},
    }
    tokens = np.random.default_rng(0).normal(size=(3, 6, dim)).astype(np.float32)
    layer = TransformerLayer(num_heads=heads, ffn_dim=ffn)
    expected_shapes = jax.tree.map(
        np.shape, layer.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
    )
    assert jax.tree.map(np.shape, params) == expected_shapes
    ours = layer.apply({"params": params}, tokens, train=False)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-5)


def _init(model, batch=2, size=(64, 32)):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, *size, 3))
    maps = jax.random.uniform(jax.random.PRNGKey(1), (batch, size[0] // 4, size[1] // 4, 17))
    variables = model.init(jax.random.PRNGKey(2), x, train=False, heatmaps=maps)
    return variables, x, maps


def test_one_shared_transformer_serves_stripes_patches_and_every_part():
    model = Pirt(num_classes=5, **TINY)
    variables, x, maps = _init(model)
    params = variables["params"]
    assert sorted(k for k in params if "inter" in k) == ["inter"]
    assert sorted(params["inter"]) == ["layer0", "layer1"]

    embed = jax.jit(functools.partial(model.apply, train=False, heatmaps=maps))
    before, _ = embed(variables, x)
    # Changing only one weight matrix of the transformer changes every branch.
    bumped = jax.tree.map(lambda a: a, params)
    kernel = bumped["inter"]["layer0"]["linear1"]["kernel"]
    bumped["inter"]["layer0"]["linear1"]["kernel"] = kernel + jax.random.normal(
        jax.random.PRNGKey(9), kernel.shape
    )
    after, _ = embed({**variables, "params": bumped}, x)
    for key in ("stripe", "patch"):
        assert np.abs(np.asarray(after[key] - before[key])).max() > 1e-4, key
    part_change = np.abs(np.asarray(after["parts"] - before["parts"])).max(axis=(0, 2))
    assert (part_change > 1e-6).all(), part_change


def test_outputs_and_table3_switches():
    full = Pirt(num_classes=5, **TINY)
    variables, x, maps = _init(full, batch=3)
    (emb, aux), _ = full.apply(
        variables, x, train=True, heatmaps=maps, mutable=["batch_stats"],
        rngs={"dropout": jax.random.PRNGKey(3)},
    )  # fmt: skip
    assert emb["stripe"].shape == emb["patch"].shape == (3, 512)
    assert emb["parts"].shape == (3, len(JOINT_GROUPS), 512)
    np.testing.assert_allclose(np.asarray(emb["confidence"]).sum(-1), 1.0, rtol=1e-5)
    assert sorted(aux["logits"]) == ["part0", "part1", "part2", "patch", "stripe"]

    no_inter = Pirt(num_classes=5, use_inter=False, **TINY)
    assert "inter" not in jax.eval_shape(lambda: _init(no_inter)[0])["params"]  # shapes only
    no_intra = Pirt(num_classes=5, use_intra=False, use_inter=False, **TINY)
    assert "intra" not in jax.eval_shape(lambda: _init(no_intra)[0])["params"]
    no_pose = Pirt(num_classes=5, use_pose=False, **TINY)
    variables, x, _ = _init(no_pose)
    emb, aux = no_pose.apply(variables, x, train=False)  # no heatmaps needed
    assert sorted(emb) == ["patch", "stripe"] and "parts" not in aux


def test_parameter_count_at_384x128_matches_the_released_architecture():
    classes = 702  # Occluded-Duke training identities
    model = Pirt(num_classes=classes)
    x = jnp.zeros((1, 384, 128, 3))
    maps = jnp.zeros((1, 96, 32, 17))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), x, train=False, heatmaps=maps)
    )
    counts = {k: sum(a.size for a in jax.tree.leaves(v)) for k, v in shapes["params"].items()}

    c, d, ffn, csm = 2048, 512, 512, 512
    backbone = 25_557_032 - (2048 * 1000 + 1000)  # torchvision resnet50 minus its fc layer
    # Stripe layer: conv C->d, IBN (IN affine + BN affine over d), q/k/v d->d, BN(d),
    # conv d->C, BN(C); convs without bias.
    intra = c * d + 2 * d + 3 * d * d + 2 * d + d * c + 2 * c
    # One nn.TransformerEncoderLayer: in_proj 3(C^2 + C), out_proj C^2 + C, FFN, 2 LayerNorms.
    layer = 3 * (c * c + c) + (c * c + c) + (c * ffn + ffn) + (ffn * c + c) + 2 * 2 * c
    confidence = (c * csm + csm) + (csm + 1)
    heads = 5 * c + 5 * c * classes  # 5 BNNeck weights (bias frozen at 0), 5 classifiers
    assert counts["backbone"] == backbone
    assert counts["intra"] == intra
    assert counts["inter"] == 3 * layer
    assert counts["confidence"] == confidence
    assert sum(counts.values()) == backbone + intra + 3 * layer + confidence + heads


def test_objective_adds_global_ce_part_ce_and_part_triplet():
    rng = np.random.default_rng(0)
    labels = jnp.asarray(np.repeat(np.arange(2), 4))
    logits = {k: jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for k in
              ("stripe", "patch", "part0", "part1", "part2")}  # fmt: skip
    parts = jnp.asarray(rng.normal(size=(8, 3, 5)), jnp.float32)
    cfg = LossConfig()
    loss, metrics = pirt_objective({"logits": logits, "parts": parts}, labels, cfg)

    def ce(name):
        return cross_entropy_label_smoothing(logits[name], labels, epsilon=0.1)

    expected = (
        ce("stripe")
        + ce("patch")
        + (ce("part0") + ce("part1") + ce("part2")) / 3
        + sum(grouped_triplet(parts[:, p], labels, cfg) for p in range(3)) / 3
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    assert metrics["triplet"] > 0

    global_only = {"logits": {"stripe": logits["stripe"], "patch": logits["patch"]}}
    without_pose, _ = pirt_objective(global_only, labels, PirtLossConfig(part_terms=False))
    np.testing.assert_allclose(float(without_pose), float(ce("stripe") + ce("patch")), rtol=1e-6)
    # With the pose branch on, a missing part output is an error, not a dropped term.
    with pytest.raises(ValueError, match=r"aux\['parts'\]"):
        pirt_objective(global_only, labels, PirtLossConfig())
