"""Never lose a run: one command per workdir (a lock, tested with real processes) and SIGTERM
handled as Ctrl-C (a real signal to a real training process)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_bad_inputs import TINY, assert_one_line_error, cli

from occreid_jax.errors import UserError
from occreid_jax.training import workdir_lock

HOLD = (
    "import sys, time\n"
    "from occreid_jax.training import workdir_lock\n"
    "workdir_lock.acquire(sys.argv[1], 'train')\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def _text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _holder(workdir: str, seconds: float = 120.0) -> subprocess.Popen:
    """Another process holding the workdir's lock (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, workdir, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_a_workdir_in_use_stops_naming_the_other_process(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _holder(workdir)
    try:
        with pytest.raises(UserError) as error:
            workdir_lock.acquire(workdir, "eval")
        message = str(error.value)
        assert f"pid {proc.pid} on {socket.gethostname()} (train" in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    # The holder is gone (killed: no chance to clear its record): the lock is free again.
    workdir_lock.acquire(workdir, "eval")
    workdir_lock.release(workdir)


def test_training_on_a_workdir_in_use_stops_before_writing(tmp_path, tiny_data_dir):
    workdir = str(tmp_path / "run")
    proc = _holder(workdir)
    try:
        code, stderr, _ = cli(
            TINY, f"--workdir={workdir}", f"--config.data.data_dir={tiny_data_dir}"
        )
        assert_one_line_error(code, stderr, f"is in use by pid {proc.pid}")
        assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_NAME]  # nothing else written
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    proc = _holder(workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    workdir_lock.acquire(workdir, "export")
    try:
        warning = capsys.readouterr().err.strip().splitlines()
        assert len(warning) == 1 and f"pid {proc.pid}" in warning[0]
        assert "no longer running" in warning[0]
        with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
            record = json.load(f)
        assert record["pid"] == os.getpid() and record["command"] == "export"
    finally:
        workdir_lock.release(workdir)


def test_the_lock_is_reentrant_and_cleared_on_release(tmp_path):
    workdir = str(tmp_path / "run")
    with workdir_lock.held(workdir, "train"), workdir_lock.held(workdir, "eval"):
        pass
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
        assert f.read() == ""  # released cleanly: no record for the next command to warn about
    proc = _holder(workdir, 0.0)  # another process can take it now
    proc.wait()


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_says_how_to_resume(tmp_path, tiny_data_dir):
    workdir = str(tmp_path / "run")
    command = [
        sys.executable, "-m", "occreid_jax.main", TINY, f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_data_dir}", "--config.train.epochs=10000",
        "--config.train.log_every_steps=100000", "--config.train.checkpoint_every_steps=3",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(os.path.join(workdir, "checkpoints", "3")):  # training is under way
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    if proc.poll() is None:  # a second one, as an impatient scheduler sends: still one save
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted at step ") and "rerun the same command" in last
    step = int(last.split("interrupted at step ")[1].split(";")[0])
    assert step >= 3
    assert str(step) in os.listdir(os.path.join(workdir, "checkpoints"))
    with open(metrics) as f:
        logged = [json.loads(line)["step"] for line in f if '"train"' in line]
    # Logging is every 100000 steps: the interrupted step's metrics are logged on their own.
    assert logged == [step]
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
        assert f.read() == ""  # the interrupted run gave its lock back


def _limit_file_size(limit: int):
    """In the child: files larger than `limit` bytes cannot be written (EFBIG, no signal)."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_the_run_in_one_line(tmp_path, tiny_data_dir):
    """A real failed write in orbax's asynchronous save (files held under 600 kB, as a full
    disk would): one line naming the step not saved and the latest intact one, no traceback;
    the resume from that one is what a rerun does."""
    workdir = str(tmp_path / "run")
    command = [
        sys.executable, "-m", "occreid_jax.main", TINY, f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_data_dir}", "--config.train.epochs=1",
    ]  # fmt: skip
    proc = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=_limit_file_size(600_000)
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "exception" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not save the checkpoint of step 2 in "), last
    assert "the latest intact checkpoint: none, a rerun starts over" in last
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
    rerun = subprocess.run(command, capture_output=True, text=True)  # room again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # tmp cleaned


def _read_only(monkeypatch, module):
    """Makes `module`'s file creation fail as on a read-only mount (EROFS; root ignores modes)."""
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(module, "mkstemp" if module.__name__ == "tempfile" else "open", refuse)


def test_an_output_folder_that_cannot_be_written_is_one_line_before_work(tmp_path, monkeypatch):
    from occreid_jax import errors

    errors.check_writable(str(tmp_path / "new" / "deeper"), "--out")  # made later: the parent
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out=.*file.*is a file, not a folder"):
        errors.check_writable(str(tmp_path / "file" / "sub"), "--out")
    _read_only(monkeypatch, errors.tempfile)
    with pytest.raises(UserError, match=r"--output=.* is not writable \(Read-only file system\)"):
        errors.check_writable(str(tmp_path), "--output")


def test_a_read_only_workdir_is_read_without_its_lock_by_eval_only(tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    _read_only(monkeypatch, workdir_lock.os)
    with pytest.raises(UserError, match="cannot write to the workdir .* pass a writable --workdir"):
        workdir_lock.acquire(workdir, "train")
    with workdir_lock.held(workdir, "eval", reads_only=True):
        assert "read without its lock" in capsys.readouterr().err
    assert not os.listdir(workdir)
