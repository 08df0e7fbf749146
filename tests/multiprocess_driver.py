"""`python -m occreid_jax.main` that stops at a given training batch, for the resume test.

With OCCREID_STOP_AT_BATCH=n each process, when it asks for its (n+1)-th training batch (after
n - 1 steps: the loop copies batches to the devices two steps ahead), writes
`<OCCREID_STOP_DIR>/stopped.<process index>` and sleeps until the test kills it: a run killed
mid-way, after its last periodic checkpoint. Saves here wait until they are on disk, so that
the checkpoint the test expects is complete when it kills.
"""

import os
import time

import jax

from occreid_jax import main as cli
from occreid_jax.data import pipeline
from occreid_jax.training.checkpointing import Checkpointer

STOP_AT = int(os.environ.get("OCCREID_STOP_AT_BATCH", "-1"))
STOP_DIR = os.environ.get("OCCREID_STOP_DIR", "")

real_batches = pipeline.train_batches
real_save = Checkpointer.save


def stopping_batches(*args, **kwargs):
    for count, batch in enumerate(real_batches(*args, **kwargs)):
        if count == STOP_AT:
            with open(os.path.join(STOP_DIR, f"stopped.{jax.process_index()}"), "w") as f:
                f.write("waiting to be killed\n")
            time.sleep(600)
        yield batch


def waiting_save(self, step, state):
    real_save(self, step, state)
    self.wait()


if __name__ == "__main__":
    pipeline.train_batches = stopping_batches
    Checkpointer.save = waiting_save
    cli.main()
