"""The progress bar counts completed steps and reports their rate, not the dispatch rate."""

import io

import jax.numpy as jnp
from tqdm import tqdm

from occreid_jax.training.progress import CompletedSteps


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeStep:
    """A dispatched step's output: ready when the fake device has run it."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.ready = clock, seconds, False

    def is_ready(self):
        return self.ready

    def block_until_ready(self):  # the device runs it now; time passes
        self.clock.now += self.seconds
        self.ready = True


def _bar():
    return tqdm(total=100, file=io.StringIO())


def test_bar_advances_on_completion_and_rate_is_that_of_completed_steps():
    clock = FakeClock()
    progress = CompletedSteps(_bar(), images_per_step=64, max_in_flight=2, clock=clock)
    steps = [FakeStep(clock, seconds=0.5) for _ in range(6)]
    progress.dispatched(steps[0])
    progress.dispatched(steps[1])
    assert progress.bar.n == 0  # dispatched, not done: the bar does not move
    progress.dispatched(steps[2])  # a third in flight: waits for the oldest
    assert progress.bar.n == 1 and progress.rates() is None
    for step in steps[3:]:
        progress.dispatched(step)
    assert progress.bar.n == 4 and len(progress.pending) == 2
    steps_per_sec, images_per_sec = progress.rates()
    # Completions at 0.5, 1.0, 1.5, 2.0 s: 3 intervals over 1.5 s, however fast dispatch was.
    assert abs(steps_per_sec - 2.0) < 1e-9 and abs(images_per_sec - 128.0) < 1e-9
    steps[4].ready = True  # finished while the host was busy: counted at the next look
    progress.drain()
    assert progress.bar.n == 6 and not progress.pending
    postfix = progress.bar.postfix
    assert "step_s=" in postfix and "img_s=" in postfix


def test_ready_steps_are_counted_in_dispatch_order_and_notes_stay():
    clock = FakeClock()
    progress = CompletedSteps(_bar(), images_per_step=8, max_in_flight=3, clock=clock)
    first, second = FakeStep(clock, 1.0), FakeStep(clock, 1.0)
    second.ready = True  # a later step cannot be counted before an earlier one
    progress.dispatched(first)
    progress.dispatched(second)
    assert progress.bar.n == 0
    progress.note(loss="1.234")
    first.ready = True
    progress.dispatched(jnp.zeros(()))  # a real jax.Array is a valid marker
    assert progress.bar.n == 3
    assert "loss=1.234" in progress.bar.postfix
