"""`pets2009`: the people walking in a static-camera video as a dataset of tracklets (tfds).

Made for the PETS 2009 S2L1 view 1 sequence (`vtest.avi`, docs/pets2009.md); any static-camera
video works: `video_tracking.py` finds the walking people and follows them; each kept tracklet
is one identity. Crops are the box enlarged by a margin, widened or heightened to 2:1
(height:width) around its centre, padded black past the image border and resized.

Splits (one camera: frames of the same walk; not a Re-ID benchmark):
    train: each tracklet's frames but its last `held_out` share (at least `min_held_out`),
        camera 0, labels 0..C-1 in pid order.
    query: the last held-out frame of each tracklet, camera 0.
    gallery: the other held-out frames, camera 1 by convention, so that the Re-ID protocol's
        same-camera exclusion keeps them.
Features are those of the real benchmarks (`reid_builders/base.py`): image (PNG), pid (the
tracklet's index by first frame), camid, label (-1 outside train), filename
"PPPP_cC_fFFFFFF.png" (pid, 1-based camera, frame index). With `data.same_camera_pairs` the
sampler pairs two frames of one tracklet (every train image is in camera 0).

The build is written once under `<data_dir>/pets2009/<video name>-<fingerprint>`; the
fingerprint covers the video's path, size and time and every parameter.

    python -m occreid_jax.main --config=configs/baseline.py:pets2009 --workdir=runs/pets \
        --config.data.manual_dir=/data/pets2009          # the folder holding vtest.avi
    python -m occreid_jax.data.video_tracklets --video /data/pets2009/vtest.avi \
        --sheet pets_sheet.png                           # build, print the counts, draw crops
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import time

import cv2
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from occreid_jax.data import video_tracking
from occreid_jax.data.leftovers import remove_incomplete
from occreid_jax.data.reid_builders.base import ReidBuilder
from occreid_jax.errors import OneLineArgumentParser, UserError, int_at_least

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".webm")
DEFAULT_VIDEO = "vtest.avi"  # PETS 2009 S2L1 view 1, as Debian's opencv-doc ships it
SPLITS = ("train", "query", "gallery")


@dataclasses.dataclass(frozen=True)
class DatasetParams:
    """How tracklets become a dataset.

    Attributes:
      tracking: detection and association settings.
      image_size: (height, width) of the stored crops.
      margin: share of the box height added above and below (and of its width each side).
      held_out: share of each tracklet's last frames held out for evaluation.
      min_held_out: least held-out frames per tracklet (one query and the rest gallery).
    """

    tracking: video_tracking.TrackingParams = video_tracking.TrackingParams()
    image_size: tuple[int, int] = (128, 64)
    margin: float = 0.1
    held_out: float = 0.2
    min_held_out: int = 2


@dataclasses.dataclass(frozen=True)
class Example:
    """One crop of the dataset before its pixels are read."""

    pid: int
    frame: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in video pixels
    camid: int

    @property
    def filename(self) -> str:
        return f"{self.pid:04d}_c{self.camid + 1}_f{self.frame:06d}.png"


def crop_window(box, margin: float) -> tuple[int, int, int, int]:
    """The 2:1 (height:width) window around `box` (x0, y0, x1, y1) enlarged by `margin`."""
    x0, y0, x1, y1 = box
    height = max((y1 - y0) * (1 + 2 * margin), 2 * (x1 - x0) * (1 + 2 * margin), 2.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top, left = round(cy - height / 2), round(cx - height / 4)
    return left, top, left + round(height / 2), top + round(height)


def crop_person(frame: np.ndarray, box, size: tuple[int, int], margin: float) -> np.ndarray:
    """The person in `box` of `frame` [H, W, 3], as a [size[0], size[1], 3] crop."""
    x0, y0, x1, y1 = crop_window(box, margin)
    h, w = frame.shape[:2]
    padded = np.zeros((y1 - y0, x1 - x0, 3), frame.dtype)  # black past the image border
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        padded[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    shrink = padded.shape[0] > size[0]
    return cv2.resize(
        padded, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def held_out_count(length: int, share: float, minimum: int) -> int:
    """Frames held out at the end of a tracklet of `length` frames (at least one stays)."""
    return min(length - 1, max(minimum, round(share * length)))


def plan_splits(
    tracklets: list[video_tracking.Tracklet], params: DatasetParams
) -> dict[str, list[Example]]:
    """The examples of every split (see the module docstring), pid = tracklet index."""
    plan: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for pid, tracklet in enumerate(tracklets):
        kept = len(tracklet) - held_out_count(len(tracklet), params.held_out, params.min_held_out)
        for i, (frame, box) in enumerate(zip(tracklet.frames, tracklet.boxes, strict=True)):
            split = "train" if i < kept else "query" if i == len(tracklet) - 1 else "gallery"
            camid = 1 if split == "gallery" else 0
            plan[split].append(Example(pid, int(frame), tuple(map(float, box)), camid))
    return plan


def read_crops(
    path: str, examples: list[Example], params: DatasetParams, progress: bool = False
) -> dict[tuple[int, int], bytes]:
    """PNG bytes of every example's crop, by (pid, frame), in one pass over the video."""
    by_frame: dict[int, list[Example]] = {}
    for example in examples:
        by_frame.setdefault(example.frame, []).append(example)
    crops = {}
    last = max(by_frame) if by_frame else -1
    frames = tqdm.tqdm(
        video_tracking.read_frames(path),
        total=last + 1,
        desc="cropping",
        unit="frame",
        disable=not progress,
        leave=False,
    )
    for index, frame in enumerate(frames):
        for example in by_frame.get(index, []):
            crop = crop_person(frame, example.box, params.image_size, params.margin)
            crops[example.pid, example.frame] = cv2.imencode(".png", crop)[1].tobytes()
        if index >= last:
            break
    return crops


