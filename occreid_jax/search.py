"""Search your own gallery folder with an export bundle.

    python -m occreid_jax.search --bundle=runs/demo/export --query=my_queries \
        --gallery=my_gallery --top-k=10 --out=runs/demo/search

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
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from occreid_jax.errors import OneLineArgumentParser, UserError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m occreid_jax.search",
        description="Rank a gallery of image files for each query image with an export bundle.",
    )
    parser.add_argument("--bundle", required=True, help="export folder (--mode=export)")
    parser.add_argument("--query", required=True, nargs="+", help="query folder or images")
    parser.add_argument("--gallery", required=True, nargs="+", help="gallery folder or images")
    parser.add_argument("--top-k", type=int, default=10, help="matches per query (10)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pose", default="", help="COCO HRNet checkpoint (pose-guided models)")
    parser.add_argument("--pose-net", default="hrnet_w48", help="hrnet_w48 or hrnet_w32")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (32)")
    parser.add_argument("--memory-mib", type=float, default=256.0, help="ranking memory (256)")
    return parser


def write_results(out_dir: str, result, image_size: tuple[int, int], matching) -> str:
    """Writes ranks.csv, features.npz, one PNG per query and index.html; returns the page."""
    import numpy as np

    from occreid_jax.bundles import atomic
    from occreid_jax.data.image_files import decode_rgb
    from occreid_jax.pictures import rank_pictures

    os.makedirs(out_dir, exist_ok=True)
    query, gallery = result.query, result.gallery
    with open(os.path.join(out_dir, "ranks.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "gallery", "distance"])
        for q, (row, dists) in enumerate(zip(result.indices, result.distances, strict=True)):
            for rank, (g, d) in enumerate(zip(row, dists, strict=True), 1):
                writer.writerow([query.paths[q], rank, gallery.paths[g], f"{d:.6g}"])
    arrays = {"query_paths": np.asarray(query.paths), "gallery_paths": np.asarray(gallery.paths)}
    for prefix, images in (("query", query), ("gallery", gallery)):
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
    skipped = len(query.skipped) + len(gallery.skipped)
    note = f"{len(query.paths)} queries, {len(gallery.paths)} gallery images"
    note += f", {skipped} unreadable images skipped" if skipped else ""
    return rank_pictures.write_index(out_dir, "occreid_jax search", entries, note)


def _short(path: str, width: int = 10) -> str:
    """The file name without extension, its end kept when too long for a caption."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if len(stem) <= width else ".." + stem[2 - width :]


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0, or 2 for bad input)."""
    args = _parser().parse_args(argv)
    from occreid_jax import families
    from occreid_jax.bundles import bundle_pose, export
    from occreid_jax.data.image_files import UnreadableImageWarning

    try:
        if args.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {args.top_k}")
        bundle = export.load(args.bundle)
        pose = args.pose or bundle_pose.find(args.bundle)  # a pose net stored in the bundle
        with warnings.catch_warnings():
            warnings.simplefilter("always", UnreadableImageWarning)
            warnings.showwarning = lambda message, *a, **k: print(
                f"warning: {message}", file=sys.stderr
            )
            result = bundle.search(
                args.query, args.gallery, args.top_k, pose=pose, pose_net=args.pose_net,
                batch_size=args.batch_size, memory_mib=args.memory_mib,
            )  # fmt: skip
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
