"""Bad input on the command line ends with one clear line and exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = "--config=configs/baseline.py:synthetic"
MAT = "--config=configs/mat.py:synthetic"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config=configs/baseline.py:nope"], "unknown variant nope"),
        ([SYNTHETIC, "--config.train.epochz=3"], "unknown config field train.epochz; did you mean"),
        (["--config=configs/missing.py"], "No such file or directory: configs/missing.py"),
        ([SYNTHETIC, "--config.data.batch_size=30"], "not divisible by devices x K"),
        ([SYNTHETIC, "--config.train.optimizer=adamw"], "unknown train.optimizer"),
        ([SYNTHETIC, "--config.train.log_every_steps=0"], "must be a positive integer"),
        ([SYNTHETIC, "--mode=eval"], "no checkpoint in"),
        (["--config=configs/baseline.py:market1501"], "--config.data.manual_dir=DIR"),
        (["--config=configs/mat.py:nope"], "unknown variant nope"),
        ([MAT, "--config.model.keypoints=pose"], "unknown model.keypoints"),
        (
            [MAT, "--config.model.keypoints=heatmaps", "--config.model.keypoint_features=encoder"],
            "--config.pose.source=ground_truth",
        ),
        (
            [MAT, "--config.model.keypoints=heatmaps", "--config.pose.source=ground_truth"],
            "set model.keypoint_features='encoder' (MAT's) or 'segment'",
        ),
        ([MAT, "--mode=visualize"], "no checkpoint in"),
        ([SYNTHETIC, "--num_processes=2"], "needs --coordinator_address, --num_processes"),
        (
            [SYNTHETIC, "--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
            "--process_id=2 must be in 0..1",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "occreid_jax.main", f"--workdir={tmp_path}", *args,
         f"--config.data.data_dir={tmp_path / 'tfds'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    assert not (tmp_path / "tfds").exists(), "config errors must stop before building data"