def find_video(manual_dir: str) -> str:
    """The video of `manual_dir`: the file itself, or the folder's vtest.avi or only video."""
    path = os.path.abspath(os.path.expanduser(manual_dir or ""))
    if not manual_dir or not os.path.exists(path):
        raise UserError(
            f"no video at {path if manual_dir else '(data.manual_dir is empty)'}: pass "
            f"--config.data.manual_dir=DIR (or --video) with DIR/{DEFAULT_VIDEO}, the PETS 2009 "
            "S2L1 view 1 sequence of Debian's opencv-doc package (docs/pets2009.md)"
        )
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(path, DEFAULT_VIDEO)):
        return os.path.join(path, DEFAULT_VIDEO)
    videos = sorted(f for f in os.listdir(path) if f.lower().endswith(VIDEO_SUFFIXES))
    if len(videos) != 1:
        found = f"{len(videos)} videos ({', '.join(videos[:3])})" if videos else "no video"
        raise UserError(f"{path} holds {found}: put {DEFAULT_VIDEO} there or pass the file")
    return os.path.join(path, videos[0])


def fingerprint(video: str, params: DatasetParams) -> str:
    """A short hash of the video's path, size and time and of every parameter."""
    stat = os.stat(video)
    key = f"{video}:{stat.st_size}:{stat.st_mtime_ns}:{params!r}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


class VideoTracklets(ReidBuilder, skip_registration=True):
    """People walking in one static-camera video, one identity per tracklet."""

    name = "pets2009"
    TITLE = "PETS 2009 S2L1 tracklets"
    VERSION = tfds.core.Version("1.0.0")
    ENCODING = "png"

    def plan(self, video: str, params: DatasetParams, progress: bool = True) -> None:
        """Tracks the people and crops them (before tfds writes anything).

        Raises:
          UserError: unreadable video, or no tracklet long enough.
        """
        tracklets = video_tracking.track_video(video, params.tracking, progress)
        if not tracklets:
            raise UserError(
                f"found no person walking for {params.tracking.min_length} frames in {video}: "
                "the camera must be static and people "
                f"{params.tracking.min_height}-{params.tracking.max_height} px tall"
            )
        self._splits = plan_splits(tracklets, params)
        examples = [e for split in SPLITS for e in self._splits[split]]
        self._crops = read_crops(video, examples, params, progress)
        self._metadata = {
            "video": video,
            "params": dataclasses.asdict(params),
            "tracklets": [[int(t.frames[0]), int(t.frames[-1]), len(t)] for t in tracklets],
        }

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata.update(summary={}, skipped_images=[], **self._metadata)
        return {split: self._generate(split) for split in SPLITS}

    def _generate(self, split: str):
        examples = self._splits[split]
        pids = sorted({e.pid for e in self._splits["train"]})
        labels = {pid: label for label, pid in enumerate(pids)} if split == "train" else {}
        for key, example in enumerate(examples):
            yield (
                key,
                {
                    "image": self._crops[example.pid, example.frame],
                    "pid": example.pid,
                    "camid": example.camid,
                    "label": labels.get(example.pid, -1),
                    "filename": example.filename,
                },
            )
        self.info.metadata["summary"][split] = {
            "images": len(examples),
            "ids": len({e.pid for e in examples}),
            "cams": len({e.camid for e in examples}),
        }


