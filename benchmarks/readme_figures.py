"""Keeps the README's printed demo output honest: reruns each demo and compares what it prints.

Every fenced block in README.md that shows what a command printed is preceded, on the line
right before its opening fence, by a marker

    <!-- printed-by: COMMAND | commit SHORT_COMMIT | YYYY-MM-DD -->

e.g. COMMAND `python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo`
with the commit that printed the block and the date. This script reruns those commands from the
repository root, each with its `--workdir` replaced by a fresh temporary folder (a rerun never
resumes an old run; paths in the output are mapped back to the marker's workdir), and compares
the block with what was printed:

    python -m benchmarks.readme_figures                  # = --check: exit 1 if a block differs
    python -m benchmarks.readme_figures --only=mat.py    # only commands containing "mat.py"
    python -m benchmarks.readme_figures --write          # put the printed figures into README.md

Lines are matched by key: the text before a line's first decimal figure (`13.0`, `38.3`, `0.57`),
whitespace normalised, or the whole line if it has none. A block line agrees when the output has
a line with the same key that equals it up to whitespace; printed lines the block does not show
(progress, other evaluations) are ignored. `--write` replaces each block line by its printed
counterpart and the marker's commit and date by the current ones (`git rev-parse --short HEAD`,
`+dirty` when tracked files other than the README have uncommitted changes). A leading `python`
in a command runs as this interpreter (`sys.executable`). The commands train real models: the
two markers in README.md take about 20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Run as a file too: make the repository root importable for `occreid_jax.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from occreid_jax.errors import OneLineArgumentParser, UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"^<!-- printed-by: (?P<command>.+) \| commit (?P<commit>\S+) \| (?P<date>\S+) -->\s*$"
)
# A decimal figure: digits, a point, digits, not part of a longer word or number (`v1.2`, `1.2.3`).
FIGURE = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")
FENCE = re.compile(r"^(`{3,})")
TAIL_LINES = 20  # of a failed command's output


@dataclasses.dataclass(frozen=True)
class Block:
    """A marker and the fenced code block right after it.

    Attributes:
        marker: index (0-based) of the marker's line in the text.
        command: the command the marker names.
        commit: the commit the marker names.
        date: the date the marker names.
        start: index of the block's first line (the line after the opening fence).
        end: index of the closing fence; the block's lines are `lines[start:end]`.
        lines: the block's lines, without line endings.
    """

    marker: int
    command: str
    commit: str
    date: str
    start: int
    end: int
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Difference:
    """A block line the output does not print as shown.

    Attributes:
        readme: the README's line.
        printed: the printed line with the same key, or None when the output has none.
    """

    readme: str
    printed: str | None


@dataclasses.dataclass(frozen=True)
class Run:
    """What one command did.

    Attributes:
        returncode: its exit status.
        lines: its printed lines (stderr's, then stdout's), temporary workdir mapped back.
        tail: the last lines of its stdout and stderr, for a failure report.
        seconds: how long it ran.
    """

    returncode: int
    lines: tuple[str, ...]
    tail: tuple[str, ...]
    seconds: float


def normalise(line: str) -> str:
    """`line` with every run of whitespace as one space and none at either end."""
    return " ".join(line.split())


def line_key(line: str) -> str:
    """The text before the line's first decimal figure (whitespace normalised), or the line.

    Args:
        line: a block or output line, e.g. `epoch 12: occluded queries: mAP 13.0, R-1 12.2`.

    Returns:
        The key, e.g. `epoch 12: occluded queries: mAP`; a line without a decimal figure (a
        table header, a path) is its own key.
    """
    match = FIGURE.search(line)
    return normalise(line if match is None else line[: match.start()])


def find_blocks(text: str) -> list[Block]:
    """Every marker in `text` and the fenced code block that follows it.

    Args:
        text: the README's text.

    Returns:
        The blocks in the order of the text.

    Raises:
        UserError: a marker is not followed, on the next line, by a closed fenced block.
    """
    lines = text.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        match = MARKER.match(line)
        if match is None:
            continue
        fence = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if fence is None:
            raise UserError(
                f"line {index + 1}: a printed-by marker must be followed by a ``` fence on the "
                "next line"
            )
        end = next(
            (j for j in range(index + 2, len(lines)) if lines[j].strip() == fence.group(1)),
            None,
        )
        if end is None:
            raise UserError(f"line {index + 2}: the code block after the marker is never closed")
        blocks.append(
            Block(
                marker=index,
                command=match.group("command").strip(),
                commit=match.group("commit"),
                date=match.group("date"),
                start=index + 2,
                end=end,
                lines=tuple(lines[index + 2 : end]),
            )
        )
    return blocks


def marker_line(command: str, commit: str, date: str) -> str:
    """The marker line (no line ending) for `command` printed at `commit` on `date`."""
    return f"<!-- printed-by: {command} | commit {commit} | {date} -->"


def workdir_of(command: str) -> str:
    """The value of the command's `--workdir=X` (or `--workdir X`).

    Raises:
        UserError: the command has no `--workdir`.
    """
    args = shlex.split(command)
    for i, arg in enumerate(args):
        if arg.startswith("--workdir="):
            return arg[len("--workdir=") :]
        if arg == "--workdir" and i + 1 < len(args):
            return args[i + 1]
    raise UserError(f"the command has no --workdir=DIR, so a rerun could resume a run: {command}")


def command_args(command: str, workdir: str) -> list[str]:
    """The command's arguments with its `--workdir` set to `workdir` and `python` as this one.

    Args:
        command: the marker's command, shell-quoted.
        workdir: the folder to run in instead of the command's own workdir.

    Returns:
        The argument list for `subprocess`.
    """
    workdir_of(command)  # raises if there is none
    args = shlex.split(command)
    if args[0] in ("python", "python3"):
        args[0] = sys.executable
    out = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg.startswith("--workdir="):
            out.append(f"--workdir={workdir}")
        elif arg == "--workdir" and i + 1 < len(args):
            out.extend(["--workdir", workdir])
            skip = True
        else:
            out.append(arg)
    return out


def printed_lines(output: str, temporary: str, workdir: str) -> list[str]:
    """The output's non-blank lines, with the temporary workdir written as the README's.

    Args:
        output: what the command printed (progress bars' carriage returns split lines too).
        temporary: the temporary workdir the command ran in.
        workdir: the marker command's own `--workdir`, e.g. `runs/demo`.

    Returns:
        The lines, trailing whitespace removed; `<temporary>/results.json` reads
        `runs/demo/results.json`.
    """
    paths = {os.path.abspath(temporary), os.path.realpath(temporary), temporary}
    wanted = workdir.rstrip("/") or workdir
    lines = []
    for line in output.splitlines():
        for path in sorted(paths, key=len, reverse=True):
            line = line.replace(path.rstrip("/"), wanted)
        if line.strip():
            lines.append(line.rstrip())
    return lines


def counterpart(line: str, printed: Sequence[str]) -> str | None:
    """The printed line that stands for a block line: one equal to it up to whitespace, else the
    last with its key, else None."""
    key, wanted = line_key(line), normalise(line)
    same_key = [p for p in printed if line_key(p) == key]
    if any(normalise(p) == wanted for p in same_key):
        return next(p for p in same_key if normalise(p) == wanted)
    return same_key[-1] if same_key else None


def compare(block: Sequence[str], printed: Sequence[str]) -> list[Difference]:
    """The block lines (blank ones skipped) that the output does not print as shown.

    Args:
        block: the README block's lines.
        printed: the command's printed lines (`printed_lines`).

    Returns:
        One `Difference` per disagreeing line, in the block's order; empty when all agree.
    """
    differences = []
    for line in block:
        if not line.strip():
            continue
        other = counterpart(line, printed)
        if other is None or normalise(other) != normalise(line):
            differences.append(Difference(line, other))
    return differences


def updated_lines(block: Sequence[str], printed: Sequence[str]) -> list[str]:
    """The block with each line replaced by its printed counterpart (blank lines kept).

    Raises:
        UserError: a block line has no printed line with its key.
    """
    lines = []
    for line in block:
        if not line.strip():
            lines.append(line)
            continue
        other = counterpart(line, printed)
        if other is None:
            raise UserError(f"the output has no line like this README line: {line.strip()}")
        lines.append(other)
    return lines


def rewrite(text: str, updates: dict[int, Sequence[str]], commit: str, date: str) -> str:
    """`text` with the given blocks' lines replaced and their markers' commit and date renewed.

    Args:
        text: the README's text.
        updates: the new lines of each rewritten block, keyed by the block's marker index
            (`Block.marker`); blocks not named are left alone.
        commit: the commit for the rewritten markers.
        date: the date for the rewritten markers.

    Returns:
        The new text; every other line, line ending included, is unchanged.
    """
    lines = text.splitlines(keepends=True)
    blocks = {block.marker: block for block in find_blocks(text)}
    # From the end, so that a block with a new number of lines does not move those before it.
    for marker in sorted(updates, reverse=True):
        block = blocks[marker]
        ending = _ending(lines[marker])
        lines[marker] = marker_line(block.command, commit, date) + ending
        fence_ending = _ending(lines[block.start - 1])
        lines[block.start : block.end] = [line + fence_ending for line in updates[marker]]
    return "".join(lines)


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :] or "\n"


def run_command(command: str, cwd: Path = ROOT) -> Run:
    """Runs the command in `cwd` with a fresh temporary workdir, capturing what it prints.

    Args:
        command: the marker's command.
        cwd: where to run it (the repository root).

    Returns:
        Its exit status, printed lines (workdir mapped back) and time; the temporary folder is
        removed.
    """
    workdir = workdir_of(command)
    folder = tempfile.mkdtemp(prefix="readme_figures_")
    temporary = os.path.join(folder, "workdir")  # fresh: not even created yet
    start = time.perf_counter()
    try:
        # stdout and stderr apart: a progress bar on stderr never lands inside a printed line.
        done = subprocess.run(
            command_args(command, temporary),
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    stdout = printed_lines(done.stdout, temporary, workdir)
    stderr = printed_lines(done.stderr, temporary, workdir)
    return Run(
        done.returncode,
        tuple(stderr + stdout),  # stdout last: its final results win among equal keys
        tuple(stdout[-TAIL_LINES:] + stderr[-TAIL_LINES:]),
        seconds,
    )


def git_commit(cwd: Path = ROOT, readme: Path | None = None) -> str:
    """The short HEAD commit, with `+dirty` if tracked files (other than `readme`) changed."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    ignored = None
    if readme is not None:
        try:
            ignored = readme.resolve().relative_to(cwd.resolve()).as_posix()
        except ValueError:  # a README outside the repository
            ignored = None
    for entry in git("status", "--porcelain", "--untracked-files=no").splitlines():
        path = entry[3:].split(" -> ")[-1].strip('"')
        if path != ignored:
            return commit + "+dirty"
    return commit


def format_seconds(seconds: float) -> str:
    """`42 s`, or `5 min 17 s` from a minute on."""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def main(argv: Sequence[str] | None = None) -> int:
    """Checks or rewrites the README's printed blocks; returns the exit status."""
    parser = OneLineArgumentParser(
        prog="python -m benchmarks.readme_figures", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare only (the default)")
    mode.add_argument("--write", action="store_true", help="put the printed lines into the README")
    parser.add_argument(
        "--only", default="", metavar="SUBSTRING", help="run only commands containing this text"
    )
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", metavar="PATH", help="the README"
    )
    args = parser.parse_args(argv)
    try:
        return _main(args.readme, args.only, args.write)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _main(readme: Path, only: str, write: bool) -> int:
    with open(readme, encoding="utf-8", newline="") as f:  # line endings kept as they are
        text = f.read()
    blocks = [block for block in find_blocks(text) if only in block.command]
    if not blocks:
        raise UserError(f"no printed-by marker in {readme}" + (f" names {only!r}" if only else ""))
    commit = git_commit(ROOT, readme) if write else ""  # the tree that prints, before any run
    runs: dict[str, Run] = {}  # a command named twice runs once
    status, updates = 0, {}
    for number, block in enumerate(blocks, 1):
        where = f"{readme.name}:{block.marker + 1}"
        if block.command not in runs:
            print(f"[{number}/{len(blocks)}] {block.command} ... ", end="", flush=True)
            runs[block.command] = run_command(block.command)
            run = runs[block.command]
            outcome = "done" if run.returncode == 0 else f"failed (exit {run.returncode})"
            print(f"{outcome} in {format_seconds(run.seconds)}", flush=True)
        run = runs[block.command]
        if run.returncode != 0:
            status = 1
            print(f"{where}: the command failed; its last lines:")
            print("\n".join(f"  {line}" for line in run.tail))
            continue
        if write:
            updates[block.marker] = updated_lines(block.lines, run.lines)
            changed = sum(a != b for a, b in zip(block.lines, updates[block.marker], strict=True))
            print(f"{where}: {changed} line(s) rewritten" if changed else f"{where}: ok")
            continue
        differences = compare(block.lines, run.lines)
        print(f"{where}: " + ("ok" if not differences else f"{len(differences)} line(s) differ"))
        for difference in differences:
            print(f"  README:  {difference.readme.strip()}")
            printed = difference.printed
            print(f"  printed: {'(no line with this key)' if printed is None else printed.strip()}")
        status = status or int(bool(differences))
    if write:
        if status:
            print(f"{readme}: not written, a command failed")
            return status
        # Read again: the README may have been edited while the commands ran (they take
        # minutes); the printed lines go into the text as it is now.
        with open(readme, encoding="utf-8", newline="") as f:
            text = f.read()
        updates = {
            block.marker: updated_lines(block.lines, runs[block.command].lines)
            for block in find_blocks(text)
            if block.command in runs
        }
        with open(readme, "w", encoding="utf-8", newline="") as f:
            f.write(rewrite(text, updates, commit, datetime.date.today().isoformat()))
        print(f"{readme}: written (commit {commit})")
    return status


if __name__ == "__main__":
    sys.exit(main())
