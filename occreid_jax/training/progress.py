"""A training progress bar that counts completed steps, not dispatched ones.

JAX dispatches steps asynchronously: the Python loop returns from a step call long before the
device has run it, and catches up only when something reads a result (the metrics at each
logging step). A bar advanced at dispatch therefore moves in bursts, and its rate swings
between the dispatch rate and the logging interval. `CompletedSteps` advances the bar when a
step's output is ready instead, and shows steps/s and images/s over the last completed steps.
It lets the host run at most `max_in_flight` steps ahead (enough to keep the device queue
full), which also bounds how stale the bar can be.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any


class CompletedSteps:
    """Advances a tqdm bar as dispatched steps complete.

    Args:
      bar: a tqdm bar (its own rate and ETA then follow completed steps too).
      images_per_step: global batch size, for images/s.
      max_in_flight: steps the host may dispatch before waiting for the oldest.
      window: completed steps the displayed rates average over.
      clock: seconds, monotonic (a fake one in tests).
    """

    def __init__(
        self,
        bar,
        images_per_step: int,
        max_in_flight: int = 2,
        window: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.bar, self.images_per_step = bar, images_per_step
        self.max_in_flight, self.clock = max_in_flight, clock
        self.pending: collections.deque = collections.deque()
        self.completion_times: collections.deque = collections.deque(maxlen=window + 1)
        self.fields: dict[str, str] = {}

    def dispatched(self, marker: Any) -> None:
        """Records a dispatched step; `marker` is one of its outputs (a jax.Array)."""
        self.pending.append(marker)
        while len(self.pending) > self.max_in_flight:
            self.pending[0].block_until_ready()
            self._complete_oldest()
        while self.pending and self.pending[0].is_ready():
            self._complete_oldest()

    def drain(self) -> None:
        """Waits for every dispatched step (before evaluating, saving or closing)."""
        while self.pending:
            self.pending[0].block_until_ready()
            self._complete_oldest()

    def note(self, **fields: str) -> None:
        """Extra postfix fields (e.g. the last logged loss), shown with the rates."""
        self.fields.update(fields)
        self._show()

    def rates(self) -> tuple[float, float] | None:
        """(completed steps/s, images/s) over the window, or None before two completions."""
        if len(self.completion_times) < 2:
            return None
        elapsed = self.completion_times[-1] - self.completion_times[0]
        steps_per_sec = (len(self.completion_times) - 1) / max(elapsed, 1e-9)
        return steps_per_sec, steps_per_sec * self.images_per_step

    def _complete_oldest(self) -> None:
        self.pending.popleft()
        self.completion_times.append(self.clock())
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        fields = dict(self.fields)
        rates = self.rates()
        if rates is not None:
            fields["step_s"] = f"{rates[0]:.2f}"
            fields["img_s"] = f"{rates[1]:.0f}"
        self.bar.set_postfix(fields, refresh=False)
