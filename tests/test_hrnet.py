"""HRNet pose net: output shapes, sizes of the official models, parameter names, dtypes.

Numerical parity with the PyTorch twin (converted weights) is in tests/test_convert.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from occreid_jax.nets.convert import torch_key
from occreid_jax.nets.hrnet import POSE_NETS, HRNet, HRNetW32, HRNetW48

# Parameter counts of the released pose_hrnet_w32/w48 models (torch `parameters()`).
OFFICIAL_PARAMS = {"hrnet_w32": 28_536_113, "hrnet_w48": 63_595_745}
TORCH_REASON = "PyTorch twin tests need torch: pip install -e '.[torch]'"


def _abstract_variables(model, shape=(1, 64, 32, 3)):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
    )


def _numpy_variables(model, seed: int = 0) -> dict:
    """Random variables built in numpy (much faster on CPU than an eager `model.init`):
    He-normal kernels, unit BN scale and variance, zero bias and mean."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", [(256, 128), (384, 128)], ids=["256x128", "384x128"])
@pytest.mark.parametrize("name", ["hrnet_w32", "hrnet_w48"])
def test_heatmap_shape(name, size):
    model = POSE_NETS[name]()
    variables = _abstract_variables(model)
    out = jax.eval_shape(
        functools.partial(model.apply, train=False), variables, jnp.zeros((2, *size, 3))
    )
    assert out.shape == (2, size[0] // 4, size[1] // 4, 17)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("name", ["hrnet_w32", "hrnet_w48"])
def test_param_count_matches_official(name):
    variables = _abstract_variables(POSE_NETS[name]())
    assert _count(variables["params"]) == OFFICIAL_PARAMS[name]
    assert set(variables) == {"params", "batch_stats"}


def test_param_tree_names():
    params = _abstract_variables(HRNetW32())["params"]
    stem = {"conv1", "bn1", "conv2", "bn2", "layer1_0", "layer1_1", "layer1_2", "layer1_3"}
    transitions = {"transition1_0", "transition1_1_0", "transition2_2_0", "transition3_3_0"}
    stages = {f"stage2_{m}" for m in range(1)} | {f"stage3_{m}" for m in range(4)}
    stages |= {f"stage4_{m}" for m in range(3)}
    assert set(params) == stem | transitions | stages | {"final_layer"}
    assert params["final_layer"]["kernel"].shape == (1, 1, 32, 17)
    assert params["final_layer"]["bias"].shape == (17,)
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert "downsample_conv" in params["layer1_0"] and "downsample_conv" not in params["layer1_1"]
    stage3 = params["stage3_0"]
    assert {"branches_2_3", "fuse_layers_0_2", "fuse_layers_2_0_1"} <= set(stage3)
    assert stage3["fuse_layers_0_2"]["conv"]["kernel"].shape == (1, 1, 128, 32)
    # Downsampling chain 0 -> 2: 32 -> 32 (ReLU) then 32 -> 128 (no ReLU).
    assert stage3["fuse_layers_2_0_0"]["conv"]["kernel"].shape == (3, 3, 32, 32)
    assert stage3["fuse_layers_2_0_1"]["conv"]["kernel"].shape == (3, 3, 32, 128)
    # The last module of stage 4 fuses into the highest resolution only.
    assert not any(k.startswith("fuse_layers_1") for k in params["stage4_2"])
    assert any(k.startswith("fuse_layers_3") for k in params["stage4_1"])
    assert not any("bias" in p[-1] for p in traverse_util.flatten_dict(params) if "conv" in p[-2])


def test_torch_keys_of_flax_paths():
    assert torch_key("params", ("stage2_0", "fuse_layers_1_0_0", "conv", "kernel")) == (
        "stage2.0.fuse_layers.1.0.0.0.weight"
    )
    assert torch_key("batch_stats", ("transition1_1_0", "bn", "var")) == (
        "transition1.1.0.1.running_var"
    )
    assert torch_key("params", ("stage3_1", "branches_2_3", "bn2", "scale")) == (
        "stage3.1.branches.2.3.bn2.weight"
    )
    assert torch_key("params", ("layer1_0", "downsample_bn", "bias")) == (
        "layer1.0.downsample.1.bias"
    )
    assert torch_key("params", ("final_layer", "bias")) == "final_layer.bias"


@pytest.mark.parametrize("width", [32, 48])
def test_keys_match_torch_twin(width):
    pytest.importorskip("torch", reason=TORCH_REASON)
    from benchmarks.torch_hrnet import PoseHighResolutionNet

    twin = PoseHighResolutionNet(width)
    expected = {
        k: tuple(v.shape)
        for k, v in twin.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    variables = _abstract_variables(HRNet(width=width))
    ours = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(variables[collection]).items():
            shape = leaf.shape
            if path[-1] == "kernel":  # HWIO -> OIHW
                shape = (shape[3], shape[2], shape[0], shape[1])
            ours[torch_key(collection, path)] = shape
    assert ours == expected


def test_bfloat16_compute_float32_params_and_train_mode():
    model = HRNetW32(dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
    assert all(
        p.dtype == jnp.float32 for p in jax.tree.leaves(_abstract_variables(model)["params"])
    )
    variables = _numpy_variables(model)
    heatmaps, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert heatmaps.shape == (2, 16, 8, 17) and heatmaps.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(heatmaps)))
    before = variables["batch_stats"]["stage4_2"]["branches_0_3"]["bn2"]["mean"]
    after = updates["batch_stats"]["stage4_2"]["branches_0_3"]["bn2"]["mean"]
    assert not np.allclose(before, after)
    assert HRNetW48.keywords["width"] == 48
