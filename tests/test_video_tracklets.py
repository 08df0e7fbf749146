"""Tracklets of a static-camera video: a video written here with movers at known positions."""

import os
import re

import cv2
import numpy as np
import pytest

from occreid_jax.config_files import load_config_file
from occreid_jax.data import datasets, video_tracking, video_tracklets
from occreid_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (240, 320)  # height, width
FRAMES = 80
WARMUP = video_tracking.TrackingParams().warmup_frames
# Movers: (color BGR, first frame, last frame, x at frame 0, x speed in px/frame, top row);
# 60 x 24 px. B and C walk towards each other on one row and merge for about frames 41-51;
# D is seen for 10 frames only.
MOVERS = {
    "A": ((40, 40, 220), 0, FRAMES - 1, 10, 3, 30),
    "B": ((40, 200, 40), 0, FRAMES - 1, 10, 3, 150),
    "C": ((220, 60, 40), 0, FRAMES - 1, 286, -3, 150),
    "D": ((200, 40, 200), 30, 39, 180, 2, 20),
}


def true_box(name: str, frame: int) -> np.ndarray | None:
    """Mover `name`'s box (x0, y0, x1, y1) at `frame`, None when it is not in the video."""
    _, first, last, x, speed, top = MOVERS[name]
    if not first <= frame <= last:
        return None
    left = x + speed * frame
    return np.array([left, top, left + 24, top + 60], np.float32)


