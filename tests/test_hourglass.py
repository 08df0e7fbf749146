"""Co-part segmentation's predictor (`nets/hourglass.py`): parity with a PyTorch twin written
here from the public repository's description, MAT with model.segment_features="hourglass",
and loss.consistency_start_step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax import families
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import MatLossConfig, mat_objective
from occreid_jax.nets.hourglass import CoPartPredictor, antialias_subsample
from occreid_jax.nets.mat_warped_pass import equivariance_forward

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_antialias(x, stride):
    """AntiAliasInterpolation2d of co-part segmentation: Gaussian, zero padding, nearest."""
    sigma = (stride - 1) / 2
    size = 2 * round(sigma * 4) + 1
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, size, size)
    half = size // 2
    x = F.conv2d(F.pad(x, (half, half, half, half)), kernel, groups=x.shape[1])
    return F.interpolate(x, scale_factor=1 / stride)


def _torch_predictor(params, stats, x, blocks, stride):
    """The predictor as co-part segmentation builds it (NCHW, BatchNorm in eval mode)."""

    def conv(x, p, pad):
        w = torch.from_numpy(np.asarray(p["kernel"])).permute(3, 2, 0, 1)
        return F.conv2d(x, w, torch.from_numpy(np.asarray(p["bias"])), padding=pad)

    def norm_relu(x, p, s):
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in {**p, **s}.items()}
        return F.relu(F.batch_norm(x, t["mean"], t["var"], t["scale"], t["bias"], eps=1e-5))

    hg, hs = params["hourglass"], stats["hourglass"]
    skips = [_torch_antialias(x, stride)]
    for i in range(blocks):
        y = norm_relu(
            conv(skips[-1], hg[f"down_{i}"], 1), hg[f"down_{i}_norm"], hs[f"down_{i}_norm"]
        )
        skips.append(F.avg_pool2d(y, 2))
    out = skips.pop()
    for i in reversed(range(blocks)):
        out = conv(F.interpolate(out, scale_factor=2), hg[f"up_{i}"], 1)
        out = norm_relu(out, hg[f"up_{i}_norm"], hs[f"up_{i}_norm"])
        out = torch.cat([out, skips.pop()], 1)
    return [conv(out, params[name], 3) for name in ("segmentation", "keypoints", "jacobians")]


def test_antialias_subsample_matches_the_torch_twin_and_keeps_a_constant_inside():
    images = np.random.default_rng(0).normal(size=(2, 32, 16, 3)).astype(np.float32)
    ours = np.asarray(antialias_subsample(jnp.asarray(images), 4))
    theirs = _torch_antialias(torch.from_numpy(images).permute(0, 3, 1, 2), 4)
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    assert ours.shape == (2, 8, 4, 3)
    # The kernel sums to 1: a constant image stays constant away from the zero padding.
    flat = np.asarray(antialias_subsample(jnp.full((1, 64, 64, 1), 3.0), 4))
    np.testing.assert_allclose(flat[0, 2:-2, 2:-2], 3.0, rtol=1e-5)


def test_the_predictor_matches_the_torch_twin_with_random_weights_and_statistics():
    rng = np.random.default_rng(1)
    net = CoPartPredictor(num_parts=3, stride=4, expansion=8, num_blocks=2, max_features=16)
    images = jnp.asarray(rng.normal(size=(2, 32, 16, 3)), jnp.float32)
    variables = net.init(jax.random.PRNGKey(0), images, train=False)
    # Random weights everywhere (the Jacobian conv starts at zero) and running statistics.
    params = jax.tree.map(
        lambda v: jnp.asarray(rng.normal(scale=0.3, size=v.shape), jnp.float32),
        variables["params"],
    )
    stats = jax.tree.map(
        lambda v: jnp.asarray(rng.uniform(0.5, 1.5, size=v.shape), jnp.float32),
        variables["batch_stats"],
    )
    ours = net.apply({"params": params, "batch_stats": stats}, images, train=False)
    theirs = _torch_predictor(
        params, stats, torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2), 2, 4
    )
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == (2, 8, 4, b.shape[1])
        np.testing.assert_allclose(a, b.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


TINY = dict(
    backbone="resnet_tiny", num_parts=3, d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1
)
HOURGLASS = dict(
    segment_features="hourglass", keypoint_features="segment", hourglass_expansion=8,
    hourglass_blocks=2,
)  # fmt: skip


@functools.lru_cache
def _mat(**overrides):
    model = families.build_model("mat", num_classes=5, **{**TINY, **overrides})
    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 64, 32, 3)), jnp.float32)
    (embeddings, aux), variables = jax.jit(functools.partial(model.init_with_output, train=False))(
        jax.random.PRNGKey(0), images
    )
    return embeddings, aux, variables


def test_mat_reads_parts_keypoints_and_jacobians_from_the_hourglass():
    embeddings, aux, variables = _mat(**HOURGLASS)
    assert aux["segmentation"].shape == (4, 16, 8, 4)  # stride 4 of 64 x 32
    assert aux["keypoint_heatmaps"].shape == (4, 16, 8, 3)
    np.testing.assert_allclose(aux["segmentation"].sum(-1), 1.0, rtol=1e-5)
    # Jacobians start at the identity (zero-initialised conv, identity bias).
    np.testing.assert_allclose(
        aux["jacobians"], np.broadcast_to(np.eye(2), (4, 3, 2, 2)), atol=1e-6
    )
    # Visibility is each part's mean probability over the stride-4 map.
    np.testing.assert_allclose(
        embeddings["visibility"], aux["segmentation"][..., 1:].mean(axis=(1, 2)), rtol=1e-5
    )
    # No segment or keypoint queries and heads: the hourglass replaces them.
    params = variables["params"]
    assert "copart" in params and "queries" not in params
    assert "segment_head" not in params and "keypoint_head" not in params


def test_mat_keeps_its_own_keypoints_with_an_hourglass_segmentation():
    _, aux, variables = _mat(segment_features="hourglass", hourglass_expansion=8)
    assert aux["keypoint_heatmaps"].shape == (4, 4, 2, 3)  # on f_g, as MAT
    assert variables["params"]["queries"].shape[0] == 3  # keypoint queries only
    assert "keypoint_head" in variables["params"]


def test_an_image_size_the_hourglass_cannot_halve_is_one_line():
    model = families.build_model("mat", num_classes=5, **TINY, **HOURGLASS)
    with pytest.raises(UserError, match="divisible by hourglass_stride"):  # 72 / 16 = 4.5
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 72, 32, 3)), train=False)
    with pytest.raises(UserError, match="hourglass_blocks >= 1"):
        families.build_model("mat", num_classes=5, **TINY, **{**HOURGLASS, "hourglass_blocks": 0})


def test_an_image_target_step_trains_the_hourglass_and_starts_l_fc_at_its_step():
    model = families.build_model("mat", num_classes=5, **TINY, **HOURGLASS)
    images = jnp.asarray(np.random.default_rng(3).normal(size=(4, 64, 32, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    batch = {"images": images, "labels": jnp.asarray([0, 0, 1, 1])}

    def loss(params, step, start):
        cfg = MatLossConfig(
            consistency_target="image", consistency_pairs="first", group_size=2,
            consistency_start_step=start,
        )  # fmt: skip
        aux, _ = equivariance_forward(
            model.apply,
            {"params": params, "batch_stats": variables["batch_stats"]},
            batch,
            jax.random.PRNGKey(1),
        )
        return mat_objective({**aux, "train_step": jnp.asarray(step)}, batch["labels"], cfg)

    grads, metrics = jax.grad(loss, has_aux=True)(variables["params"], 0, 0)
    fc = float(metrics["consistency"])
    assert np.isfinite(fc) and fc > 0
    for name in ("segmentation", "keypoints", "jacobians"):
        leaves = jax.tree.leaves(grads["copart"][name])
        assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
        assert any(np.any(np.asarray(g) != 0) for g in leaves), name
    # Before loss.consistency_start_step L_fc is reported but weighs nothing; from it on it
    # weighs lambda6 = 5.
    before, m_before = loss(variables["params"], 9, 10)
    after, m_after = loss(variables["params"], 10, 10)
    assert float(m_before["consistency"]) == pytest.approx(fc, rel=1e-6)
    assert float(after) - float(before) == pytest.approx(5.0 * fc, rel=1e-4)
    assert float(after) == pytest.approx(float(loss(variables["params"], 0, 0)[0]), rel=1e-6)


def test_keypoint_masks_without_the_image_target_is_one_line():
    with pytest.raises(UserError, match="image target only"):
        MatLossConfig(consistency_target="backbone", consistency_flow="keypoint_masks").check()
    MatLossConfig(consistency_target="image", consistency_flow="keypoint_masks").check()
