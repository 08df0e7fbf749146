"""The README figures checker: markers and blocks, line keys, the comparison, the rewrite, the
workdir mapping, and one run of a trivial command (no training)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from benchmarks import readme_figures as rf
from occreid_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo"
BLOCK = [
    "epoch 40: occluded queries: mAP 38.3, R-1 36.1; holistic queries: mAP 78.4, R-1 84.8",
    "name                           mAP   mINP    R-1",
    "occluded queries              38.3   25.4   36.1",
    "holistic queries              78.4   58.3   84.8",
    "results: runs/demo/results.json",
]
README = (
    "# Title\n"
    "\n"
    "Some prose (2026-11-21), kept as it is.\n"
    "\n"
    f"<!-- printed-by: {COMMAND} | commit c9ecbbe | 2026-11-21 -->\n"
    "```\n" + "".join(line + "\n" for line in BLOCK) + "```\n"
    "\n"
    "```bash\n"
    "pytest -q  # an unmarked block: never compared\n"
    "```\n"
    "Rows are ... 38.3 in prose is not a block.\n"
)
TMP = "/tmp/readme_figures_abc/workdir"
OUTPUT = (
    "training baseline (resnet_tiny) on synthetic: 2128 images, 150 identities\n"
    "train:  50%|#####     | 33/66 [00:10<00:10, 3.20step/s]\r"
    "train: 100%|##########| 66/66 [00:20<00:00, 3.30step/s]\n"
    "epoch 20: occluded queries: mAP 22.6, R-1 19.6; holistic queries: mAP 63.9, R-1 67.0\n"
    "epoch 40: occluded queries: mAP 38.3, R-1 36.1; holistic queries: mAP 78.4, R-1 84.8\n"
    "name                           mAP   mINP    R-1\n"
    "occluded queries              38.3   25.4   36.1\n"
    "holistic queries              78.4   58.3   84.8\n"
    f"results: {TMP}/results.json\n"
)


def printed(output: str = OUTPUT) -> list[str]:
    return rf.printed_lines(output, TMP, "runs/demo")


def test_line_keys():
    assert rf.line_key("epoch 12: occluded queries: mAP 13.0, R-1 12.2") == (
        "epoch 12: occluded queries: mAP"
    )
    assert rf.line_key("occluded queries   13.0    7.5") == "occluded queries"
    assert rf.line_key("untrained, occluded queries    1.2    0.7") == "untrained, occluded queries"
    header = "name                mAP   mINP    R-1    R-5   R-10   R-20"
    assert rf.line_key(header) == rf.normalise(header)
    assert rf.line_key("  results:   runs/demo/results.json ") == "results: runs/demo/results.json"
    assert rf.line_key("score 0.57 of v1.2.3") == "score"
    assert rf.line_key("loss -0.25") == "loss"


def test_markers_and_blocks_are_found():
    (block,) = rf.find_blocks(README)
    assert block.command == COMMAND
    assert (block.commit, block.date) == ("c9ecbbe", "2026-11-21")
    assert block.lines == tuple(BLOCK)
    lines = README.splitlines()
    assert lines[block.marker].startswith("<!-- printed-by:")
    assert lines[block.start - 1] == lines[block.end] == "```"
    assert rf.workdir_of(block.command) == "runs/demo"


def test_a_marker_without_a_block_is_an_error():
    text = f"<!-- printed-by: {COMMAND} | commit c9ecbbe | 2026-11-21 -->\nprose\n"
    with pytest.raises(UserError, match="line 1: a printed-by marker must be followed"):
        rf.find_blocks(text)
    with pytest.raises(UserError, match="never closed"):
        rf.find_blocks(text.replace("prose", "```\nepoch 1: mAP 1.0"))


def test_the_temporary_workdir_reads_as_the_readmes():
    lines = printed()
    assert lines[-1] == "results: runs/demo/results.json"
    assert not any(TMP in line for line in lines)
    assert "train: 100%|##########| 66/66 [00:20<00:00, 3.30step/s]" in lines  # \r splits lines
    assert rf.printed_lines(f"saved {TMP}/ckpt\n", TMP + "/", "runs/x/") == ["saved runs/x/ckpt"]


def test_the_check_passes_when_the_figures_are_equal():
    assert rf.compare(BLOCK, printed()) == []
    respaced = [" ".join(line.split()) for line in BLOCK]  # whitespace does not count
    assert rf.compare(respaced, printed()) == []


def test_the_check_reports_exactly_the_changed_line():
    output = OUTPUT.replace(
        "occluded queries              38.3", "occluded queries              38.4"
    )
    assert rf.compare(BLOCK, printed(output)) == [
        rf.Difference(BLOCK[2], "occluded queries              38.4   25.4   36.1")
    ]


def test_a_readme_line_missing_from_the_output_is_reported():
    output = OUTPUT.replace(
        "holistic queries              78.4", "other rows                    78.4"
    )
    assert rf.compare(BLOCK, printed(output)) == [rf.Difference(BLOCK[3], None)]
    with pytest.raises(UserError, match="no line like this README line: holistic queries"):
        rf.updated_lines(BLOCK, printed(output))


def test_write_puts_the_printed_figures_and_the_new_commit_and_date():
    output = OUTPUT.replace("38.3", "39.0").replace("25.4", "26.1")
    (block,) = rf.find_blocks(README)
    new = rf.updated_lines(block.lines, printed(output))
    text = rf.rewrite(README, {block.marker: new}, "abc1234+dirty", "2027-01-02")
    (after,) = rf.find_blocks(text)
    assert (after.command, after.commit, after.date) == (COMMAND, "abc1234+dirty", "2027-01-02")
    assert rf.compare(after.lines, printed(output)) == []
    assert "occluded queries              39.0   26.1   36.1" in after.lines
    # Every other line is byte-identical: only the marker and the two changed lines differ.
    old_lines, new_lines = README.splitlines(keepends=True), text.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert changed == [block.marker, block.start, block.start + 2]
    # Unchanged figures rewrite to the very same text, CRLF line endings included.
    crlf = README.replace("\n", "\r\n")
    (block,) = rf.find_blocks(crlf)
    same = rf.rewrite(crlf, {block.marker: list(block.lines)}, block.commit, block.date)
    assert same == crlf


def test_the_command_runs_in_a_fresh_workdir():
    args = rf.command_args(COMMAND + " --config.train.epochs=2", "/tmp/x/workdir")
    assert args[0] == sys.executable
    assert args[-2:] == ["--workdir=/tmp/x/workdir", "--config.train.epochs=2"]
    assert rf.command_args("python a.py --workdir runs/y", "/t")[-2:] == ["--workdir", "/t"]
    with pytest.raises(UserError, match="no --workdir"):
        rf.command_args("python -m occreid_jax.main --config=configs/mat.py", "/t")


def test_check_and_write_on_a_trivial_command(tmp_path, capsys):
    # argv[1] is "--workdir=<fresh temporary folder>": its results path must read runs/x/...
    command = (
        "python -c \"import sys; print('x 1.0'); "
        "print('results:', sys.argv[1].split('=', 1)[1] + '/results.json')\" --workdir=runs/x"
    )
    readme = tmp_path / "README.md"
    text = (
        f"intro\n<!-- printed-by: {command} | commit 0000000 | 2000-01-01 -->\n"
        "```\nx 2.0\nresults: runs/x/results.json\n```\n"
    )
    readme.write_text(text)
    assert rf.main(["--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\[1/1\] python -c .* done in \d+ s", out)
    assert "  README:  x 2.0\n  printed: x 1.0\n" in out
    assert "results" not in out.split("line(s) differ")[1]  # the path agreed

    assert rf.main(["--write", "--readme", str(readme)]) == 0
    (block,) = rf.find_blocks(readme.read_text())
    assert block.lines == ("x 1.0", "results: runs/x/results.json")
    assert re.fullmatch(r"[0-9a-f]{4,}(\+dirty)?", block.commit)
    assert block.date != "2000-01-01"
    assert rf.main(["--readme", str(readme)]) == 0
    assert rf.main(["--only", "no such command", "--readme", str(readme)]) == 2


def test_a_failing_command_fails_the_check(tmp_path, capsys):
    command = "python -c \"import sys; print('boom'); sys.exit(3)\" --workdir=runs/x"
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- printed-by: {command} | commit 0 | 2000-01-01 -->\n```\nx 1.0\n```\n")
    assert rf.main(["--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert "failed (exit 3)" in out and "  boom" in out


def test_the_readme_marks_the_baseline_and_mat_demos():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = rf.find_blocks(f.read())
    configs = {}
    for block in blocks:
        assert any(line.strip() for line in block.lines), block.command
        assert rf.workdir_of(block.command)
        config = re.search(r"--config=(\S+)", block.command)
        configs[config.group(1)] = block
    assert {"configs/baseline.py:synthetic", "configs/mat.py:synthetic"} <= set(configs)
    assert "results: runs/demo/results.json" in configs["configs/baseline.py:synthetic"].lines
