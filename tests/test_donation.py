"""The train state is donated to the step, and the step compiles once over a run's batches."""

import jax
import numpy as np
import pytest

from occreid_jax.data.sampler import IdentitySampler
from occreid_jax.training import optim, train_loop
from occreid_jax.training.run import Run

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compile_counter():
    """A list that receives one entry per XLA backend compilation while the test runs."""
    events = []

    def listener(name, _duration, **_kwargs):
        if name == BACKEND_COMPILE:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


def _loop_parts(config, workdir):
    """The step, initial state and batches exactly as `train_and_evaluate` builds them."""
    run = Run(config, workdir)
    split = run.train_split()
    sampler = IdentitySampler(
        split.labels, config.data.batch_size, config.data.instances_per_id, run.num_devices
    )
    model, _, checkpointer = run.model_and_checkpointer(split.num_classes)
    tx = optim.make_optimizer(config.train, optim.make_schedule(config.train, 10))
    state = train_loop._initial_state(run, model, tx, checkpointer)
    checkpointer.close()
    step, pose_variables = train_loop._step_function(run)
    batches = train_loop._train_batches(run, split, sampler, 0)
    return step, state, pose_variables, batches


def test_three_steps_compile_once_and_donate_the_state(tiny_config, tmp_path, compile_counter):
    step, state, pose_variables, batches = _loop_parts(tiny_config("baseline"), tmp_path)
    first_batch = next(batches)
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "nbytes"))
    counts = []
    for batch in (first_batch, next(batches), next(batches)):
        before = len(compile_counter)
        passed = state
        state, metrics = step(state, batch, pose_variables)
        jax.block_until_ready(metrics)
        counts.append(len(compile_counter) - before)
        # Donated: the buffers of the state passed in now belong to the new state.
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(passed.params))
    assert counts[0] >= 1 and counts[1:] == [0, 0], counts
    assert int(state.step) == 3 and np.isfinite(metrics["loss"]).all()

    memory = step.lower(state, first_batch, pose_variables).compile().memory_analysis()
    # Every byte of the state (params, batch stats, optimiser state, step, rng) is aliased to
    # the output: the new state is written in place of the old.
    assert memory.alias_size_in_bytes >= state_bytes
