"""ResNet / IBN-a backbones and the Baseline head: shapes, sizes, PyTorch parity, BN sync."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from occreid_jax.errors import UserError
from occreid_jax.families import build_model
from occreid_jax.nets import BACKBONES, feature_dim
from occreid_jax.nets.resnet import ResNet50, ResNet50IBNa, ResNetTiny

TORCHVISION_RESNET50_PARAMS_NO_FC = 23_508_032


def _torch_twin():
    """benchmarks/torch_baseline.py (imports torch: call after importorskip)."""
    from benchmarks import torch_baseline

    return torch_baseline


def _abstract_variables(model, shape):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
    )


def _init(model, shape, seed: int = 0):
    """Real variables. Eager on purpose: op-by-op executables are cached across tests, which
    on CPU is faster overall than compiling a whole jitted graph per test."""
    return model.init(jax.random.key(seed), jnp.zeros(shape), train=False)


def _apply(model, variables, x, train: bool):
    """Forward; in train mode returns (output, updated batch_stats collection)."""
    if train:
        return model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, train=False)


def _num_params(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


# ----------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("height", [256, 384])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_tiny_output_shape(height, last_stride):
    model = ResNetTiny(last_stride=last_stride)
    x = jnp.zeros((1, height, 128, 3))
    y = _apply(model, _init(model, (1, 64, 32, 3)), x, train=False)
    down = 16 * last_stride
    assert y.shape == (1, height // down, 128 // down, feature_dim("resnet_tiny"))
    assert feature_dim("resnet_tiny") == 512


@pytest.mark.parametrize("height", [256, 384])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_resnet50_output_shape(height, last_stride):
    model = ResNet50(last_stride=last_stride)
    variables = _abstract_variables(model, (1, height, 128, 3))
    y = jax.eval_shape(
        functools.partial(model.apply, train=False), variables, jnp.zeros((2, height, 128, 3))
    )
    down = 16 * last_stride
    assert y.shape == (2, height // down, 128 // down, 2048)
    assert feature_dim("resnet50") == feature_dim("resnet50_ibn_a") == 2048


def test_resnet50_param_count_matches_torchvision():
    variables = _abstract_variables(ResNet50(), (1, 64, 32, 3))
    assert _num_params(variables) == TORCHVISION_RESNET50_PARAMS_NO_FC
    params = variables["params"]
    assert set(params["layer1_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"
    }  # fmt: skip
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert "downsample_conv" not in params["layer1_1"]


def test_resnet50_ibn_a_matches_torch_twin_size():
    pytest.importorskip("torch")
    twin = _torch_twin()
    torch_model = twin.build_backbone("resnet50_ibn_a")
    expected = sum(p.numel() for p in torch_model.parameters())
    variables = _abstract_variables(ResNet50IBNa(), (1, 64, 32, 3))
    assert _num_params(variables) == expected
    expected_stats = sum(
        b.numel() for n, b in torch_model.named_buffers() if not n.endswith("num_batches_tracked")
    )
    stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["batch_stats"]))
    assert stats == expected_stats
    bn1 = variables["params"]["layer3_5"]["bn1"]
    assert bn1["IN"]["scale"].shape == (128,) and bn1["BN"]["scale"].shape == (128,)
    assert "IN" not in variables["params"]["layer4_0"]["bn1"]  # Stage 4 is plain BN.
    # Every IBN-Net checkpoint key has a flax counterpart of the same shape, and vice versa.
    _same_structure(torch_to_flax(torch_model.state_dict()), variables)


# ----------------------------------------------------------------------------- PyTorch parity


def torch_to_flax(state_dict) -> dict:
    """A minimal test-only converter: torch state dict -> {"params", "batch_stats"} by name."""
    params: dict = {}
    stats: dict = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        leaf = parts[-1]
        if leaf == "num_batches_tracked" or (parts[0] == "bottleneck" and leaf == "bias"):
            continue  # No counter in flax; the BNNeck's frozen zero bias is omitted.
        path, i = [], 0
        while i < len(parts) - 1:
            if parts[i].startswith("layer") and parts[i + 1].isdigit():
                path.append(f"{parts[i]}_{parts[i + 1]}")
                i += 2
            elif parts[i] == "downsample":
                path.append({"0": "downsample_conv", "1": "downsample_bn"}[parts[i + 1]])
                i += 2
            else:
                path.append(parts[i])
                i += 1
        value = tensor.detach().cpu().numpy()
        target = params
        if leaf == "weight" and value.ndim == 4:
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif leaf == "weight" and value.ndim == 2:
            leaf, value = "kernel", value.T
        elif leaf == "weight":
            leaf = "scale"
        elif leaf in ("running_mean", "running_var"):
            leaf, target = {"running_mean": "mean", "running_var": "var"}[leaf], stats
        node = target
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return {"params": params, "batch_stats": stats}


def _randomize(torch, module, seed: int):
    """Non-trivial affine parameters and running statistics for every norm layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias.requires_grad:  # The BNNeck's bias stays frozen at zero.
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _assert_close(jax_value, torch_value, rel=1e-4):
    a = np.asarray(jax_value, np.float64)
    b = torch_value.detach().cpu().numpy().astype(np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() / scale < rel, np.abs(a - b).max() / scale


def _same_structure(converted, reference):
    shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)  # noqa: E731
    assert shapes(converted) == shapes(reference)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["resnet_tiny", "resnet_tiny_ibn_a"])
