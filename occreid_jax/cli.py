"""The `occreid` command (installed by pip): one entry point for every tool.

    occreid train --config=baseline:synthetic --workdir=runs/demo
    occreid eval|export|extract|heatmaps|visualize|visrank --config=... --workdir=...
    occreid search --bundle=runs/demo/export --query=DIR --gallery=DIR --out=DIR
    occreid index --bundle=runs/demo/export --gallery=DIR --out=G.index  (then search --index)
    occreid prepare market1501 --manual-dir /data
    occreid convert hrnet_w48 pose_hrnet_w48_256x192.pth converted/

`occreid MODE ...` is `python -m occreid_jax.main --mode=MODE ...`; `search`, `index`,
`prepare` and `convert` are `python -m occreid_jax.search`, `occreid_jax.index`,
`occreid_jax.data.prepare` and `occreid_jax.nets.convert`.
`--config=NAME:VARIANT` finds the configs shipped with the package from any directory.
"""

from __future__ import annotations

import sys

MODES = ("train", "eval", "export", "extract", "heatmaps", "visualize", "visrank")
TOOLS = ("search", "index", "prepare", "convert")
USAGE = f"usage: occreid {{{','.join(MODES + TOOLS)}}} [flags]; occreid COMMAND --help"


def main(argv: list[str] | None = None) -> int:
    """Dispatches `occreid COMMAND ...`; returns (or exits with) the command's status."""
    in_process = argv is not None  # a caller that goes on running after the command
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    command, rest = argv[0], argv[1:]
    if command in MODES:
        from occreid_jax import main as modes

        sys.argv = [f"occreid {command}", f"--mode={command}", *rest]
        modes.main(restore_signal_handler=in_process)
        return 0
    if command == "search":
        from occreid_jax import search

        return search.main(rest)
    if command == "index":
        from occreid_jax import index

        return index.main(rest)
    if command == "prepare":
        from occreid_jax.data import prepare

        return prepare.main(rest)
    if command == "convert":
        from occreid_jax.nets import convert

        return convert.main(rest)
    print(f"error: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
