"""Several processes on this machine (loopback, gloo CPU collectives) equal one process.

Each process is a `python -m occreid_jax.main` with its own fake CPU devices; the reference is
one process with as many devices in all and the same global batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import baseline
from occreid_jax import experiment
from occreid_jax.training.run import Run

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420  # seconds for one launch; a normal one takes well under a minute


def _config(data_dir):
    config = baseline.get_config("synthetic,size=tiny")
    config.data.data_dir = data_dir
    config.data.batch_size = 16
    config.data.instances_per_id = 2  # P=8 x K=2: 2 identities per device over 4 devices
    return config


def _flags(config) -> list[str]:
    """The command line overrides that make `configs/baseline.py:synthetic,size=tiny` into
    `config`."""
    fields = [("data", "data_dir"), ("data", "batch_size"), ("data", "instances_per_id")]
    return [f"--config.{s}.{n}={config[s][n]}" for s, n in fields]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, config, processes, devices, *, module="occreid_jax.main", env=None):
    """Starts the run's processes; returns [(Popen, stdout path, stderr path)]."""
    port = _free_port()
    runs = []
    for index in range(processes):
        args = [sys.executable, "-m", module, "--config=configs/baseline.py:synthetic,size=tiny",
                f"--workdir={workdir}", *_flags(config)]  # fmt: skip
        if processes > 1:
            args += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                     f"--process_id={index}"]  # fmt: skip
        out, err = f"{workdir}.{index}.out", f"{workdir}.{index}.err"
        proc_env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
                        PYTHONPATH=ROOT, **(env or {}))  # fmt: skip
        with open(out, "w") as stdout, open(err, "w") as stderr:
            runs.append((subprocess.Popen(args, cwd=ROOT, env=proc_env, stdout=stdout,
                                          stderr=stderr), out, err))  # fmt: skip
    return runs


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def _wait(runs, timeout=TIMEOUT) -> list[str]:
    """Waits for every process; returns their stdouts. Fails (killing the rest) on an error."""
    deadline = time.monotonic() + timeout
    try:
        for proc, _, err in runs:
            code = proc.wait(timeout=max(1, deadline - time.monotonic()))
            assert code == 0, _read(err)[-3000:]
    finally:
        _kill(runs)
    return [_read(out) for _, out, _ in runs]


def _kill(runs) -> None:
    for proc, _, _ in runs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def _state(config, workdir):
    _, _, state = Run(config, workdir).restored_state()
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def _results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _train_steps_logged(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["step"] for r in records if r["kind"] == "train"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A persistent compilation cache shared by the launches: later ones compile less."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}


@pytest.fixture(scope="module")
def trained(tiny_data_dir, cache, tmp_path_factory):
    """The same run trained by 2 processes x 2 devices and by 1 process x 4 devices."""
    root = tmp_path_factory.mktemp("runs")
    config = _config(tiny_data_dir)
    two, one = str(root / "two_processes"), str(root / "one_process")
    runs = _start(two, config, processes=2, devices=2, env=cache)
    runs += _start(one, config, processes=1, devices=4, env=cache)
    out = _wait(runs)
    return {"config": config, "two": two, "one": one, "out": out}


def test_two_processes_train_and_evaluate_like_one_process_with_as_many_devices(trained):
    config, two, one, out = trained["config"], trained["two"], trained["one"], trained["out"]
    # Both processes joined; only process 0 talks and writes.
    assert "process 0 of 2 joined: 2 local device(s), 4 in all (cpu)" in out[0]
    assert "process 1 of 2 joined: 2 local device(s), 4 in all (cpu)" in out[1]
    assert "4 device(s) over 2 processes (2 each)" in out[0]
    assert "training" not in out[1] and "mAP" not in out[1]
    assert _train_steps_logged(two) == [1, 2, 3, 4]
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["2", "4"]

    # Training: the same parameters and batch statistics (float tolerance), same metrics.
    for a, b in zip(
        jax.tree.leaves(_state(config, two)), jax.tree.leaves(_state(config, one)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    results_two, results_one = _results(two)["results"], _results(one)["results"]
    for row, metrics in results_one.items():
        for name in ("mAP", "mINP", "rank1", "rank5"):
            np.testing.assert_allclose(results_two[row][name], metrics[name], atol=1e-6)

    # Evaluation: the two processes' metrics of their final state are exactly those of one
    # process evaluating the same checkpoint with the same per-device batch (this test
    # process has 2 devices: 8 per batch = 4 per device, as 16 over 4 devices).
    config = _config(config.data.data_dir)
    config.data.eval_batch_size = 8
    assert experiment.evaluate(config, two) == results_two


def test_a_killed_two_process_run_resumes_from_its_checkpoint(trained, cache, tmp_path):
    config = trained["config"]
    workdir = str(tmp_path / "killed")
    stop_dir = tmp_path / "stops"
    stop_dir.mkdir()
    env = {"OCCREID_STOP_AT_BATCH": "4", "OCCREID_STOP_DIR": str(stop_dir), **cache}
    runs = _start(workdir, config, processes=2, devices=2, module="tests.multiprocess_driver",
                  env=env)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    try:  # both wait for their 5th batch (fetched 2 ahead: before step 4), after step 3
        while len(os.listdir(stop_dir)) < 2:
            for proc, _, err in runs:
                assert proc.poll() is None, _read(err)[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.5)
    finally:
        _kill(runs)
    assert _train_steps_logged(workdir) == [1, 2, 3]  # killed after step 3, before step 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    out = _wait(_start(workdir, config, processes=2, devices=2, env=cache))
    assert "resuming at step 2" in out[0]
    # Step 3, logged before the kill, is dropped on resuming from step 2 and logged once again.
    assert _train_steps_logged(workdir) == [1, 2, 3, 4]

    # Exactly the uninterrupted two-process run.
    straight = trained["two"]
    for a, b in zip(
        jax.tree.leaves(_state(config, workdir)), jax.tree.leaves(_state(config, straight)),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert _results(workdir)["results"] == _results(straight)["results"]