def _background(rng) -> np.ndarray:
    noise = rng.integers(90, 170, (SIZE[0] // 8, SIZE[1] // 8, 3), dtype=np.uint8)
    image = cv2.resize(noise, SIZE[::-1], interpolation=cv2.INTER_CUBIC)
    cv2.line(image, (0, 120), (SIZE[1], 110), (70, 70, 70), 3)
    return image


def write_video(path, frames: int = FRAMES, movers=MOVERS) -> str:
    """A 10 fps MJPG video: a textured background and striped movers (see MOVERS)."""
    rng = np.random.default_rng(0)
    background = _background(rng)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE[::-1])
    for frame in range(frames):
        image = background.copy()
        for name in movers:
            box = true_box(name, frame)
            if box is not None:
                x0, y0, x1, y1 = box.astype(int)
                image[y0:y1, x0:x1] = MOVERS[name][0]
                image[y0:y1:6, x0:x1] //= 2  # stripes: something to see in a crop
        writer.write(image)
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return write_video(tmp_path_factory.mktemp("video") / "walk.avi")


@pytest.fixture(scope="module")
def tracklets(video):
    return video_tracking.track_video(video)


@pytest.fixture(scope="module")
def built(video, tmp_path_factory):
    """The dataset of the video, built through the registered name as training builds it."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return datasets.prepare("pets2009", "", data_dir, os.path.dirname(video)), data_dir


def _mover_of(tracklet) -> tuple[str, float]:
    """The mover whose true boxes best fit the tracklet, and the worst IoU over its frames."""
    best = None
    for name in MOVERS:
        ious = []
        for frame, box in zip(tracklet.frames, tracklet.boxes, strict=True):
            truth = true_box(name, int(frame))
            ious.append(0.0 if truth is None else video_tracking.iou(box[None], truth[None])[0, 0])
        if best is None or min(ious) > best[1]:
            best = (name, min(ious))
    return best


def test_each_mover_is_followed_and_a_crossing_splits_the_tracklets(tracklets):
    found = [(*_mover_of(t), int(t.frames[0]), int(t.frames[-1])) for t in tracklets]
    # A alone; B and C before and after they merge; D (10 frames) and the merged blob dropped.
    assert sorted(name for name, *_ in found) == ["A", "B", "B", "C", "C"], found
    for name, worst_iou, first, last in found:
        assert worst_iou > 0.75, (name, worst_iou)
        if name == "A":
            assert (first, last) == (WARMUP, FRAMES - 1)
        else:  # one side of the merge (B meets C at about frame 41 and leaves at about 51)
            assert last <= 42 or first >= 50, (name, first, last)
    for tracklet in tracklets:
        assert np.all(np.diff(tracklet.frames) > 0)


def test_a_tracklet_shorter_than_the_minimum_is_dropped(video, tracklets):
    assert all(len(t) >= 20 for t in tracklets)
    params = video_tracking.TrackingParams(min_length=8)
    names = [_mover_of(t)[0] for t in video_tracking.track_video(video, params)]
    assert "D" in names and "D" not in [_mover_of(t)[0] for t in tracklets]


def test_groups_and_cut_off_legs_are_dropped_by_shape():
    params = video_tracking.TrackingParams()

    def walker(foot: float, height: float, width: float) -> video_tracking.Tracklet:
        boxes = np.tile([[100, foot - height, 100 + width, foot]], (20, 1)).astype(np.float32)
        return video_tracking.Tracklet(np.arange(20), boxes)

    # Five people on a ground plane where height = 0.25 * foot row + 20.
    people = [walker(y, 0.25 * y + 20, (0.25 * y + 20) / 2.5) for y in (200, 260, 320, 380, 440)]
    pair = walker(300, 95, 70)  # two people side by side: height / width 1.36
    legs = walker(300, 45, 20)  # only the legs of a 95 px person
    kept = video_tracking.filter_tracklets([*people, pair, legs], params)
    assert [id(t) for t in kept] == [id(t) for t in people]


def test_crops_are_two_to_one_and_padded_black_past_the_border():
    assert video_tracklets.crop_window((100, 50, 120, 110), 0.1) == (92, 44, 128, 116)
    x0, y0, x1, y1 = video_tracklets.crop_window((100, 50, 160, 90), 0.0)  # wider than 1:2
    assert (y1 - y0, x1 - x0) == (120, 60)
    frame = np.full((240, 320, 3), 200, np.uint8)
    crop = video_tracklets.crop_person(frame, (300, 10, 320, 70), (128, 64), 0.1)
    assert crop.shape == (128, 64, 3) and crop.dtype == np.uint8
    assert np.all(crop[40:90, 10:20] == 200) and np.all(crop[40:90, -8:] == 0)


def test_held_out_frames_end_each_tracklet():
    assert [video_tracklets.held_out_count(n, 0.2, 2) for n in (3, 5, 20, 33, 100)] == [
        2,
        2,
        4,
        7,
        20,
    ]
    assert video_tracklets.held_out_count(2, 0.2, 2) == 1  # one frame always stays in train


def test_the_splits_hold_each_tracklet_in_order(built, tracklets):
    builder, _ = built
    splits = {s: datasets.load_split(builder, s) for s in ("train", "query", "gallery")}
    train, query, gallery = splits["train"], splits["query"], splits["gallery"]
    assert len(set(train.pids)) == len(tracklets) == 5
    assert sorted(query.pids) == sorted(set(train.pids)) == list(range(5))
    assert sorted(set(train.labels)) == list(range(5)) and np.all(train.labels == train.pids)
    assert set(query.labels) == set(gallery.labels) == {-1}
    assert set(train.camids) == set(query.camids) == {0} and set(gallery.camids) == {1}
    for pid, tracklet in enumerate(tracklets):
        held = video_tracklets.held_out_count(len(tracklet), 0.2, 2)
        frames = {
            s: [int(f.split("_f")[1][:6]) for f in split.filenames[split.pids == pid]]
            for s, split in splits.items()
        }
        assert len(frames["train"]) == len(tracklet) - held
        assert len(frames["gallery"]) == held - 1 and frames["query"] == [tracklet.frames[-1]]
        assert frames["train"] + frames["gallery"] + frames["query"] == list(tracklet.frames)
    image = cv2.imdecode(np.frombuffer(query.images[0], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (128, 64, 3)
    assert query.filenames[0] == f"0000_c1_f{tracklets[0].frames[-1]:06d}.png"


def test_the_build_is_reused_and_the_command_prints_counts(built, video, tmp_path, capsys):
    builder, data_dir = built
    again = datasets.prepare("pets2009", "", data_dir, video)  # the file itself this time
    assert again.data_dir == builder.data_dir
    sheet = tmp_path / "sheet.png"
    command = ["--video", video, "--data-dir", data_dir, "--sheet", str(sheet)]
    assert video_tracklets.main(command) == 0
    out = capsys.readouterr().out
    assert "tracklets 5:" in out and re.search(r"query +5 images +5 ids", out), out
    assert cv2.imread(str(sheet)).shape == (5 * 128, 8 * 64, 3)


def test_bad_videos_are_one_line_errors(tmp_path):
    missing = tmp_path / "nothing_here"
    with pytest.raises(UserError, match="no video at .*nothing_here") as error:
        datasets.prepare("pets2009", "", str(tmp_path / "tfds"), str(missing))
    broken = tmp_path / "broken" / "vtest.avi"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video" * 100)
    with pytest.raises(UserError, match="OpenCV cannot read a frame of .*vtest.avi") as error2:
        datasets.prepare("pets2009", "", str(tmp_path / "tfds"), str(broken.parent))
    still = write_video(tmp_path / "still.avi", frames=30, movers={})
    with pytest.raises(UserError, match="found no person walking for 20 frames") as error3:
        datasets.prepare("pets2009", "", str(tmp_path / "tfds"), still)
    for e in (error, error2, error3):
        assert "\n" not in str(e.value)
    assert not list((tmp_path / "tfds").glob("**/still*"))  # nothing written
    with pytest.raises(UserError, match="no builder config 'big'"):
        datasets.prepare("pets2009", "big", str(tmp_path / "tfds"), still)


def test_the_config_variants_train_on_the_video_without_ground_truth_pose():
    for model in ("baseline", "mat"):
        module = load_config_file(os.path.join(ROOT, "configs", f"{model}.py"))
        config = module.get_config("pets2009")
        assert config.data.name == "pets2009" and config.data.builder_config == ""
        assert config.pose.source != "ground_truth"
    baseline = load_config_file(os.path.join(ROOT, "configs", "baseline.py"))
    assert tuple(baseline.get_config("pets2009").data.image_size) == (128, 64)
