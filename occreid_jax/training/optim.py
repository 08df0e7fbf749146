"""Optimisers and learning-rate schedules expressed in epochs, as the Re-ID papers state them.

Adam here is PyTorch's `torch.optim.Adam(weight_decay=wd)`: the L2 term `wd * param` is added
to the gradient before the moment estimates (coupled), unlike AdamW. SGD is PyTorch's SGD with
momentum (no dampening) and the same coupled L2. Both decay every parameter, biases and norm
scales included, as the released Pirt and fast-reid configs do.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from occreid_jax.errors import UserError

SCHEDULES = ("warmup_flat_cosine", "warmup_multistep")
OPTIMIZERS = ("adam", "sgd")


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per optimiser step, from the epoch-based settings in `config.train`.

    - warmup_flat_cosine (Pirt released): linear warm-up from `warmup_factor * lr` over
      `warmup_epochs`, flat until `cosine_start_epoch`, then cosine down to `final_lr` at `epochs`.
    - warmup_multistep (BoT / MAT): the same warm-up, then `lr * gamma ** (number of milestones
      passed)`, milestones in epochs.
    The factor changes per step (fast-reid changes it per iteration too).
    """
    if cfg.schedule not in SCHEDULES:
        raise UserError(
            f"unknown train.schedule {cfg.schedule!r}; use one of {', '.join(SCHEDULES)}"
        )
    lr = cfg.lr
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    total_steps = int(round(cfg.epochs * steps_per_epoch))

    def warmup(step):
        progress = jnp.clip(step / max(warmup_steps, 1), 0.0, 1.0)
        return cfg.warmup_factor + (1.0 - cfg.warmup_factor) * progress

    if cfg.schedule == "warmup_flat_cosine":
        cosine_start = int(round(cfg.cosine_start_epoch * steps_per_epoch))
        cosine_steps = max(total_steps - cosine_start, 1)

        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            progress = jnp.clip((step - cosine_start) / cosine_steps, 0.0, 1.0)
            cosine = cfg.final_lr + 0.5 * (lr - cfg.final_lr) * (1 + jnp.cos(jnp.pi * progress))
            return jnp.where(step < warmup_steps, lr * warmup(step), cosine)

        return schedule

    boundaries = jnp.asarray([m * steps_per_epoch for m in cfg.milestones], jnp.float32)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay = cfg.gamma ** jnp.sum(step >= boundaries)
        return lr * warmup(step) * decay

    return schedule


def make_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Adam or SGD with momentum, torch-style coupled L2 weight decay, per `config.train`."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(
            f"unknown train.optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    decay = optax.add_decayed_weights(cfg.weight_decay)
    if cfg.optimizer == "adam":
        b1, b2 = cfg.adam_betas
        direction = optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8)
    else:
        direction = optax.trace(decay=cfg.momentum, nesterov=False)
    return optax.chain(decay, direction, optax.scale_by_learning_rate(schedule))
