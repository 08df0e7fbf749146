"""The model configs, installed as the package `occreid_jax.configs` (see setup.py)."""
