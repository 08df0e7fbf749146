"""Test setup: two fake CPU devices for every test, so pmap paths run as on a multi-GPU host."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Must happen before any JAX computation creates the CPU backend.
jax.config.update("jax_num_cpu_devices", 2)
