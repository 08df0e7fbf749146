"""Portable exports (jax.export StableHLO, TF SavedModel) give bundle.embed's features, and
load in a process that imports nothing from occreid_jax."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from occreid_jax import families
from occreid_jax.bundles import export, export_formats
from occreid_jax.errors import UserError

# Run in a fresh interpreter from a folder outside the repository: only jax / tensorflow.
LOADER = """
import sys
import numpy as np
fmt, path, inputs, out = sys.argv[1:]
arrays = np.load(inputs)
args = [arrays[k] for k in sorted(arrays)]  # a_images, b_heatmaps
if fmt == "jax_export":
    import jax
    with open(path, "rb") as f:
        embed = jax.export.deserialize(bytearray(f.read()))
    features = embed.call(*args)
else:
    import tensorflow as tf
    features = tf.saved_model.load(path).embed(*args)
np.savez(out, **{k: np.asarray(v) for k, v in features.items()})
print(",".join(m for m in sys.modules if m.split(".")[0] == "occreid_jax") or "none")
"""


def _load_elsewhere(tmp_path, fmt, path, inputs):
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    np.savez(tmp_path / "inputs.npz", **inputs)
    out = tmp_path / f"{fmt}_out.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(script), fmt, path, str(tmp_path / "inputs.npz"), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "none"  # no occreid_jax module imported
    return dict(np.load(out))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jax_export", "savedmodel"])
def test_portable_export_matches_bundle_embed_without_occreid_jax(tiny_bundle_dir, tmp_path, fmt):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, folder)
    path = export_formats.write(str(folder), fmt)
    assert os.path.basename(path) in (export_formats.JAX_EXPORT_FILE, export_formats.SAVEDMODEL_DIR)
    bundle = export.load(str(folder))
    for batch in (3, 1):  # one export, any batch size
        images = np.random.default_rng(batch).uniform(0, 255, (batch, 64, 32, 3))
        images = images.astype(np.float32)
        got = _load_elsewhere(tmp_path, fmt, path, {"a_images": images})
        want = jax.device_get(bundle.embed(images))
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key].shape
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_pirt_export_takes_heatmaps_as_second_input(tiny_config, tmp_path):
    config = tiny_config("pirt")
    kwargs = families.model_kwargs(config, num_classes=4)
    model = families.build_model("pirt", **kwargs)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 32, 3)).astype(np.float32)
    heatmaps = rng.uniform(0, 1, (2, 16, 8, 17)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), images, train=False, heatmaps=heatmaps)
    folder = export.write(
        str(tmp_path / "pirt"), model_name="pirt", model_kwargs=kwargs, variables=variables,
        image_size=(64, 32), matching={"metric": "cosine", "flip": False},
    )  # fmt: skip
    bundle = export.load(folder)
    assert export_formats.input_shapes(bundle, 2) == [(2, 64, 32, 3), (2, 16, 8, 17)]
    path = export_formats.write(folder, "jax_export")
    got = _load_elsewhere(
        tmp_path, "jax_export", path, {"a_images": images, "b_heatmaps": heatmaps}
    )
    want = jax.device_get(bundle.embed(images, heatmaps))
    assert {"parts", "confidence"} <= set(got)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5)


def test_unknown_format_is_a_clear_error(tiny_bundle_dir):
    with pytest.raises(UserError, match="unknown --format=tflite"):
        export_formats.write(tiny_bundle_dir, "tflite")
    assert export_formats.write(tiny_bundle_dir, "msgpack") == tiny_bundle_dir
