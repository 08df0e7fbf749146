"""Search your own gallery folder with an export bundle.

    python -m occreid_jax.search --bundle=runs/demo/export --query=my_queries \
        --gallery=my_gallery --top-k=10 --out=runs/demo/search

or, against a gallery embedded once by `occreid index` (`occreid_jax/index.py`), in place of
--gallery: --index=my_gallery.index (the same ranked lists; features.npz then holds the
queries' features only).

PATH (for --query and --gallery) is a folder, searched recursively, or image files (jpg, png,
bmp, tif; any size: resized as the bundle's evaluation resizes). Pose-guided bundles (Pirt) need
--pose=pose_hrnet_w48_256x192.pth (a COCO HRNet checkpoint, converted on the fly) unless they
were exported with their pose net (`bundle_pose.py`). Writes

    OUT/ranks.csv      query,rank,gallery,distance (rank 1 = nearest)
    OUT/features.npz   query_paths, gallery_paths, query_features / gallery_features (the global
                       feature) and every embedding as query_<name> / gallery_<name>
    OUT/NNNNN_*.png    per query: the query, then its top-k with their distances
    OUT/index.html     all of them on one page

Unreadable images are skipped with a warning and counted. Bad input: one line on stderr, exit
status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from occreid_jax.errors import (  # noqa: E402
    OneLineArgumentParser,
    UserError,
    check_writable,
    int_at_least,
    positive_float,
)

POSE_NET_NAMES = ("hrnet_w48", "hrnet_w32")  # training.pose.POSE_NETS (not imported: slow)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m occreid_jax.search",
        description="Rank a gallery of image files for each query image with an export bundle.",
    )
    parser.add_argument("--bundle", required=True, help="export folder (--mode=export)")
    parser.add_argument("--query", required=True, nargs="+", help="query folder or images")
    parser.add_argument("--gallery", nargs="+", help="gallery folder or images")
    parser.add_argument("--index", default="", help="a gallery index (occreid index)")
    parser.add_argument("--top-k", type=int_at_least(1), default=10, help="matches per query (10)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pose", default="", help="COCO HRNet checkpoint (pose-guided models)")
    parser.add_argument("--pose-net", default="hrnet_w48", choices=POSE_NET_NAMES)
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=32, help="images per step (32)"
    )
    parser.add_argument(
        "--memory-mib", type=positive_float, default=256.0, help="ranking memory (256)"
    )
    return parser


def write_results(out_dir: str, result, image_size: tuple[int, int], matching) -> str:
    """Writes ranks.csv, features.npz, one PNG per query and index.html; returns the page."""
    import numpy as np

    from occreid_jax.bundles import atomic
    from occreid_jax.data.image_files import decode_rgb
    from occreid_jax.pictures import rank_pictures

    os.makedirs(out_dir, exist_ok=True)
    earlier = _earlier_pictures(out_dir)
    query, gallery = result.query, result.gallery
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["query", "rank", "gallery", "distance"])
    for q, (row, dists) in enumerate(zip(result.indices, result.distances, strict=True)):
        for rank, (g, d) in enumerate(zip(row, dists, strict=True), 1):
            writer.writerow([query.paths[q], rank, gallery.paths[g], f"{d:.6g}"])
    atomic.write_file(os.path.join(out_dir, "ranks.csv"), table.getvalue())
    arrays = {"query_paths": np.asarray(query.paths), "gallery_paths": np.asarray(gallery.paths)}
    for prefix, images in (("query", query), ("gallery", gallery)):
        if not images.features:  # a gallery index: its features stay in the index
            continue
        arrays[f"{prefix}_features"] = matching.global_feature(images.features)
        arrays.update({f"{prefix}_{k}": v for k, v in images.features.items()})
    atomic.write_npz(os.path.join(out_dir, "features.npz"), arrays)
    entries = []
    for q, (row, dists) in enumerate(zip(result.indices, result.distances, strict=True)):
        strip = rank_pictures.ranked_strip(
            decode_rgb(query.encoded[q], image_size),
            [decode_rgb(gallery.encoded[g], image_size) for g in row],
            [(f"#{r} {d:.3f}", _short(gallery.paths[g])) for r, (g, d) in enumerate(
                zip(row, dists, strict=True), 1)],
            query_caption=("query", _short(query.paths[q])),
        )  # fmt: skip
        name = rank_pictures.picture_name(q, query.paths[q])
        rank_pictures.write_png(os.path.join(out_dir, name), strip)
        entries.append((name, query.paths[q]))
    stale = sorted(set(earlier) - {name for name, _ in entries})
    for name in stale:
        os.remove(os.path.join(out_dir, name))
    if earlier:
        print(
            f"note: {out_dir} held an earlier search: replaced ({len(stale)} of its pictures "
            "not in this one removed)",
            file=sys.stderr,
        )
    skipped = len(query.skipped) + len(gallery.skipped)
    note = f"{len(query.paths)} queries, {len(gallery.paths)} gallery images"
    note += f", {skipped} unreadable images skipped" if skipped else ""
    return rank_pictures.write_index(out_dir, "occreid_jax search", entries, note)


def _earlier_pictures(out_dir: str) -> list[str]:
    """The query pictures of an earlier search in `out_dir` (when its ranks.csv is there)."""
    if not os.path.isfile(os.path.join(out_dir, "ranks.csv")):
        return []
    return [n for n in os.listdir(out_dir) if re.fullmatch(r"\d{5}_.*\.png", n)]


def _short(path: str, width: int = 10) -> str:
    """The file name without extension, its end kept when too long for a caption."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # drawable
    return stem if len(stem) <= width else ".." + stem[2 - width :]


