"""Prepare one real Re-ID benchmark from your own copy, and print its split sizes.

    python -m occreid_jax.data.prepare market1501 --manual-dir /data/Market-1501-v15.09.15
    python -m occreid_jax.data.prepare msmt17 --manual-dir /data --config v2 --strict
    python -m occreid_jax.data.prepare occluded_reid --manual-dir /data --json
    python -m occreid_jax.data.prepare folder --manual-dir my_folder   # your own (data/folder.py)

Names: market1501, dukemtmc, occluded_duke, msmt17, occluded_reid, partial_reid, partial_ilids,
and folder (your own folder) or any name added by `datasets.register_dataset`.
The build (with a progress bar) happens once per --data-dir; later runs reuse it. Without
--json it prints a table of images, identities and cameras per split; with --json exactly
`{"train": {"images": n, "ids": n, "cams": n}, "query": {...}, "gallery": {...}}` on stdout
(test-only sets have no "train"), everything else on stderr. Split sizes that differ from the
published ones are a warning (an error with --strict); corrupt images are skipped, listed as
warnings and counted. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from occreid_jax.errors import OneLineArgumentParser, UserError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m occreid_jax.data.prepare",
        description="Build a tfds dataset from your copy of a Re-ID benchmark.",
    )
    parser.add_argument("name", help="market1501, dukemtmc, occluded_duke, msmt17, ..., folder")
    parser.add_argument(
        "--manual-dir", default="", help="your copy: the dataset folder or its parent"
    )
    parser.add_argument("--data-dir", default="", help="tfds data dir (~/tensorflow_datasets)")
    parser.add_argument("--config", default="", help="builder config, e.g. msmt17: v2")
    parser.add_argument("--strict", action="store_true", help="fail when split sizes differ")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    return parser


def format_table(name: str, builder, summary: dict, skipped: list[str]) -> str:
    """Images / ids / cams per split, with the dataset's location and notes."""
    config = builder.builder_config
    rows = [f"{name}{f' ({config.name})' if config else ''}: {builder.data_dir}"]
    rows.append(f"{'split':<8} {'images':>8} {'ids':>6} {'cams':>5}")
    for split, row in summary.items():
        rows.append(f"{split:<8} {row['images']:>8,} {row['ids']:>6,} {row['cams']:>5}")
    if config and getattr(config, "camera_convention", None):
        rows.append(f"cameras: {config.description}")
    meta = builder.info.metadata or {}
    junk = {s: n for s, n in (meta.get("junk_dropped") or {}).items() if n}
    if junk:
        rows.append("dropped junk (pid -1): " + ", ".join(f"{s} {n:,}" for s, n in junk.items()))
    for problem in meta.get("size_mismatches") or []:
        rows.append(f"differs from published: {problem}")
    rows.append(f"skipped corrupt images: {len(skipped)}")
    rows.extend(f"  {path}" for path in skipped[:20])
    return "\n".join(rows)


def _show_warning(message, category, *args, **kwargs) -> None:
    """Warnings as one line each (their source line is tfds' progress loop, not news)."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0, or 2 for bad input)."""
    args = _parser().parse_args(argv)
    from absl import logging

    from occreid_jax.data import datasets, reid_builders

    logging.set_verbosity(logging.WARNING)  # tfds logs every file at INFO
    chatter = io.StringIO()  # tfds prints to stdout; keep stdout for the result
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("always", reid_builders.CorruptImageWarning)
            warnings.simplefilter("always", reid_builders.SizeMismatchWarning)
            warnings.showwarning = _show_warning
            if args.name in datasets.REGISTERED:  # e.g. folder: your own folder
                builder = datasets.prepare(
                    args.name, args.config, args.data_dir, args.manual_dir, args.strict
                )
            else:
                builder = reid_builders.prepare(
                    args.name,
                    manual_dir=args.manual_dir or None,
                    data_dir=args.data_dir or None,
                    builder_config=args.config or None,
                    strict=args.strict,
                )
            summary = reid_builders.split_summary(builder)
            skipped = reid_builders.skipped_images(builder)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stderr.write(chatter.getvalue())
    if args.json:
        if skipped:
            print(f"skipped corrupt images: {len(skipped)}", file=sys.stderr)
        print(json.dumps(summary))
    else:
        print(format_table(args.name, builder, summary, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
