"""--format=onnx: the translated graph gives bundle.embed's features in ONNX Runtime (run in a
process that imports nothing from occreid_jax) at any batch size, and the translator's
primitives match JAX on small hand-written functions."""

import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from occreid_jax import families  # noqa: E402
from occreid_jax.bundles import export, export_formats, onnx_export  # noqa: E402
from occreid_jax.config_files import load_config_file  # noqa: E402
from occreid_jax.errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4  # absolute, on every feature
# Runs in a fresh interpreter from a folder outside the repository: numpy and onnxruntime only.
RUNNER = """
import sys
import numpy as np
import onnxruntime as ort
args = sys.argv[1:]
for model, inputs, out in zip(args[::3], args[1::3], args[2::3]):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    np.savez(out, **dict(zip(names, session.run(None, dict(np.load(inputs))))))
assert not [m for m in sys.modules if m.split(".")[0] == "occreid_jax"], "imported occreid_jax"
print("ok")
"""


def _write_tiny_bundle(model_name: str, folder: str) -> str:
    """An untrained size=tiny bundle (64 x 32 inputs) with non-trivial batch statistics."""
    config = load_config_file(os.path.join(ROOT, "configs", f"{model_name}.py"))
    kwargs = families.model_kwargs(config.get_config("synthetic,size=tiny"), num_classes=4)
    model = families.build_model(model_name, **kwargs)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 32, 3)).astype(np.float32)
    extra = {"heatmaps": rng.uniform(0, 1, (2, 16, 8, 17)).astype(np.float32)}
    extra = extra if model_name == "pirt" else {}
    init = jax.jit(lambda key, images, extra: model.init(key, images, train=False, **extra))
    variables = jax.device_get(init(jax.random.PRNGKey(0), images, extra))  # jit: 3x faster
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(
            lambda x: x + rng.uniform(0, 0.1, x.shape).astype(x.dtype), variables["batch_stats"]
        )
    return export.write(
        folder, model_name=model_name, model_kwargs=kwargs, variables=variables,
        image_size=(64, 32), matching={"metric": "cosine", "flip": False},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_bundle_dir):
    """`tiny_bundle(name)` -> a fresh folder holding that model's tiny bundle (made once)."""
    folders = {}

    def get(model_name: str) -> str:
        if model_name not in folders:
            folder = str(tmp_path_factory.mktemp(model_name) / "bundle")
            if model_name == "baseline":
                shutil.copytree(tiny_bundle_dir, folder)
            else:
                _write_tiny_bundle(model_name, folder)
            folders[model_name] = folder
        return folders[model_name]

    return get


