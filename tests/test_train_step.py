"""The pmapped train step: 2 devices equal 1 device on the same global batch; schedules."""

import functools

import jax
import numpy as np
import optax
import pytest
from helpers import make_optimizer

from occreid_jax import families
from occreid_jax.losses.objectives import LossConfig, baseline_objective
from occreid_jax.training import optim
from occreid_jax.training.train import create_train_state, parallel_train_step, train_step

IMAGE = (64, 32)


def _setup(num_classes=8, optimizer="adam"):
    model = families.build_model(
        "baseline", num_classes=num_classes, backbone="resnet_tiny", bn_axis_name="batch"
    )
    tx = make_optimizer(2, optimizer=optimizer, cosine_start_epoch=2, epochs=4)
    return create_train_state(model, tx, jax.random.PRNGKey(0), IMAGE)


def _global_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.normal(size=(16, *IMAGE, 3)).astype(np.float32),
        "labels": np.repeat(rng.permutation(8)[:4], 4).astype(np.int32),  # P=4 x K=4
    }


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_two_devices_match_one_device_on_the_same_global_batch(optimizer):
    assert jax.local_device_count() >= 2, "conftest sets two CPU devices"
    batch = _global_batch()
    two = jax.pmap(
        functools.partial(
            train_step, objective=functools.partial(baseline_objective, cfg=LossConfig())
        ),
        axis_name="batch",
        in_axes=(None, 0),
        out_axes=(None, 0),
        devices=jax.devices()[:2],
    )
    # One device mines each device's identities separately, as the two devices do.
    one = jax.pmap(
        functools.partial(
            train_step,
            objective=functools.partial(baseline_objective, cfg=LossConfig(mining_groups=2)),
        ),
        axis_name="batch",
        in_axes=(None, 0),
        out_axes=(None, 0),
        devices=jax.devices()[:1],
    )
    state_two = state_one = _setup(optimizer=optimizer)
    for step in range(2):
        batch = _global_batch(step)
        state_two, m_two = two(
            state_two, jax.tree.map(lambda x: x.reshape(2, 8, *x.shape[1:]), batch)
        )
        state_one, m_one = one(state_one, jax.tree.map(lambda x: x[None], batch))
        np.testing.assert_allclose(m_two["loss"][0], m_one["loss"][0], rtol=1e-5)
        np.testing.assert_allclose(m_two["loss"][0], m_two["loss"][1], rtol=0)
    for a, b in zip(
        jax.tree.leaves(state_two.params), jax.tree.leaves(state_one.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(state_two.batch_stats), jax.tree.leaves(state_one.batch_stats), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # And the step really trained: parameters moved.
    start = _setup(optimizer=optimizer)
    moved = [
        np.abs(a - b).max()
        for a, b in zip(
            jax.tree.leaves(start.params), jax.tree.leaves(state_two.params), strict=True
        )
    ]
    assert max(moved) > 1e-4


def test_training_lowers_the_loss_on_a_fixed_batch():
    state = _setup()
    step = parallel_train_step(functools.partial(baseline_objective, cfg=LossConfig()))
    batch = jax.tree.map(lambda x: x.reshape(2, 8, *x.shape[1:]), _global_batch())
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"][0]))
    assert losses[-1] < 0.8 * losses[0]
    assert int(state.step) == 8


def test_coupled_adam_equals_torch_rule_by_hand():
    """One step of torch-style Adam with L2 in the gradient, computed by hand."""
    import ml_collections

    cfg = ml_collections.ConfigDict(
        dict(optimizer="adam", lr=0.1, weight_decay=0.5, adam_betas=(0.9, 0.999))
    )
    tx = optim.make_optimizer(cfg, lambda step: 0.1)
    params = {"w": np.array([2.0], np.float32)}
    grads = {"w": np.array([1.0], np.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = 1.0 + 0.5 * 2.0  # coupled L2
    m_hat, v_hat = g, g * g  # bias-corrected moments after one step
    np.testing.assert_allclose(
        optax.apply_updates(params, updates)["w"],
        2.0 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8),
        rtol=1e-6,
    )


def test_schedules_follow_the_epoch_settings():
    import ml_collections

    base = dict(lr=1.0, warmup_epochs=10, warmup_factor=0.01, epochs=60, final_lr=1e-6)
    cosine = optim.make_schedule(
        ml_collections.ConfigDict(dict(base, schedule="warmup_flat_cosine", cosine_start_epoch=30)),
        100,
    )
    np.testing.assert_allclose(cosine(0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(cosine(500), 0.01 + 0.99 * 0.5, rtol=1e-6)
    np.testing.assert_allclose([cosine(1000), cosine(2999)], [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(cosine(4500), 1e-6 + 0.5 * (1 - 1e-6), rtol=1e-5)
    np.testing.assert_allclose(cosine(6000), 1e-6, rtol=1e-3)
    steps = optim.make_schedule(
        ml_collections.ConfigDict(
            dict(base, schedule="warmup_multistep", milestones=(40, 50), gamma=0.1)
        ),
        10,
    )
    np.testing.assert_allclose(
        [steps(100), steps(399), steps(400), steps(500)], [1, 1, 0.1, 0.01], rtol=1e-5
    )


def test_the_same_step_runs_under_jit_of_shard_map():
    """STYLE.md: train_step uses only named-axis collectives, so shard_map runs it unchanged."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    objective = functools.partial(baseline_objective, cfg=LossConfig())
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(train_step, objective=objective),
            mesh=mesh,
            in_specs=(P(), P("batch")),
            out_specs=(P(), P()),
            # Without the varying-manual-axes check, as under pmap: autodiff does not insert a
            # psum for the replicated params, train_step's own pmean averages the gradients.
            check_vma=False,
        ),
        donate_argnums=0,  # as the pmapped step: the new state reuses the old one's buffers
    )
    batch = _global_batch()
    # SGD: Adam's first step is sign-like, so near-zero gradients would amplify rounding.
    state_a, metrics_a = sharded(_setup(optimizer="sgd"), batch)
    state_b, metrics_b = parallel_train_step(objective)(
        _setup(optimizer="sgd"), jax.tree.map(lambda x: x.reshape(2, 8, *x.shape[1:]), batch)
    )
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