def prepare(
    manual_dir: str, data_dir: str, params: DatasetParams | None = None, progress: bool = True
) -> VideoTracklets:
    """Builds the dataset of the video in `manual_dir` (a folder or the file) unless built.

    Args:
      manual_dir: the video file, or a folder holding vtest.avi or a single video.
      data_dir: where tfds keeps prepared datasets (expanded already).
      params: crop, split and tracking settings (default `DatasetParams()`).
      progress: progress bars over the frames.
    """
    params = params or DatasetParams()
    video = find_video(manual_dir)
    stem = os.path.splitext(os.path.basename(video))[0]
    where = os.path.join(data_dir, "pets2009", f"{stem}-{fingerprint(video, params)}")
    builder = VideoTracklets(data_dir=where)
    if (builder.data_path / "dataset_info.json").exists():
        return builder
    builder.plan(video, params, progress)
    remove_incomplete(builder)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder


def contact_sheet(builder, num_tracklets: int = 12, columns: int = 8) -> np.ndarray:
    """Crops of the first tracklets, one row each, frames spread over the tracklet (held-out
    frames framed red), [rows * H, columns * W, 3] uint8 RGB."""
    rows: dict[int, list[tuple[int, np.ndarray, bool]]] = {}
    for split in SPLITS:
        for ex in builder.as_dataset(split=split).as_numpy_iterator():
            if int(ex["pid"]) < num_tracklets:
                frame = int(ex["filename"].decode().split("_f")[1].split(".")[0])
                rows.setdefault(int(ex["pid"]), []).append((frame, ex["image"], split != "train"))
    sheet = []
    for pid in sorted(rows):
        cells = sorted(rows[pid], key=lambda c: c[0])
        picked = [cells[i] for i in np.linspace(0, len(cells) - 1, columns).round().astype(int)]
        images = []
        for frame, image, held in picked:
            image = image.copy()
            if held:
                cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), (255, 0, 0))
            cv2.putText(image, str(frame), (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0))
            images.append(image)
        sheet.append(np.concatenate(images, axis=1))
    return np.concatenate(sheet, axis=0)


def main(argv: list[str] | None = None) -> int:
    """Builds the dataset of one video, prints its counts, optionally draws a contact sheet."""
    parser = OneLineArgumentParser(
        prog="python -m occreid_jax.data.video_tracklets",
        description="Build the tracklet dataset of a static-camera video and print its counts.",
    )
    parser.add_argument("--video", required=True, help="the video, or a folder with vtest.avi")
    parser.add_argument("--data-dir", default="", help="tfds data dir (~/tensorflow_datasets)")
    parser.add_argument("--sheet", default="", help="write a contact sheet PNG here")
    parser.add_argument(
        "--sheet-tracklets", type=int_at_least(1, 200), default=12, help="rows of the sheet"
    )
    args = parser.parse_args(argv)
    data_dir = os.path.expanduser(args.data_dir or os.path.join("~", "tensorflow_datasets"))
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # tfds' chatter; stdout is the result
            builder = prepare(args.video, data_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    meta = builder.info.metadata
    lengths = sorted(length for _, _, length in meta["tracklets"])
    print(f"{meta['video']} -> {builder.data_dir} ({time.perf_counter() - start:.1f} s)")
    print(
        f"tracklets {len(lengths)}: {sum(lengths)} frames, length min {lengths[0]} "
        f"median {lengths[len(lengths) // 2]} max {lengths[-1]}"
    )
    for split in SPLITS:
        row = meta["summary"][split]
        print(f"{split:<8} {row['images']:>6} images {row['ids']:>4} ids {row['cams']} camera")
    if args.sheet:
        sheet = contact_sheet(builder, args.sheet_tracklets)
        if not cv2.imwrite(args.sheet, np.ascontiguousarray(sheet[..., ::-1])):
            print(f"error: cannot write {args.sheet}: does its folder exist?", file=sys.stderr)
            return 2
        print(f"wrote {args.sheet} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    # tfds locates a builder by its module's package: run the one imported by name.
    from occreid_jax.data import video_tracklets

    sys.exit(video_tracklets.main())
