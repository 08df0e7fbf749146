"""The device suite's smoke run: every part at a tiny size on the CPU, a complete JSON report."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FIELDS = {
    "compile_s", "step_s", "images_per_sec", "memory_bytes", "flops_per_step_per_device",
    "peak_flops_per_device", "peak_source", "mfu", "timed_steps", "loss_finite",
}  # fmt: skip


@pytest.mark.slow
def test_smoke_run_reports_every_part(tmp_path):
    out = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_suite", f"--out={out}", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["platform"] == "cpu"
    names = {f"train/{m}/{d}" for m in ("baseline", "pirt", "mat") for d in ("float32", "bfloat16")}
    names |= {"eval/msmt17", "heatmaps/hrnet_w48"}
    assert set(report["parts"]) == names
    statuses = {name: part["status"] for name, part in report["parts"].items()}
    # A loaded machine may skip the last parts (the budget), but nothing may fail.
    assert "error" not in statuses.values(), report["parts"]
    assert statuses["train/baseline/bfloat16"] == "ok"
    for name, part in report["parts"].items():
        if part["status"] == "skipped":
            assert "budget" in part["reason"]
        elif name.startswith("train/"):
            assert set(part) >= TRAIN_FIELDS and part["loss_finite"], part
            memory = part["memory_bytes"]
            # Donated: the whole state is aliased, so the peak is below the undonated one.
            assert memory["alias"] > 0 and memory["peak_estimate"] < memory["peak_without_donation"]
            assert part["flops_per_step_per_device"] > 0 and part["mfu"] is None  # no CPU peak
            assert part["images_per_sec"] == pytest.approx(part["global_batch"] / part["step_s"])
        elif name == "eval/msmt17":
            assert 0 < part["mAP"] <= 1 and part["seconds"] > 0
        else:
            assert part["images_per_sec"] > 0
    assert name in result.stdout.split("\n", 1)[1]  # the table lists the parts
