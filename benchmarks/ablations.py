"""Runs a paper's ablation table on a config variant and prints mean and spread over seeds.

A config file defines `ABLATIONS = {table: {row label: {"dotted.key": value, ...}}}`: the
overrides of each row relative to the chosen variant, so every row shares the step budget,
data and schedule. Each (row, seed) trains in its own workdir with the normal command line
(`python -m occreid_jax.main`), so an interrupted table resumes: finished runs are skipped,
an unfinished one continues from its checkpoint.

  python -m benchmarks.ablations --config=configs/pirt.py:synthetic --table=table3 \
      --seeds=0,1 --root=runs/ablations
  python -m benchmarks.ablations ... --report_only   # just print the table of what exists

Extra `--set=key=value` flags override every row (e.g. `--set=train.epochs=20`).

Tables listed in the config's `EVAL_ONLY = {table: (trained table, trained row)}` train nothing:
each row evaluates that row's trained runs with its own (test-time) settings, e.g. Pirt's
Table 5 (which confidences weight the part distance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.table_rows import wanted_rows
from occreid_jax.config_files import load_config_file
from occreid_jax.errors import UserError

_CONFIG = flags.DEFINE_string(
    "config", None, "config file and variant, e.g. configs/pirt.py:synthetic"
)
_TABLE = flags.DEFINE_string("table", "table3", "key of the config's ABLATIONS dict")
_SEEDS = flags.DEFINE_string("seeds", "0,1", "comma-separated seeds")
_ROOT = flags.DEFINE_string("root", "runs/ablations", "folder of the runs' workdirs")
_SET = flags.DEFINE_multi_string("set", [], "key=value override applied to every row")
_ROWS = flags.DEFINE_string("rows", "", "comma-separated row labels to run (default: all)")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "print the table, train nothing")
_QUERY_ROW = flags.DEFINE_string("query_set", "occluded queries", "evaluation row reported")


def _load_ablations(config_arg: str) -> dict:
    path = config_arg.split(":")[0]
    module = load_config_file(path)
    if not hasattr(module, "ABLATIONS"):
        raise UserError(f"{path} defines no ABLATIONS table")
    return module.ABLATIONS


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def _workdir(table: str, label: str, seed: int) -> str:
    return os.path.join(_ROOT.value, table, _slug(label), f"seed{seed}")


def _finished(workdir: str) -> dict | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    done = record.get("step") == record.get("total_steps") and "results" in record
    return record if done else None


def _run(table: str, label: str, overrides: dict, seed: int) -> None:
    workdir = _workdir(table, label, seed)
    if _finished(workdir):
        return
    command = [sys.executable, "-m", "occreid_jax.main", f"--config={_CONFIG.value}"]
    command += [f"--workdir={workdir}", f"--config.seed={seed}"]
    command += [f"--config.{key}={value}" for key, value in overrides.items()]
    command += [f"--config.{item}" for item in _SET.value]
    print(f"[{time.strftime('%H:%M:%S')}] {table} / {label} / seed {seed}: {' '.join(command[2:])}")
    log_path = os.path.join(workdir, "ablation.log")
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise UserError(f"run failed (exit {code}); see {log_path}")
    print(f"    done in {time.perf_counter() - start:.0f} s")


def _evaluate_only(table: str, label: str, overrides: dict, seed: int, source: tuple) -> None:
    """Evaluates the trained runs of row `source` = (table, label) with the row's settings."""
    workdir = _workdir(table, label, seed)
    if _finished(workdir):
        return
    from occreid_jax import experiment

    config_path, _, variant = _CONFIG.value.partition(":")
    config = load_config_file(config_path).get_config(variant)
    config.seed = seed
    trained_overrides = _load_ablations(_CONFIG.value)[source[0]][source[1]]
    flat = {**trained_overrides, **overrides}
    for item in _SET.value:
        key, _, value = item.partition("=")
        flat.setdefault(key, _parse(value, config, key))
    config.update_from_flattened_dict(flat)
    trained = _workdir(source[0], source[1], seed)
    if not _finished(trained):
        raise UserError(f"{trained} has not finished training; run table {source[0]} first")
    print(f"[{time.strftime('%H:%M:%S')}] {table} / {label} / seed {seed}: eval of {trained}")
    results = experiment.evaluate(config, trained)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"step": 1, "total_steps": 1, "results": results, "of": trained}, f, indent=2)


def _parse(text: str, config, key: str):
    """A --set value as the type of the config field it overrides."""
    current = config
    for part in key.split("."):
        current = current[part]
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes")
    return type(current)(text) if current is not None else text


def _report(table: str, rows: dict, seeds: list[int]) -> str:
    lines = [
        f"| {table} row | mAP | Rank-1 | seeds | per seed mAP / R-1 |",
        "|---|---|---|---|---|",
    ]
    for label in rows:
        maps, rank1s = [], []
        for seed in seeds:
            record = _finished(_workdir(table, label, seed))
            if record and _QUERY_ROW.value in record["results"]:
                maps.append(100 * record["results"][_QUERY_ROW.value]["mAP"])
                rank1s.append(100 * record["results"][_QUERY_ROW.value]["rank1"])
        if not maps:
            lines.append(f"| {label} | - | - | 0 | |")
            continue
        per_seed = ", ".join(f"{m:.1f} / {r:.1f}" for m, r in zip(maps, rank1s, strict=True))
        lines.append(
            f"| {label} | {np.mean(maps):.1f} ± {np.std(maps):.1f} | "
            f"{np.mean(rank1s):.1f} ± {np.std(rank1s):.1f} | {len(maps)} | {per_seed} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if not _CONFIG.value:
        raise app.UsageError("--config is required")
    tables = _load_ablations(_CONFIG.value)
    if _TABLE.value not in tables:
        raise UserError(f"no table {_TABLE.value!r}; the config has {', '.join(tables)}")
    rows = tables[_TABLE.value]
    if _ROWS.value:
        rows = {label: rows[label] for label in wanted_rows(_ROWS.value, rows)}
    seeds = [int(s) for s in _SEEDS.value.split(",")]
    eval_only = getattr(load_config_file(_CONFIG.value.split(":")[0]), "EVAL_ONLY", {})
    if not _REPORT_ONLY.value:
        for seed in seeds:  # every row once before any second seed: an early table is usable
            for label, overrides in rows.items():
                if _TABLE.value in eval_only:
                    source = eval_only[_TABLE.value]
                    _evaluate_only(_TABLE.value, label, overrides, seed, source)
                else:
                    _run(_TABLE.value, label, overrides, seed)
    print(f"{_CONFIG.value}, {_QUERY_ROW.value}, mean ± std over seeds:")
    print(_report(_TABLE.value, rows, seeds))


if __name__ == "__main__":
    try:
        app.run(main)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