def _run_elsewhere(tmp_path, jobs: list[tuple[str, dict]]) -> list[dict]:
    """Runs (model.onnx, {input name: array}) jobs in onnxruntime in a fresh interpreter."""
    args, outs = [], []
    for i, (model, feeds) in enumerate(jobs):
        np.savez(tmp_path / f"in{i}.npz", **feeds)
        outs.append(tmp_path / f"out{i}.npz")
        args += [model, str(tmp_path / f"in{i}.npz"), str(outs[-1])]
    (tmp_path / "run.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
    return [dict(np.load(out)) for out in outs]


def _feeds(bundle, batch: int) -> dict:
    """Random raw-pixel images (0..255) and, for Pirt, heatmaps in [0, 1]."""
    rng = np.random.default_rng(batch)
    shapes = export_formats.input_shapes(bundle, batch)
    arrays = [rng.uniform(0, 255, shapes[0])] + [rng.uniform(0, 1, s) for s in shapes[1:]]
    names = export_formats.INPUT_NAMES[: len(arrays)]
    return {n: a.astype(np.float32) for n, a in zip(names, arrays, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["baseline", "pirt", "mat"])
def test_onnx_matches_bundle_embed_in_onnxruntime_alone(tiny_bundle, tmp_path, model_name):
    folder = tiny_bundle(model_name)
    path = export_formats.write(folder, "onnx")
    assert path == os.path.join(folder, export_formats.ONNX_FILE)
    graph = onnx.load(path).graph
    for value in [*graph.input, *graph.output]:  # one file, any batch size
        batch_dim = value.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")
    bundle = export.load(folder)
    unfolded = export_formats.write_onnx(bundle, str(tmp_path), fold=False)  # every primitive
    feeds = {batch: _feeds(bundle, batch) for batch in (1, 7)}
    jobs = [(file, feeds[batch]) for file in (path, unfolded) for batch in feeds]
    results = _run_elsewhere(tmp_path, jobs)
    for (file, inputs), got in zip(jobs, results, strict=True):
        want = jax.device_get(bundle.embed(*inputs.values()))
        assert set(got) == set(want) and [i.name for i in graph.output] == sorted(want)
        for key in sorted(want):
            assert got[key].shape == want[key].shape, key
            error = float(np.max(np.abs(got[key] - want[key])))
            kind = "folded" if file == path else "unfolded"
            print(f"{model_name} {kind} batch={len(inputs['images'])} {key}: {error:.2e}")
            assert error <= ATOL, (key, error)


def test_missing_onnx_is_a_one_line_error(tiny_bundle_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(UserError) as error:
        export_formats.write(tiny_bundle_dir, "onnx")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("--format=onnx needs") and 'pip install -e ".[onnx]"' in message
    assert not os.path.exists(os.path.join(tiny_bundle_dir, export_formats.ONNX_FILE))


def _check(fn, *arrays, atol=1e-5):
    """fn translated with a symbolic batch matches fn in onnxruntime for batch sizes 1 and 3."""
    (batch,) = jax.export.symbolic_shape("batch")
    specs = [jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype) for a in arrays]
    names = [f"x{i}" for i in range(len(arrays))]
    model = onnx_export.to_onnx(fn, specs, names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in (1, 3):
        inputs = [a[:size] for a in arrays]
        got = session.run(None, dict(zip(names, inputs, strict=True)))
        want = jax.tree.leaves(jax.device_get(fn(*map(jnp.asarray, inputs))))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=0, atol=atol)


def _normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_conv_with_stride_padding_dilation_and_groups():
    kernel, depthwise = _normal(3, 3, 2, 6, seed=1), _normal(3, 3, 1, 4, seed=2)

    def fn(x):
        a = lax.conv_general_dilated(
            x, kernel, (2, 1), ((1, 2), (0, 1)), rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
        )  # fmt: skip
        b = lax.conv_general_dilated(
            x, depthwise, (1, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NCHW"),
            feature_group_count=4,
        )  # fmt: skip
        return {"a": a, "b": b}

    _check(fn, _normal(3, 9, 7, 4))


def test_dot_general_with_batch_and_several_contracting_dims():
    dense, pair = _normal(5, 6, seed=1), _normal(3, 5, 2, seed=2)

    def fn(x, y):
        batched = lax.dot_general(x, y, (((3,), (1,)), ((0, 2), (0, 2))))  # [B, 3, 4, 2]
        return batched, x @ dense, jnp.einsum("bijk,jkl->bil", x, pair)

    _check(fn, _normal(3, 4, 3, 5), _normal(3, 5, 3, 2, seed=3))


def test_max_pool_pads_with_minus_infinity():
    def fn(x):
        same = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        return same, nn.max_pool(x, (3, 2), strides=(2, 1), padding=((1, 1), (0, 1)))

    _check(fn, _normal(3, 9, 8, 5) - 3.0)  # mostly negative: padding zeros would show


def test_window_sums_and_average_pools_count_the_zero_padding_like_jax():
    def fn(x):
        pooled = nn.avg_pool(x, (2, 2), strides=(2, 2))  # the hourglass's down blocks
        padded = nn.avg_pool(x, (3, 3), strides=(2, 2), padding="SAME")  # zeros counted
        uncounted = nn.avg_pool(x, (3, 2), padding=((1, 1), (0, 1)), count_include_pad=False)
        return pooled, padded, uncounted

    _check(fn, _normal(3, 9, 8, 5) + 3.0)  # mostly positive: a lost pad would show


def test_shapes_that_depend_on_the_batch():
    def fn(x):
        rows = x.reshape(-1, 6) * 2.0  # [4 B, 6]
        back = rows.reshape(x.shape[0], 4, 6)
        count = jnp.arange(x.shape[0], dtype=jnp.float32)  # iota over the batch
        table = jnp.broadcast_to(jnp.arange(6.0), (x.shape[0], 4, 6))  # a constant, B rows
        twice = jnp.concatenate([x, back + table])  # [2 B, 4, 6]
        head = twice[: x.shape[0] + 1]  # a limit computed from the batch
        strided = lax.slice(twice, (1, 0, 0), (twice.shape[0], 4, 6), (1, 2, 1))
        return back, count, strided, head, jnp.stack([x, -x], axis=1)[:, :, 1:3]

    _check(fn, _normal(3, 4, 6))


def test_gathers_and_dynamic_slices_clamp_like_xla():
    def fn(x):
        taken = x[:, jnp.array([3, 0, 2])]  # take along an axis
        start = jnp.argmax(jnp.sum(x, axis=(0, 2)))  # a start computed from the data
        window = lax.dynamic_slice_in_dim(x, start, 2, axis=1)
        clamped = lax.dynamic_slice_in_dim(x, start + 10, 3, axis=2)  # XLA clamps the start
        picked = jnp.take(x, start % 4, axis=2), jnp.take(x, start + 4, axis=2)  # NaN: outside
        return taken, window, clamped, picked, x[:, -1]

    _check(fn, _normal(3, 5, 4))


def test_elementwise_ops_and_reductions():
    def fn(x):
        y = jnp.where(x > 0, x**3, jnp.clip(x, -0.5, 0.5)) + lax.rsqrt(jnp.abs(x) + 1)
        z = (
            jax.nn.sigmoid(x) * lax.erf(x)
            + jnp.sign(x)
            + lax.rem(x, 0.3)
            + (jnp.abs(x) + 1.0) ** -2
            + lax.clamp(-0.2, x, 0.4)
            + jnp.floor(3 * x) * 0.5
            - jnp.ceil(2 * x)
        )
        index = jnp.argmax(x, axis=1)
        count = (x != 0).astype(jnp.int32) + (x <= 0.1) * 2
        return y, z, jnp.max(x, 1), jnp.min(x, 2), jnp.sum(y * z, (1, 2)), index, count

    _check(fn, _normal(3, 5, 4))


@pytest.mark.parametrize(
    "fn, primitive",
    [
        (lambda x: lax.top_k(x, 2)[0], "top_k"),
        (lambda x: jnp.cumsum(x, axis=1), "cumsum"),
    ],
)
def test_unsupported_primitive_is_named(fn, primitive):
    spec = jax.ShapeDtypeStruct((2, 4, 4, 3), jnp.float32)
    with pytest.raises(UserError, match=f"primitive '{primitive}'"):
        onnx_export.to_onnx(fn, [spec], ["x"])