def _search_index(args, bundle, options: dict):
    """The `SearchResult` of the queries against a gallery index (the gallery's features stay
    in the index; only the images shown are read)."""
    import numpy as np

    from occreid_jax import families
    from occreid_jax.bundles import gallery_search, index_search
    from occreid_jax.data import image_files

    gallery = index_search.open_gallery(args.index, args.bundle)
    if gallery.left_out:
        print(
            f"warning: {len(gallery.left_out)} gallery images are not in the index (e.g. "
            f"{gallery.left_out[0]}): not searched; run occreid index --out={args.index} to add "
            "them",
            file=sys.stderr,
        )
    query = gallery_search.embed_files(bundle, args.query, what="query images", **options)
    matching = families.get(bundle.model_name).matching
    indices, distances = index_search.index_top_k(
        gallery, matching, bundle.matching, query.features, args.top_k, args.memory_mib
    )
    encoded = np.empty(len(gallery.paths), dtype=object)
    for g in np.unique(indices):  # (checked unchanged since indexed: they decode)
        encoded[g] = image_files.read_encoded([gallery.paths[g]])[0][0]
    images = gallery_search.EmbeddedImages({}, gallery.paths, [], encoded)
    return gallery_search.SearchResult(query, images, indices, distances)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0, or 2 for bad input)."""
    args = _parser().parse_args(argv)
    from occreid_jax import families
    from occreid_jax.bundles import bundle_pose, export
    from occreid_jax.data.image_files import UnreadableImageWarning

    try:
        if args.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {args.top_k}")
        if bool(args.gallery) == bool(args.index):
            raise UserError("pass the gallery as --gallery=FOLDER or as --index=INDEX, not both")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UserError(f"--out={args.out} is a file; pass a folder for the results")
        check_writable(args.out, "--out")  # before any image is embedded
        bundle = export.load(args.bundle)
        pose = args.pose or bundle_pose.find(args.bundle)  # a pose net stored in the bundle
        with warnings.catch_warnings():
            warnings.simplefilter("always", UnreadableImageWarning)
            warnings.showwarning = lambda message, *a, **k: print(
                f"warning: {message}", file=sys.stderr
            )
            options = {"pose": pose, "pose_net": args.pose_net, "batch_size": args.batch_size}
            if args.index:
                result = _search_index(args, bundle, options)
            else:
                result = bundle.search(
                    args.query, args.gallery, args.top_k, memory_mib=args.memory_mib, **options
                )
        matching = families.get(bundle.model_name).matching
        page = write_results(args.out, result, bundle.image_size, matching)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = len(result.query.skipped) + len(result.gallery.skipped)
    if skipped:
        print(f"skipped unreadable images: {skipped}", file=sys.stderr)
    print(f"ranks: {os.path.join(args.out, 'ranks.csv')}")
    print(f"page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
