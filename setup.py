"""Packaging beyond pyproject.toml: the config files ship inside the package.

`configs/*.py` stay where the README's commands name them and are installed as the package
`occreid_jax.configs`, so that `--config=mat:synthetic` finds them after `pip install` from any
directory (`occreid_jax/config_files.py`, `resolve_config_arg`).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["occreid_jax*"]), "occreid_jax.configs"],
    package_dir={"occreid_jax.configs": "configs"},
)
