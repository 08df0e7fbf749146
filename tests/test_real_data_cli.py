"""The baseline trains a few steps and evaluates on a fabricated Market-1501 tree, via the CLI."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _market_tree(root):
    """4 train identities x 4 images, 3 test identities with a query and 2 gallery images each,
    a distractor (0000) and junk (-1) in the gallery; real Market-1501 file names."""
    rng = np.random.default_rng(0)
    names = {
        "bounding_box_train": [
            f"{pid:04d}_c{cam}s1_{pid * 100 + i:06d}_01.jpg"
            for pid in (2, 7, 10, 11)
            for i, cam in enumerate((1, 2, 3, 1))
        ],
        "query": [f"{pid:04d}_c1s1_{pid:06d}_00.jpg" for pid in (3, 4, 5)],
        "bounding_box_test": [
            f"{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_01.jpg" for pid in (3, 4, 5) for cam in (1, 2)
        ]
        + ["0000_c3s1_000001_01.jpg", "-1_c2s1_000002_01.jpg"],
    }
    for folder, files in names.items():
        os.makedirs(root / folder, exist_ok=True)
        for name in files:
            pixels = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
            assert cv2.imwrite(str(root / folder / name), pixels)


def test_baseline_trains_and_evaluates_on_a_fabricated_market1501(tmp_path):
    _market_tree(tmp_path / "Market-1501-v15.09.15")
    workdir = tmp_path / "run"
    args = [
        "--config=configs/baseline.py:market1501",
        f"--workdir={workdir}",
        f"--config.data.manual_dir={tmp_path}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.model.backbone=resnet_tiny",
        "--config.data.image_size=(64, 32)",
        "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=2",
        "--config.train.warmup_epochs=0",
        "--config.train.cosine_start_epoch=0",
        "--config.train.eval_every_epochs=1",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "occreid_jax.main", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "market1501" in result.stdout and "mAP" in result.stdout
    with open(workdir / "results.json") as f:
        record = json.load(f)
    metrics = record["results"]["market1501"]
    assert record["step"] == 2
    # 3 queries, each with one cross-camera match; the same-camera gallery image is junk.
    assert metrics["num_queries"] == 3
    assert 0.0 < metrics["mAP"] <= 1.0
