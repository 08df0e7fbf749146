"""Stops a diverging run before it writes anything: a non-finite loss, or one far above its start.

Checked at every step that logs or saves (so a diverged state is never checkpointed): the loss
must be finite and at most `DIVERGENCE_FACTOR` times the run's starting loss (its first logged
loss, kept across resumes in metrics.jsonl). Not in the papers: a healthy Re-ID loss falls from
its start (cross-entropy about log(identities), plus the triplet terms); a learning rate far
too high sends it to 1e13 or NaN within a few steps, and a loss 100 times its start is no
longer a run worth saving. The loss a step reports is that of the weights before its update,
so the check lags one step: an update that explodes at a saving step itself is seen only at
the next check.
"""

from __future__ import annotations

import math

from occreid_jax.errors import UserError

DIVERGENCE_FACTOR = 100.0


class DivergenceGuard:
    """Raises a one-line `UserError` when the loss diverges.

    Args:
        start_loss: the run's starting loss (None: the first loss this guard sees).
        factor: how far above the start a finite loss may go.
    """

    def __init__(self, start_loss: float | None = None, factor: float = DIVERGENCE_FACTOR):
        self.start_loss, self.factor = start_loss, factor

    def check(self, step: int, loss: float, lr: float, last_checkpoint: int | None) -> None:
        """Raises if `loss` (at `step`, with learning rate `lr`) has diverged.

        `last_checkpoint` (the step of the latest saved checkpoint, or None) goes into the
        message: it stays the latest, and a resumed run starts from it.
        """
        finite = math.isfinite(loss)
        if finite and self.start_loss is None:
            self.start_loss = loss
        if finite and (self.start_loss is None or loss <= self.factor * abs(self.start_loss)):
            return
        why = f"over {self.factor:g}x the start {self.start_loss:.4g}" if finite else "not finite"
        kept = (
            f"the last good checkpoint (step {last_checkpoint}) stays the latest"
            if last_checkpoint is not None
            else "no checkpoint was saved"
        )
        raise UserError(
            f"training diverged at step {step}: loss {loss:.4g} ({why}) at learning rate "
            f"{lr:.3g}; {kept}; lower --config.train.lr (or use a new --workdir)"
        )
