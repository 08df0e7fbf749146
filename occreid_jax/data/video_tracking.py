"""People in a static-camera video as tracklets: background subtraction, blobs, IoU tracking.

The background is the per-pixel median of frames sampled over the whole video (people walk
on, so the median is the empty scene); it seeds OpenCV's MOG2 subtractor, which then follows
slow light changes. Each frame's foreground (MOG2's shadow pixels dropped) is cleaned by a
morphological opening and closing; its connected components whose height, height / width
and area fit a person are the detections. Detections join tracklets frame to frame by
optimal assignment (Hungarian) on the IoU with each tracklet's box moved by its recent
velocity. A tracklet ends when it has gone unmatched for `max_missed` frames, when its blob
merges with another tracklet's or splits in two (people crossing; a merged blob starts a
tracklet that is never kept), or when its blob suddenly grows or shrinks by `max_growth`
(someone joined or left it). Tracklets shorter than `min_length` matched frames are dropped,
and so are those that are not one whole person: a median height / width below
`min_track_aspect` (people walking side by side, cars), or a median height below
`min_height_ratio` of what the ground plane predicts at the tracklet's feet (legs seen under
a sign). The plane's person height, linear in the row of the feet, is fitted robustly
(Theil-Sen) to the tracklets' medians once there are `ground_fit_tracklets` of them.

    tracklets = track_video("vtest.avi", TrackingParams(), progress=True)
    tracklets[0].frames, tracklets[0].boxes  # [T] frame indices, [T, 4] (x0, y0, x1, y1)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import cv2
import numpy as np
import tqdm
from scipy import optimize, stats

from occreid_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    """Detection and association settings; the defaults suit 40-200 px tall people.

    Attributes:
      min_height, max_height: blob height range in pixels.
      min_aspect, max_aspect: blob height / width range.
      min_area: least foreground pixels in a blob.
      background_frames: frames sampled for the median background (0: MOG2 learns it alone).
      warmup_frames: first frames only fed to the subtractor, never detected in.
      var_threshold: MOG2's squared Mahalanobis distance for foreground.
      learning_rate: MOG2's background update per frame once seeded by the median (slow, so
        that a person standing for a few seconds stays foreground); -1: MOG2's own schedule.
      open_size, close_size: (width, height) of the elliptic opening (removes specks) and of
        the closing (joins a person's head, body and legs) kernels.
      min_iou: least IoU of a detection with a tracklet's predicted box to extend it.
      max_missed: frames a tracklet may go unmatched before it ends.
      max_growth: a detection whose area differs from the tracklet's recent median by more
        than this factor (either way) ends the tracklet instead of extending it.
      min_length: least matched frames of a kept tracklet.
      min_track_aspect: least median height / width of a kept tracklet.
      min_height_ratio: least median height of a kept tracklet, as a share of the fitted
        ground-plane height at its feet.
      ground_fit_tracklets: least tracklets to fit the ground plane (fewer: no height filter).
    """

    min_height: int = 40
    max_height: int = 200
    min_aspect: float = 1.2
    max_aspect: float = 5.0
    min_area: int = 300
    background_frames: int = 25
    warmup_frames: int = 5
    var_threshold: float = 25.0
    learning_rate: float = 0.005
    open_size: tuple[int, int] = (3, 3)
    close_size: tuple[int, int] = (7, 15)
    min_iou: float = 0.3
    max_missed: int = 3
    max_growth: float = 1.6
    min_length: int = 20
    min_track_aspect: float = 1.8
    min_height_ratio: float = 0.75
    ground_fit_tracklets: int = 5


@dataclasses.dataclass
class Tracklet:
    """One person's matched frames.

    Attributes:
      frames: [T] int frame indices, increasing (gaps where the person went unmatched).
      boxes: [T, 4] float32 boxes (x0, y0, x1, y1) in pixels, x1 and y1 exclusive.
    """

    frames: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def open_video(path: str) -> cv2.VideoCapture:
    """An opened capture of `path`; one-line UserError when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise UserError(
            f"video {path} does not exist; pass the path of a video file (e.g. PETS 2009's "
            "vtest.avi, docs/pets2009.md says where to get it)"
        )
    capture = cv2.VideoCapture(path)
    readable = capture.isOpened() and capture.read()[0]
    capture.release()
    if not readable:
        raise UserError(
            f"OpenCV cannot read a frame of {path}: convert it to an AVI (MJPG) or MP4 video"
        )
    return cv2.VideoCapture(path)  # from the first frame again (seeking is not exact)


def read_frames(path: str) -> Iterator[np.ndarray]:
    """Yields every frame of the video, [H, W, 3] uint8 BGR (OpenCV's order)."""
    capture = open_video(path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def frame_count(path: str) -> int:
    """The frame count the container states (0 when it states none)."""
    capture = open_video(path)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return max(count, 0)


def median_background(path: str, samples: int) -> np.ndarray:
    """Per-pixel median of `samples` frames spread evenly over the video, [H, W, 3] uint8."""
    total = frame_count(path)
    step = max(1, total // samples) if total else 1
    picked = [f for i, f in enumerate(read_frames(path)) if i % step == 0][:samples]
    return np.median(np.stack(picked), axis=0).astype(np.uint8)


def _kernel(size: tuple[int, int]) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, tuple(size))


def foreground(subtractor, frame: np.ndarray, params: TrackingParams) -> np.ndarray:
    """Cleaned foreground of one frame, [H, W] uint8 (255 or 0), shadows dropped."""
    rate = params.learning_rate if params.background_frames else -1.0
    mask = subtractor.apply(frame, learningRate=rate)
    mask = np.where(mask == 255, 255, 0).astype(np.uint8)  # MOG2 marks shadows 127
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(params.open_size))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(params.close_size))


