"""Embed a gallery once, search it many times: `occreid index`.

    occreid index --bundle=runs/demo/export --gallery=footage/ --out=footage.index
    occreid search --bundle=runs/demo/export --index=footage.index --query=q/ --out=results/

The index folder (`bundles/gallery_index.py`) holds the gallery's embeddings in committed
chunks. An interrupted run keeps every committed chunk and the next run embeds only the rest;
a later run on a grown gallery embeds the new images alone (and again those whose content
changed, and drops those gone). `--storage=float16` halves the file size; its rankings are
those of the rounded features. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from occreid_jax.errors import (  # noqa: E402
    OneLineArgumentParser,
    UserError,
    check_writable,
    int_at_least,
)


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="occreid index", description="Embed a gallery of image files once, into an index."
    )
    parser.add_argument("--bundle", required=True, help="export folder (--mode=export)")
    parser.add_argument("--gallery", required=True, nargs="+", help="gallery folder or images")
    parser.add_argument("--out", required=True, help="the index folder (made or updated)")
    parser.add_argument("--storage", default="float32", choices=("float32", "float16"))
    parser.add_argument(
        "--chunk-size", type=int_at_least(1), default=2048, help="images per commit (2048)"
    )
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=32, help="images per step (32)"
    )
    parser.add_argument("--pose", default="", help="COCO HRNet checkpoint (pose-guided models)")
    parser.add_argument("--pose-net", default="hrnet_w48", choices=("hrnet_w48", "hrnet_w32"))
    parser.add_argument("--rebuild", action="store_true", help="drop what the index holds")
    return parser


def _check_arguments(args) -> None:
    from occreid_jax.bundles.gallery_index import STORAGE

    if args.storage not in STORAGE:
        raise UserError(f"--storage must be one of {', '.join(STORAGE)}, got {args.storage!r}")
    for flag in ("chunk_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out={args.out} is a file; the index is a folder: choose another path")
    check_writable(args.out, "--out")


def _start(args, fingerprint: str, gallery: list[str]) -> dict:
    """The index.json to continue from: the existing one, checked, or a new one."""
    from occreid_jax.bundles import gallery_index as gi

    manifest_path = os.path.join(args.out, gi.MANIFEST)
    if args.rebuild and os.path.isfile(manifest_path):
        gi.read_manifest(args.out)  # only ever delete an index
        shutil.rmtree(os.path.join(args.out, gi.CHUNKS), ignore_errors=True)
        os.remove(manifest_path)
    if not os.path.isfile(manifest_path):
        others = [e for e in os.listdir(args.out) if not e.startswith(".")]
        if others:
            raise UserError(
                f"--out={args.out} holds other files ({others[0]}, ...), not an index; choose "
                "a new or empty folder"
            )
        return gi.new_manifest(fingerprint, gallery, args.storage)
    manifest = gi.read_manifest(args.out)
    if manifest["bundle"] != fingerprint:
        raise UserError(
            f"the index {args.out} was made with another bundle than {args.bundle}; pass that "
            "bundle, or --rebuild to index the gallery again with this one"
        )
    if manifest["storage"] != args.storage:
        raise UserError(
            f"the index {args.out} stores {manifest['storage']}; pass "
            f"--storage={manifest['storage']}, or --rebuild to change it"
        )
    return manifest


def build(args) -> dict:
    """Makes or updates the index; returns counts of what it did."""
    import tqdm

    from occreid_jax.bundles import export
    from occreid_jax.bundles import gallery_index as gi
    from occreid_jax.bundles.gallery_search import encoded_embedder
    from occreid_jax.data import image_files
    from occreid_jax.training import workdir_lock

    _check_arguments(args)
    bundle = export.load(args.bundle)
    embed = encoded_embedder(
        bundle, pose=args.pose, pose_net=args.pose_net, batch_size=args.batch_size
    )
    gallery = [os.path.abspath(p) for p in args.gallery]
    listed = image_files.list_images(gallery, "gallery images")
    os.makedirs(args.out, exist_ok=True)
    with workdir_lock.held(args.out, "occreid index", flag="--out"):
        manifest = _start(args, gi.bundle_fingerprint(args.bundle), gallery)
        manifest["gallery"] = gallery
        gi.remove_uncommitted(args.out, manifest)
        gi.write_json(os.path.join(args.out, gi.MANIFEST), manifest)
        index = gi.open_index(args.out)
        counts = {"kept": 0, "new": 0, "changed": 0, "gone": 0, "unreadable": 0}
        todo = []
        for path in listed:
            if path in index.live and gi.same_file(index.stamp(path)):
                counts["kept"] += 1
            elif path in manifest["unreadable"] and gi.same_file(manifest["unreadable"][path]):
                counts["unreadable"] += 1
            else:
                counts["changed" if path in index.live else "new"] += 1
                todo.append(path)
        on_disk = set(listed)
        for path in index.live:
            if path not in on_disk:
                manifest["removed"][path] = len(manifest["chunks"])
                counts["gone"] += 1
        gi.write_json(os.path.join(args.out, gi.MANIFEST), manifest)
        start = time.perf_counter()
        with tqdm.tqdm(total=len(todo), unit="image", desc="index") as bar:
            for s in range(0, len(todo), args.chunk_size):
                paths = todo[s : s + args.chunk_size]
                encoded, kept, skipped = image_files.read_encoded(paths)
                for path in skipped:
                    manifest["unreadable"][path] = gi.file_stamp(path)
                    counts["unreadable"] += 1
                    if path in index.live:  # an indexed image that no longer decodes
                        manifest["removed"][path] = len(manifest["chunks"])
                if kept:
                    for path in kept:  # (readable now)
                        manifest["unreadable"].pop(path, None)
                    features = embed(encoded, kept, "embed")
                    stamps = [gi.file_stamp(p) for p in kept]
                    gi.commit_chunk(args.out, manifest, stamps, features)
                else:
                    gi.write_json(os.path.join(args.out, gi.MANIFEST), manifest)
                bar.update(len(paths))
        counts["seconds"] = time.perf_counter() - start
        counts["live"] = len(gi.open_index(args.out).live)
    return counts


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0, 2 for bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    from occreid_jax.data.image_files import UnreadableImageWarning

    previous = signal.signal(signal.SIGTERM, _interrupt)  # schedulers' stop: as Ctrl-C

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UnreadableImageWarning)
            warnings.showwarning = lambda message, *a, **k: print(
                f"warning: {message}", file=sys.stderr
            )
            counts = build(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: the chunks committed so far are kept; run the same command to "
            f"go on from them ({args.out})",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"index {args.out}: {counts['live']} images ({counts['new']} new, {counts['changed']} "
        f"changed and embedded again, {counts['kept']} kept, {counts['gone']} gone from the "
        f"gallery and dropped, {counts['unreadable']} unreadable and left out); embedding took "
        f"{counts['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
