"""Config files (`configs/*.py`) loaded by path.

The config files are scripts that `ml_collections.config_flags` loads by path, not a package;
a config that builds on another (configs/pirt.py and configs/mat.py on configs/baseline.py),
the ablation runner and tests load them the same way through `load_config_file`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from types import ModuleType


def load_config_file(path: str) -> ModuleType:
    """Executes the Python file at `path` and returns it as a module (not put in sys.modules).

    Args:
      path: a config file, e.g. "configs/pirt.py" (relative to the working directory) or an
        absolute path.
    """
    name = "occreid_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_arg(arg: str, **defaults: str) -> tuple[str, dict[str, str]]:
    """Splits a config argument "VARIANT[,key=value...]" (as big_vision's `parse_arg`).

    `configs/mat.py:synthetic,size=tiny` gives ("synthetic", {"size": "tiny"}). Only keys in
    `defaults` are accepted; a missing one takes its default.

    Raises:
      ValueError: an unknown key or a part that is neither the variant nor key=value.
    """
    variant, *items = (arg or "").split(",")
    options = dict(defaults)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"bad config option {item!r}; use VARIANT,key=value with key in "
                f"{', '.join(defaults) or '(none)'}"
            )
        options[key] = value
    return variant, options


def configs_dir() -> str:
    """The folder of the shipped model configs: the installed package `occreid_jax.configs`, or
    `configs/` of a source checkout."""
    spec = importlib.util.find_spec("occreid_jax.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> tuple[str, ...]:
    """Names of the shipped configs ("baseline", "mat", "pirt")."""
    folder = configs_dir()
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return tuple(sorted(n[:-3] for n in names if n.endswith(".py") and not n.startswith("_")))


def resolve_config_arg(value: str) -> str:
    """`--config` value -> a config file path: "mat:synthetic" names the shipped `mat.py`
    (from any directory); a path ("configs/mat.py:synthetic") is returned unchanged."""
    name, sep, variant = value.partition(":")
    if name.endswith(".py") or os.sep in name or os.path.exists(name):
        return value
    if name not in shipped_configs():
        return value  # config_flags reports the missing file
    return os.path.join(configs_dir(), f"{name}.py") + sep + variant


def default_workdir(config_spec: str) -> str:
    """The run folder used when `--workdir` is not given: `runs/<config>[-<variant>]`.

    "configs/mat.py" gives "runs/mat"; "mat:synthetic,size=tiny" gives
    "runs/mat-synthetic-size-tiny" (every run of characters other than letters, digits, dots
    and underscores becomes one hyphen), relative to the working directory.
    """
    path, _, arg = config_spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    variant = re.sub(r"[^A-Za-z0-9._]+", "-", arg).strip("-")
    return os.path.join("runs", f"{name}-{variant}" if variant else name)
