"""Train state and the data-parallel training step.

`train_step(state, batch)` is pure and uses only named-axis collectives (axis "batch"): the
loss is computed on each device's slice of the global batch (whole identities, so batch-hard
mining stays on the device), gradients and BatchNorm statistics are averaged with `lax.pmean`,
and BatchNorm layers built with `bn_axis_name="batch"` normalise with statistics synchronised
over all devices. It is wrapped by `jax.pmap(..., in_axes=(None, 0, None), out_axes=(None, 0))`
(state, per-device batch, optional pose-net weights), so the state is never split by hand; see
`parallel_train_step`. The state argument is donated (`donate_argnums=0`): XLA writes the new
state into the old one's buffers, so a step holds one copy of params and optimiser state, not
two; the caller must not touch the state it passed in after the call.

How the model is run on the batch is a `Forward` hook (`nets/forward.py`): one pass by
default, or the model family's own (MAT: a second pass on a TPS-warped copy). The hook runs
inside the differentiated loss, so gradients flow through every pass it makes. The loop that
drives the step is `training/train_loop.py`.

The same function runs under `jax.jit(jax.shard_map(train_step, mesh, in_specs=(P(), P("batch")),
out_specs=(P(), P()), check_vma=False), donate_argnums=0)`. Keep `check_vma=False` there: with
it on, autodiff already sums the gradients of the replicated params over devices, and the pmean
below would then leave a sum, not a mean (tests/test_train_step.py checks the shard_map form).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from occreid_jax.distributed import AXIS, replicate
from occreid_jax.nets.forward import Forward, single_forward


class TrainState(train_state.TrainState):
    """flax's TrainState plus BatchNorm statistics and the run's base rng key."""

    batch_stats: Any
    rng: jax.Array


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_size: tuple[int, int],
) -> TrainState:
    """Initialises params and batch stats with a [1, H, W, 3] dummy image and dummy
    [1, H/4, W/4, 17] heatmaps (every model accepts `heatmaps=`; pose-guided ones need them)."""
    init_rng, state_rng = jax.random.split(rng)
    height, width = image_size
    dummy = jnp.zeros((1, height, width, 3), jnp.float32)
    heatmaps = jnp.zeros((1, height // 4, width // 4, 17), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        init_rng, dummy, heatmaps=heatmaps
    )
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        rng=state_rng,
    )
    return replicate(state.replace(step=jnp.asarray(0, jnp.int32)))


def train_step(
    state: TrainState,
    batch: dict,
    pose_variables: Any = None,
    *,
    objective: Callable,
    pose_apply: Callable | None = None,
    forward: Forward = single_forward,
) -> tuple[TrainState, dict]:
    """One optimiser step on this device's slice of the global batch.

    Must run under a mapped axis named "batch" (pmap or shard_map).

    Args:
      state: the train state, identical on every device.
      batch: this device's slice: images [b, H, W, 3] float32 (normalised), labels [b] int32,
        and optionally heatmaps [b, H/4, W/4, 17] (passed to the model as `heatmaps=`).
      pose_variables: variables of the frozen pose net (`pose.source = "online"`), or None.
      objective: `(aux, labels) -> (loss, metrics)`, e.g. a partial of `baseline_objective`.
      pose_apply: `(pose_variables, images) -> heatmaps [b, H/4, W/4, 17]`, run in inference
        mode without gradient on the augmented images; None unless the pose source is online.
      forward: how the model runs on the batch (a `Forward`; default one pass).
    Returns:
      (new state, identical on every device; metrics averaged over devices).
    """
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
    if pose_apply is not None:
        heatmaps = jax.lax.stop_gradient(pose_apply(pose_variables, batch["images"]))
        batch = {**batch, "heatmaps": heatmaps.astype(jnp.float32)}

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        aux, updates = forward(state.apply_fn, variables, batch, rng)
        # The step, for objectives whose terms start late (loss.consistency_start_step).
        loss, metrics = objective({**aux, "train_step": state.step}, batch["labels"])
        return loss, (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    batch_stats = jax.lax.pmean(updates.get("batch_stats", {}), AXIS)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = jax.lax.pmean(metrics, AXIS)
    return new_state, metrics


def parallel_train_step(
    objective: Callable, pose_apply: Callable | None = None, forward: Forward = single_forward
) -> Callable:
    """`train_step` mapped over the local devices, the state donated.

    (state, batch of [D, b, ...] arrays[, pose variables]) -> (state, metrics of [D] each,
    identical after the pmean). The state passed in is deleted by the call (donated); use the
    one returned. `step.lower(state, batch, pose_variables)` lowers it (compile time, XLA's
    memory and cost analyses).
    """
    mapped = jax.pmap(
        functools.partial(train_step, objective=objective, pose_apply=pose_apply, forward=forward),
        axis_name=AXIS,
        in_axes=(None, 0, None),
        out_axes=(None, 0),
        donate_argnums=(0,),
    )

    def step(state: TrainState, batch: dict, pose_variables: Any = None):
        return mapped(state, batch, pose_variables)

    step.lower = lambda state, batch, pose_variables=None: mapped.lower(
        state, batch, pose_variables
    )
    return step


def parallel_embed(model: nn.Module) -> Callable:
    """(variables, images [D, b, H, W, 3], heatmaps [D, b, H/4, W/4, 17] or None) ->
    embeddings dict of [D, b, ...] float32."""

    def embed(variables, images, heatmaps):
        inputs = {} if heatmaps is None else {"heatmaps": heatmaps}
        embeddings, _ = model.apply(variables, images, train=False, **inputs)
        return jax.tree.map(lambda x: x.astype(jnp.float32), embeddings)

    mapped = jax.pmap(embed, axis_name=AXIS, in_axes=(None, 0, 0))

    def embed_batch(variables, images, heatmaps=None):
        return mapped(variables, images, heatmaps)

    return embed_batch
