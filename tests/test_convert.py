"""PyTorch -> flax conversion: parity with PyTorch twins, refusals, the CLI, safe loading.

Each architecture is built in PyTorch (benchmarks/torch_baseline.py, benchmarks/torch_hrnet.py)
with random weights and random BN statistics, saved as a .pth, converted, and both forwards
are compared in eval mode at 256x128 and 384x128. Twins and conversions are built once per
module (they are full-size networks) and shared by the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from occreid_jax.errors import UserError
from occreid_jax.nets import convert

TORCH_REASON = "conversion tests need PyTorch: pip install -e '.[torch]'"
SIZES = [(256, 128), (384, 128)]
SIZE_IDS = ["256x128", "384x128"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize(torch, module, seed: int) -> None:
    """Non-trivial affine parameters and running statistics for every norm layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _build_twin(torch, arch: str):
    if arch.startswith("hrnet"):
        from benchmarks.torch_hrnet import PoseHighResolutionNet

        return PoseHighResolutionNet(width=int(arch.removeprefix("hrnet_w")))
    from benchmarks.torch_baseline import build_backbone

    return build_backbone(arch, last_stride=1)


class Twins:
    """Lazily built, per-module cache: torch twin, its .pth, the conversion, torch outputs."""

    def __init__(self, torch, directory):
        self.torch = torch
        self.directory = directory
        self._cache: dict = {}

    def model(self, arch: str):
        if ("model", arch) not in self._cache:
            self.torch.manual_seed(0)
            model = _build_twin(self.torch, arch).eval()
            _randomize(self.torch, model, seed=1)
            self._cache["model", arch] = model
        return self._cache["model", arch]

    def state_dict(self, arch: str) -> dict:
        """The twin's state dict without `num_batches_tracked` (as many released files)."""
        items = self.model(arch).state_dict().items()
        return {k: v for k, v in items if not k.endswith("num_batches_tracked")}

    def path(self, arch: str) -> str:
        if ("path", arch) not in self._cache:
            path = str(self.directory / f"{arch}.pth")
            self.torch.save(self.state_dict(arch), path)
            self._cache["path", arch] = path
        return self._cache["path", arch]

    def converted(self, arch: str):
        if ("converted", arch) not in self._cache:
            self._cache["converted", arch] = convert.convert_checkpoint(arch, self.path(arch))
        return self._cache["converted", arch]

    def expected(self, arch: str, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(arch)(self.torch.from_numpy(x.transpose(0, 3, 1, 2)))
        return out.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=TORCH_REASON)


@pytest.fixture(scope="module")
def twins(torch, tmp_path_factory):
    return Twins(torch, tmp_path_factory.mktemp("pth"))


def _images(size, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *size, 3)).astype(np.float32)


def _relative_error(ours, expected) -> float:
    ours = np.asarray(ours, np.float64)
    assert ours.shape == expected.shape
    return float(np.abs(ours - expected).max() / max(np.abs(expected).max(), 1e-6))


