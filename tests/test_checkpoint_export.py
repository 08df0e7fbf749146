"""Checkpoint save -> resume continues identically; export -> load -> embed reproduces features."""

import functools
import json
import os

import jax
import numpy as np
import pytest
from helpers import make_optimizer

from occreid_jax import families
from occreid_jax.bundles import export
from occreid_jax.data import IMAGENET_MEAN, IMAGENET_STD
from occreid_jax.errors import UserError
from occreid_jax.losses.objectives import LossConfig, baseline_objective
from occreid_jax.training.checkpointing import Checkpointer
from occreid_jax.training.train import create_train_state, parallel_train_step

IMAGE = (64, 32)
KWARGS = {"num_classes": 6, "backbone": "resnet_tiny", "last_stride": 1, "dtype": "float32"}


def _optimizer():
    return make_optimizer(2, warmup_factor=0.1, epochs=3)


def _fresh_state():
    model = families.build_model("baseline", **KWARGS, bn_axis_name="batch")
    return create_train_state(model, _optimizer(), jax.random.PRNGKey(1), IMAGE)


def _batches():
    rng = np.random.default_rng(0)
    for _ in range(4):
        yield {
            "images": rng.normal(size=(2, 8, *IMAGE, 3)).astype(np.float32),
            "labels": np.repeat(rng.permutation(6)[:4], 4).reshape(2, 8).astype(np.int32),
        }


def test_resume_from_checkpoint_continues_with_identical_state(tmp_path):
    step = parallel_train_step(functools.partial(baseline_objective, cfg=LossConfig()))
    batches = list(_batches())
    signature = {"model": "baseline", "model_kwargs": KWARGS}

    straight = _fresh_state()
    for batch in batches:
        straight, _ = step(straight, batch)

    state = _fresh_state()
    for batch in batches[:2]:
        state, _ = step(state, batch)
    writer = Checkpointer(str(tmp_path / "ckpt"), signature)
    writer.save(2, state)
    writer.close()

    reader = Checkpointer(str(tmp_path / "ckpt"), signature)
    resumed = reader.restore_latest(_fresh_state())
    assert int(resumed.step) == 2
    for batch in batches[2:]:
        resumed, _ = step(resumed, batch)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restoring_another_models_checkpoint_is_a_clear_error(tmp_path):
    signature = {"model": "baseline", "model_kwargs": KWARGS}
    writer = Checkpointer(str(tmp_path / "ckpt"), signature)
    writer.save(1, _fresh_state())
    writer.close()
    other = dict(signature, model_kwargs=dict(KWARGS, num_classes=9))
    with pytest.raises(UserError, match="different model.*num_classes|model_kwargs"):
        Checkpointer(str(tmp_path / "ckpt"), other).restore_latest(_fresh_state())


def test_a_checkpoint_that_predates_a_model_argument_restores_at_its_default(tmp_path):
    signature = {"model": "baseline", "model_kwargs": KWARGS}
    writer = Checkpointer(str(tmp_path / "ckpt"), signature)
    writer.save(1, _fresh_state())
    writer.close()
    newer = dict(signature, model_kwargs=dict(KWARGS, new_switch="off"))
    defaults = {"new_switch": "off"}
    restored = Checkpointer(str(tmp_path / "ckpt"), newer, model_defaults=defaults)
    assert int(restored.restore_latest(_fresh_state()).step) == int(_fresh_state().step)
    changed = dict(signature, model_kwargs=dict(KWARGS, new_switch="on"))
    with pytest.raises(UserError, match="new_switch"):
        Checkpointer(str(tmp_path / "ckpt"), changed, model_defaults=defaults).restore_latest(
            _fresh_state()
        )


def test_export_load_embed_reproduces_the_features(tmp_path):
    state = _fresh_state()
    step = parallel_train_step(functools.partial(baseline_objective, cfg=LossConfig()))
    state, _ = step(state, next(_batches()))  # non-trivial batch stats
    model = families.build_model("baseline", **KWARGS)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    path = export.write(
        str(tmp_path / "bundle"),
        model_name="baseline",
        model_kwargs=KWARGS,
        variables=variables,
        image_size=IMAGE,
        matching={"metric": "cosine", "flip": False},
    )
    with open(os.path.join(path, "model.json")) as f:
        assert json.load(f)["model_kwargs"] == KWARGS

    bundle = export.load(path)
    pixels = np.random.default_rng(3).uniform(0, 255, size=(5, *IMAGE, 3)).astype(np.float32)
    normalized = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected, _ = model.apply(variables, normalized.astype(np.float32), train=False)
    got = bundle.embed(pixels)
    assert set(got) == set(expected)
    np.testing.assert_allclose(got["global"], expected["global"], rtol=1e-5, atol=1e-5)
    assert bundle.image_size == IMAGE and bundle.matching["metric"] == "cosine"


def test_loading_a_folder_that_is_not_a_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not an export bundle"):
        export.load(str(tmp_path))


def test_a_bundle_written_before_the_package_was_regrouped_still_loads(tiny_bundle_dir, tmp_path):
    """Bundles on disk carry the format name "occreid_jax.export/1" (from when the module was
    occreid_jax/export.py): moving the module must not make them unreadable."""
    import shutil

    old = tmp_path / "old_bundle"
    shutil.copytree(tiny_bundle_dir, old)
    description = json.loads((old / "model.json").read_text())
    description["format"] = "occreid_jax.export/1"
    (old / "model.json").write_text(json.dumps(description))
    bundle = export.load(str(old))
    assert bundle.model_name == "baseline"
    description["format"] = "occreid_jax.export/2"
    (old / "model.json").write_text(json.dumps(description))
    with pytest.raises(UserError, match="re-export it with this version"):
        export.load(str(old))