def find_people(mask: np.ndarray, params: TrackingParams) -> np.ndarray:
    """Boxes of the person-sized blobs of a foreground mask [H, W], [N, 4] float32."""
    count, _, blobs, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x, y, w, h, area = (blobs[1:count, i] for i in range(5))  # label 0 is the background
    aspect = h / np.maximum(w, 1)
    keep = (
        (h >= params.min_height)
        & (h <= params.max_height)
        & (aspect >= params.min_aspect)
        & (aspect <= params.max_aspect)
        & (area >= params.min_area)
    )
    return np.stack([x, y, x + w, y + h], axis=1)[keep].astype(np.float32).reshape(-1, 4)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of boxes a [N, 4] and b [M, 4], [N, M]."""
    a, b = a[:, None, :], b[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    return w * h


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1), [N, M]."""
    inter = _intersection(a, b)
    return inter / np.maximum(_areas(a)[:, None] + _areas(b)[None, :] - inter, 1e-9)


class _Track:
    """A tracklet being built: matched frames and boxes, frames since the last match, and
    whether it began as a blob of several people (never kept)."""

    def __init__(self, frame: int, box: np.ndarray, merged: bool = False):
        self.frames, self.boxes, self.missed, self.merged = [frame], [box], 0, merged

    def predicted(self, frame: int) -> np.ndarray:
        """The last box moved by the mean velocity over the last (up to) 5 matches."""
        if len(self.frames) < 2:
            return self.boxes[-1]
        first = max(0, len(self.frames) - 5)
        span = self.frames[-1] - self.frames[first]
        velocity = (self.boxes[-1] - self.boxes[first]) / span
        return self.boxes[-1] + velocity * (frame - self.frames[-1])

    def fits(self, box: np.ndarray, max_growth: float) -> bool:
        """Whether `box` is about the size of the recent boxes (not a merged or split blob)."""
        recent = float(np.median(_areas(np.stack(self.boxes[-5:]))))
        ratio = float(_areas(box[None])[0]) / max(recent, 1e-9)
        return 1 / max_growth <= ratio <= max_growth

    def finish(self) -> Tracklet:
        return Tracklet(np.asarray(self.frames, np.int64), np.stack(self.boxes).astype(np.float32))