def test_backbone_matches_torch_twin(name, train):
    torch = pytest.importorskip("torch")
    twin = _torch_twin()
    torch.manual_seed(0)
    torch_model = twin.build_backbone(name, last_stride=1)
    _randomize(torch, torch_model, seed=1)
    variables = torch_to_flax(torch_model.state_dict())
    model = BACKBONES[name](last_stride=1)
    _same_structure(variables, _abstract_variables(model, (1, 64, 32, 3)))

    x = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
    torch_model.train(train)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    if train:
        out, updates = _apply(model, variables, x, train=True)
        # Running means follow the same momentum rule (variances differ by n / (n - 1)).
        new_mean = torch_to_flax(torch_model.state_dict())["batch_stats"]["layer4_0"]["bn3"]
        np.testing.assert_allclose(
            updates["batch_stats"]["layer4_0"]["bn3"]["mean"], new_mean["mean"], atol=1e-5
        )
    else:
        out = _apply(model, variables, x, train=False)
    _assert_close(out, expected.permute(0, 2, 3, 1))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_baseline_matches_torch_twin(train):
    torch = pytest.importorskip("torch")
    twin = _torch_twin()
    torch.manual_seed(0)
    torch_model = twin.Baseline(num_classes=7, backbone="resnet_tiny_ibn_a")
    _randomize(torch, torch_model, seed=2)
    variables = torch_to_flax(torch_model.state_dict())
    model = build_model("baseline", num_classes=7, backbone="resnet_tiny_ibn_a")
    _same_structure(variables, _abstract_variables(model, (1, 64, 32, 3)))

    x = np.random.default_rng(1).normal(size=(4, 64, 32, 3)).astype(np.float32)
    torch_model.train(train)
    with torch.no_grad():
        t_emb, t_aux = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    if train:
        (emb, aux), _ = _apply(model, variables, x, train=True)
    else:
        emb, aux = _apply(model, variables, x, train=False)
    _assert_close(emb["global"], t_emb["global"])
    _assert_close(aux["global_feat"], t_aux["global_feat"])
    _assert_close(aux["logits"], t_aux["logits"])


# ----------------------------------------------------------------------------- Baseline API


def test_baseline_outputs_and_bf16():
    model = build_model("baseline", num_classes=5, backbone="resnet_tiny", dtype=jnp.bfloat16)
    x = jnp.zeros((2, 64, 32, 3))
    variables = _init(model, x.shape)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert set(variables["params"]) == {"backbone", "bottleneck", "classifier"}
    assert set(variables["params"]["bottleneck"]) == {"scale"}  # No (frozen zero) bias.
    assert variables["params"]["classifier"]["kernel"].shape == (512, 5)
    x = jax.random.normal(jax.random.key(1), x.shape)
    (emb, aux), updates = _apply(model, variables, x, train=True)
    assert set(updates) == {"batch_stats"}
    assert emb["global"].shape == aux["global_feat"].shape == (2, 512)
    assert aux["logits"].shape == (2, 5)
    for value in (emb["global"], aux["global_feat"], aux["logits"]):
        assert value.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(value)))


def test_baseline_without_classifier():
    model = build_model("baseline", num_classes=0, backbone="resnet_tiny")
    variables = _abstract_variables(model, (1, 64, 32, 3))
    assert "classifier" not in variables["params"]
    emb, aux = jax.eval_shape(
        functools.partial(model.apply, train=False), variables, jnp.zeros((3, 64, 32, 3))
    )
    assert emb["global"].shape == (3, 512)
    assert set(aux) == {"global_feat"}


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="known models: baseline"):
        build_model("bagtricks", num_classes=3)
    with pytest.raises(UserError, match="resnet50_ibn_a"):
        build_model("baseline", num_classes=3, backbone="resnet51")
    with pytest.raises(UserError, match="known backbones"):
        feature_dim("vit")


# ----------------------------------------------------------------------------- synchronised BN


@pytest.mark.skipif(
    jax.local_device_count() < 2,
    reason="needs 2 devices: set jax_num_cpu_devices (tests/conftest.py or JAX_NUM_CPU_DEVICES=2)",
)
def test_batch_norm_statistics_sync_across_devices():
    model = BACKBONES["resnet_tiny_ibn_a"](bn_axis_name="batch")
    single = BACKBONES["resnet_tiny_ibn_a"]()
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = _init(single, x.shape, seed=1)

    def step(v, xs):
        return model.apply(v, xs, train=True, mutable=["batch_stats"])

    out, updates = jax.pmap(step, axis_name="batch", in_axes=(None, 0))(
        variables, x.reshape(2, 2, *x.shape[1:])
    )
    ref_out, ref_updates = _apply(single, variables, x, train=True)
    np.testing.assert_allclose(out.reshape(ref_out.shape), ref_out, atol=2e-4, rtol=1e-3)
    for device in range(2):
        per_device = jax.tree.map(lambda a, d=device: a[d], updates["batch_stats"])
        jax.tree.map(
            functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-4),
            per_device,
            ref_updates["batch_stats"],
        )