def _assert_same_tree(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ----------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("arch", ["resnet50", "resnet50_ibn_a", "hrnet_w32", "hrnet_w48"])
def test_matches_torch_twin(twins, arch, size):
    module, variables = twins.converted(arch)
    x = _images(size, batch=1 if arch.startswith("resnet") else 2)
    out = module.apply(variables, x, train=False)
    expected = twins.expected(arch, x)
    if arch.startswith("resnet"):
        assert expected.shape == (x.shape[0], size[0] // 16, size[1] // 16, 2048)
    else:
        assert expected.shape == (x.shape[0], size[0] // 4, size[1] // 4, 17)
    assert _relative_error(out, expected) < 1e-4


def test_prefix_wrapper_counters_and_fc_are_accepted(twins, tmp_path):
    arch = "resnet50_ibn_a"
    raw = twins.model(arch).state_dict()
    assert any(k.endswith("num_batches_tracked") for k in raw)
    wrapped = {f"module.{k}": v for k, v in raw.items()}
    wrapped["module.fc.weight"] = twins.torch.zeros(1000, 2048)
    wrapped["module.fc.bias"] = twins.torch.zeros(1000)
    path = str(tmp_path / "wrapped.pth.tar")
    twins.torch.save({"state_dict": wrapped, "epoch": 100, "arch": "resnet50_ibn_a"}, path)
    _, variables = convert.convert_checkpoint(arch, path)
    _assert_same_tree(variables, twins.converted(arch)[1])


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("given", "actual"),
    [
        ("hrnet_w48", "hrnet_w32"),
        ("resnet50_ibn_a", "resnet50"),
        ("resnet50", "resnet50_ibn_a"),
        ("resnet50", "hrnet_w32"),
    ],
)
def test_wrong_architecture_is_refused(twins, given, actual):
    with pytest.raises(UserError, match=f"given as {given} but this looks like {actual};"):
        convert.convert_checkpoint(given, twins.path(actual))


def test_missing_and_unexpected_keys_are_named(twins):
    weights = dict(twins.state_dict("resnet50"))
    del weights["layer3.2.bn2.running_var"]
    weights["layer3.2.bn4.weight"] = weights["layer3.2.bn2.weight"]
    with pytest.raises(UserError) as info:
        convert.convert_state_dict("resnet50", weights)
    message = str(info.value)
    assert "missing keys: 1 (layer3.2.bn2.running_var)" in message
    assert "unexpected keys: 1 (layer3.2.bn4.weight)" in message
    assert "\n" not in message

    partial = {k: v for k, v in twins.state_dict("hrnet_w32").items() if "stage4" not in k}
    with pytest.raises(UserError, match=r"missing keys: \d+ \(stage4\.0\.[^)]*, \.\.\.\)"):
        convert.convert_state_dict("hrnet_w32", partial)


def test_wrong_shape_is_named(twins):
    weights = dict(twins.state_dict("hrnet_w32"))
    weights["final_layer.weight"] = weights["final_layer.weight"][:16]  # An MPII head.
    weights["final_layer.bias"] = weights["final_layer.bias"][:16]
    with pytest.raises(UserError, match=r"final_layer\.(weight|bias) has shape \(16"):
        convert.convert_state_dict("hrnet_w32", weights)


class _RunsCode:
    """Unpickling this would create a directory: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_is_weights_only(torch, tmp_path):
    marker = str(tmp_path / "code_ran")
    evil = str(tmp_path / "evil.pth")
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(
        UserError, match=r"refused to load .*\(it names posix\.mkdir\).*weights_only=True"
    ):
        convert.convert_checkpoint("resnet50", evil)
    assert not os.path.exists(marker)

    listed = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        convert.load_variables("hrnet_w32", listed)
    with pytest.raises(UserError, match="could not read"):
        convert.convert_checkpoint("resnet50", __file__)
    with pytest.raises(UserError, match="no checkpoint file at"):
        convert.convert_checkpoint("resnet50", str(tmp_path / "absent.pth"))


def test_missing_torch_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError.
    with pytest.raises(UserError, match=r"pip install -e '\.\[torch\]'"):
        convert.convert_checkpoint("hrnet_w32", str(tmp_path / "x.pth"))


def test_import_does_not_need_torch_and_bad_cli_input_exits_2():
    code = (
        "import sys, occreid_jax.nets.convert as c; assert 'torch' not in sys.modules; "
        "sys.exit(c.main(['resnet51', 'a.pth', 'out']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: unknown architecture 'resnet51'; use one of "
        "resnet50, resnet50_ibn_a, hrnet_w32, hrnet_w48"
    ]


def test_unknown_arch_and_bad_paths(tmp_path):
    with pytest.raises(UserError, match="unknown architecture 'hrnet_w18'"):
        convert.load_variables("hrnet_w18", str(tmp_path))
    with pytest.raises(UserError, match="no pretrained weights at"):
        convert.load_variables("resnet50", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="is not a converted checkpoint"):
        convert.load_variables("resnet50", str(tmp_path))


# ----------------------------------------------------------------------------- CLI


def test_cli_round_trip(twins, tmp_path, capsys):
    arch = "hrnet_w32"
    destination = str(tmp_path / "w32")
    assert convert.main([arch, twins.path(arch), destination]) == 0
    assert f"wrote hrnet_w32 (28,536,113 parameters) from {twins.path(arch)}" in (
        capsys.readouterr().out
    )
    restored = convert.load_variables(arch, destination)
    module, variables = twins.converted(arch)
    _assert_same_tree(restored, variables)
    x = _images(SIZES[0], batch=2)  # The shapes of the parity test: compiled ops are cached.
    np.testing.assert_array_equal(
        module.apply(restored, x, train=False), module.apply(variables, x, train=False)
    )
    _assert_same_tree(convert.load_variables(arch, twins.path(arch)), variables)

    with pytest.raises(UserError, match="holds hrnet_w32 weights but hrnet_w48 was asked for"):
        convert.load_variables("hrnet_w48", destination)
    assert convert.main([arch, twins.path(arch), destination]) == 2  # Exists already.
    assert convert.main(["hrnet_w48", twins.path(arch), str(tmp_path / "w48")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and "looks like hrnet_w32" in err[1]
    assert not os.path.exists(tmp_path / "w48")


# ----------------------------------------------------------------------------- integration


def test_backbone_init_puts_converted_weights_under_the_baseline_backbone(twins):
    """`model.backbone_init` (a .pth) gives the Baseline the twin's backbone exactly."""
    import ml_collections

    from configs import baseline
    from occreid_jax import families
    from occreid_jax.training import optim, run
    from occreid_jax.training.train import create_train_state

    config = baseline.get_config("market1501")
    config.model.backbone = "resnet50_ibn_a"
    config.model.backbone_init = twins.path("resnet50_ibn_a")
    model = families.build_model("baseline", num_classes=4, backbone="resnet50_ibn_a")
    tx = optim.make_optimizer(config.train, optim.make_schedule(config.train, 1))
    state = create_train_state(model, tx, jax.random.PRNGKey(0), (64, 32))
    loaded = run.init_backbone(state, config)
    _assert_same_tree(loaded.params["backbone"], twins.converted("resnet50_ibn_a")[1]["params"])
    _, aux = model.apply(
        {"params": loaded.params, "batch_stats": loaded.batch_stats}, _images((64, 32)), False
    )
    expected = twins.expected("resnet50_ibn_a", _images((64, 32))).mean(axis=(1, 2))
    assert _relative_error(aux["global_feat"], expected) < 1e-4
    # The head keeps its own initialisation; a mismatched backbone name is refused.
    _assert_same_tree(loaded.params["classifier"], state.params["classifier"])
    config.model.backbone = "resnet50"
    with pytest.raises(UserError, match="resnet50_ibn_a"):
        run.init_backbone(state, ml_collections.ConfigDict(config))