class Tracker:
    """Joins per-frame detections into tracklets (see the module docstring).

    Besides the Hungarian matching on IoU: a detection covering half or more of the predicted
    boxes of two tracklets or more is a merge (they end; the blob starts a tracklet that is
    never kept), and a tracklet whose predicted box holds half or more of two detections or
    more is a split (it ends; the detections start tracklets).
    """

    def __init__(self, params: TrackingParams):
        self.params = params
        self._active: list[_Track] = []
        self._done: list[Tracklet] = []

    def _end(self, track: _Track) -> None:
        if len(track.frames) >= self.params.min_length and not track.merged:
            self._done.append(track.finish())

    def update(self, frame: int, boxes: np.ndarray) -> None:
        """Adds the detections [N, 4] of frame `frame` (frames in increasing order)."""
        p, tracks = self.params, self._active
        ended, matched = np.zeros(len(tracks), bool), np.zeros(len(tracks), bool)
        used, merged = np.zeros(len(boxes), bool), np.zeros(len(boxes), bool)
        if tracks and len(boxes):
            predicted = np.stack([t.predicted(frame) for t in tracks])
            inter = _intersection(predicted, boxes)
            covers = inter >= 0.5 * _areas(predicted)[:, None]  # [T, N]
            holds = inter >= 0.5 * _areas(boxes)[None, :]
            merged = covers.sum(axis=0) >= 2
            ended = covers[:, merged].any(axis=1) | (holds.sum(axis=1) >= 2)
            overlap = iou(predicted, boxes)
            overlap[ended] = 0.0
            overlap[:, merged] = 0.0
            for r, c in zip(*optimize.linear_sum_assignment(-overlap), strict=True):
                if overlap[r, c] < p.min_iou:
                    continue
                matched[r] = True
                if tracks[r].fits(boxes[c], p.max_growth):
                    tracks[r].frames.append(frame)
                    tracks[r].boxes.append(boxes[c])
                    tracks[r].missed, used[c] = 0, True
                else:  # the blob grew (someone joined it) or shrank at once: start afresh
                    ended[r] = True
                    merged[c] = _areas(boxes[c : c + 1])[0] > _areas(predicted[r : r + 1])[0]
        self._active = []
        for track, end, hit in zip(tracks, ended, matched, strict=True):
            track.missed = 0 if hit else track.missed + 1
            if end or track.missed > p.max_missed:
                self._end(track)
            else:
                self._active.append(track)
        for box, extends, several in zip(boxes, used, merged, strict=True):
            if not extends:
                self._active.append(_Track(frame, box, bool(several)))

    def finish(self) -> list[Tracklet]:
        """Every kept tracklet (at least `min_length` frames), ordered by first frame."""
        for track in self._active:
            self._end(track)
        self._active = []
        return sorted(self._done, key=lambda t: (int(t.frames[0]), float(t.boxes[0, 0])))


def filter_tracklets(tracklets: list[Tracklet], params: TrackingParams) -> list[Tracklet]:
    """The tracklets that look like one whole person (see the module docstring)."""
    if not tracklets:
        return []
    boxes = [t.boxes for t in tracklets]
    heights = np.array([np.median(b[:, 3] - b[:, 1]) for b in boxes])
    aspects = np.array([np.median((b[:, 3] - b[:, 1]) / (b[:, 2] - b[:, 0])) for b in boxes])
    feet = np.array([np.median(b[:, 3]) for b in boxes])
    keep = aspects >= params.min_track_aspect
    if keep.sum() >= params.ground_fit_tracklets:
        slope, intercept = stats.theilslopes(heights[keep], feet[keep])[:2]
        keep &= heights >= params.min_height_ratio * (intercept + slope * feet)
    return [t for t, k in zip(tracklets, keep, strict=True) if k]


def track_video(
    path: str, params: TrackingParams | None = None, progress: bool = False
) -> list[Tracklet]:
    """Tracklets of the people walking in a static-camera video.

    Args:
      path: a video file OpenCV reads.
      params: detection and association settings (default `TrackingParams()`).
      progress: a progress bar over the frames.
    Returns:
      the kept tracklets, ordered by first frame.
    Raises:
      UserError: the video is missing or unreadable.
    """
    params = params or TrackingParams()
    subtractor = cv2.createBackgroundSubtractorMOG2(
        varThreshold=params.var_threshold, detectShadows=True
    )
    if params.background_frames:
        subtractor.apply(median_background(path, params.background_frames), learningRate=1.0)
    tracker = Tracker(params)
    frames = tqdm.tqdm(
        read_frames(path),
        total=frame_count(path) or None,
        desc="tracking",
        unit="frame",
        disable=not progress,
        leave=False,
    )
    for index, frame in enumerate(frames):
        mask = foreground(subtractor, frame, params)
        if index >= params.warmup_frames:
            tracker.update(index, find_people(mask, params))
    return filter_tracklets(tracker.finish(), params)
