"""`synthetic_occluded_reid`: a generated, deterministic occluded Re-ID benchmark (tfds builder).

Nothing is downloaded: every image is drawn by `render.py` from the config's seed, so the same
config gives identical bytes in an identical order on any machine.

Build and read::

    from occreid_jax.data.synthetic import builder as synthetic
    b = synthetic.build("default")  # or "tiny"; data_dir defaults to ~/tensorflow_datasets
    query = b.as_dataset(split="query")  # tf.data.Dataset of feature dicts
    for ex in query.take(1).as_numpy_iterator():
        ex["image"], ex["pid"], ex["keypoints"]

or `tfds.builder("synthetic_occluded_reid/tiny", data_dir=...)` once this module is imported.

Splits (disjoint train and test identities; examples stored in generation order):
    train: every training identity over 2-4 cameras; about 10% of images occluded.
    query: 1-2 occluded images per test identity, all in one camera; each has gallery images
        of the same identity in other cameras.
    gallery: several images per test identity in other cameras, a few in the query camera
        (junk under the standard protocol), plus distractor identities with no query;
        about 10% occluded.
    query_holistic: for each query (same order and length), the same person, camera, pose,
        background and noise rendered without the occluder.

Features:
    image: [H, W, 3] uint8 RGB (PNG).
    pid: int64 person id, unique over the dataset. camid: int64, 0-based camera.
    label: int64, train ids relabelled 0..num_train_ids-1 in sorted-pid order; -1 elsewhere.
    keypoints: [17, 3] float32, COCO order: x, y in continuous pixel coordinates (pixel column
        j covers x in [j, j + 1), so its centre is j + 0.5), visibility 1 if the joint is inside
        the image and not behind the occluder, else 0.
    heatmaps: [H // 4, W // 4, 17] uint8 Gaussians (sigma 1 heatmap pixel, continuous peak 255
        at keypoint / 4, same convention); all zero for invisible joints.
    occluded: bool. occlusion_fraction: float32, fraction of body pixels hidden.
    filename: "split/PPPP_cC_IIII.png" with pid, 1-based camera (Market-1501 style), and the
        image index within the identity.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from occreid_jax.data.leftovers import remove_incomplete
from occreid_jax.data.synthetic import render
from occreid_jax.errors import UserError

_IDENTITY, _CAMERA, _EXAMPLE, _PLAN, _GALLERY_ORDER = 1, 2, 3, 0, 4  # seed-stream tags
SPLITS = ("train", "query", "gallery", "query_holistic")


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticOccludedReidConfig(tfds.core.BuilderConfig):
    """Sizes and randomness of one synthetic benchmark; ranges are inclusive (lo, hi)."""

    image_height: int = 128
    image_width: int = 64
    num_train_ids: int = 150
    num_test_ids: int = 150
    num_distractor_ids: int = 50
    num_cameras: int = 6
    train_images_per_id: tuple[int, int] = (12, 16)
    train_cameras_per_id: tuple[int, int] = (2, 4)
    queries_per_id: tuple[int, int] = (1, 2)
    gallery_cameras_per_id: tuple[int, int] = (2, 3)  # cameras other than the query camera
    gallery_images_per_id: tuple[int, int] = (4, 7)  # in those other cameras
    gallery_same_camera: tuple[int, int] = (0, 2)  # in the query camera (junk)
    distractor_images_per_id: tuple[int, int] = (2, 4)
    train_occluded_ratio: float = 0.1
    gallery_occluded_ratio: float = 0.1
    occluded_fraction: tuple[float, float] = (0.2, 0.6)
    # Render the train images of one identity in one camera as consecutive frames of one walk
    # (`render.render_tracklet`: one view and background window, the walking phase advancing)
    # instead of independent images; the test splits are unchanged.
    tracklets: bool = False
    tracklet_phase_step: tuple[float, float] = (0.3, 0.6)  # radians per frame
    # Every tracklet a side view, so limbs swing in the image plane (`render.render_tracklet`).
    tracklet_side_view: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raises UserError on values the generator cannot honour."""
        if self.image_height % 4 or self.image_width % 4:
            raise UserError(
                f"image size {self.image_height}x{self.image_width}: use multiples of 4"
            )
        if self.num_cameras < self.gallery_cameras_per_id[1] + 1 or self.num_cameras < 2:
            raise UserError(f"num_cameras={self.num_cameras} is too small for the gallery layout")
        lo, hi = self.occluded_fraction
        if not 0.0 < lo < hi < 1.0:
            raise UserError(f"occluded_fraction={self.occluded_fraction}: need 0 < lo < hi < 1")


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What to render for one example; the image itself is drawn from (seed, pid, index)."""

    pid: int
    camid: int
    index: int  # image index within the identity, unique over splits
    occluded: bool
    label: int = -1


def _rng(config: SyntheticOccludedReidConfig, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *keys]))


def _spread(rng: np.random.Generator, n: int, cams: np.ndarray) -> list[int]:
    """n camera ids over `cams`, each camera at least once (needs n >= len(cams))."""
    rest = rng.choice(cams, n - len(cams)) if n > len(cams) else np.array([], int)
    return sorted(int(c) for c in np.concatenate([cams, rest]))


def _between(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _mark_occluded(rng: np.random.Generator, specs: list[ExampleSpec], ratio: float) -> list:
    """Occludes exactly round(ratio * len) examples, chosen at random."""
    chosen = set(rng.permutation(len(specs))[: round(ratio * len(specs))].tolist())
    return [dataclasses.replace(s, occluded=i in chosen) for i, s in enumerate(specs)]


def plan_splits(config: SyntheticOccludedReidConfig) -> dict[str, list[ExampleSpec]]:
    """Lays out identities, cameras and occlusion flags of every split (no rendering)."""
    rng = _rng(config, _PLAN)
    n_ids = config.num_train_ids + config.num_test_ids + config.num_distractor_ids
    pids = rng.permutation(np.arange(1, n_ids + 1))
    train_pids = sorted(int(p) for p in pids[: config.num_train_ids])
    test_pids = sorted(
        int(p) for p in pids[config.num_train_ids : n_ids - config.num_distractor_ids]
    )
    distractors = sorted(int(p) for p in pids[n_ids - config.num_distractor_ids :])
    cams = np.arange(config.num_cameras)

    train = []
    for label, pid in enumerate(train_pids):
        own = rng.choice(cams, _between(rng, config.train_cameras_per_id), replace=False)
        n = max(_between(rng, config.train_images_per_id), len(own))
        train += [ExampleSpec(pid, c, i, False, label) for i, c in enumerate(_spread(rng, n, own))]
    train = [train[i] for i in rng.permutation(len(train))]

    query, gallery = [], []
    for pid in test_pids:
        qcam = int(rng.integers(config.num_cameras))
        others = rng.choice(
            np.delete(cams, qcam), _between(rng, config.gallery_cameras_per_id), replace=False
        )
        n = max(_between(rng, config.gallery_images_per_id), len(others))
        gcams = _spread(rng, n, others) + [qcam] * _between(rng, config.gallery_same_camera)
        gallery += [ExampleSpec(pid, c, i, False) for i, c in enumerate(gcams)]
        nq = _between(rng, config.queries_per_id)
        query += [ExampleSpec(pid, qcam, len(gcams) + i, True) for i in range(nq)]
    for pid in distractors:
        n = _between(rng, config.distractor_images_per_id)
        gallery += [
            ExampleSpec(pid, int(rng.integers(config.num_cameras)), i, False) for i in range(n)
        ]
    train = _mark_occluded(rng, train, config.train_occluded_ratio)  # draws in the old order
    gallery = _mark_occluded(rng, gallery, config.gallery_occluded_ratio)
    # Stored in a shuffled order (not in the papers; real datasets store files sorted by name):
    # nothing may leak the identities through the storage order (see evaluation/ties.py).
    gallery = [gallery[i] for i in _rng(config, _GALLERY_ORDER).permutation(len(gallery))]
    return {
        "train": train,
        "query": query,
        "gallery": gallery,
        "query_holistic": [dataclasses.replace(s, occluded=False) for s in query],
    }


class SyntheticOccludedReid(tfds.core.GeneratorBasedBuilder):
    """Synthetic occluded person Re-ID benchmark, generated from a seed (see module docstring)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "The gallery is stored shuffled."}
    BUILDER_CONFIGS = [
        SyntheticOccludedReidConfig(name="default", description="~150 train / 150 test ids."),
        SyntheticOccludedReidConfig(
            name="tracklets",
            description="default, with each identity's train images in a camera one tracklet.",
            tracklets=True,
        ),
        SyntheticOccludedReidConfig(
            name="tracklets_wide",
            description="tracklets, with larger steps of the walking phase between frames.",
            tracklets=True,
            tracklet_phase_step=(0.8, 1.6),
        ),
        SyntheticOccludedReidConfig(
            name="tracklets_side",
            description="tracklets_wide, every tracklet seen from the side (limbs swing in view).",
            tracklets=True,
            tracklet_phase_step=(0.8, 1.6),
            tracklet_side_view=True,
        ),
        SyntheticOccludedReidConfig(
            name="tracklets_side_far",
            description="tracklets_side, twice its walking-phase steps (to half a walking cycle).",
            tracklets=True,
            tracklet_phase_step=(1.6, 3.1),
            tracklet_side_view=True,
        ),
        SyntheticOccludedReidConfig(
            name="tiny",
            description="A few ids, for tests.",
            num_train_ids=8,
            num_test_ids=8,
            num_distractor_ids=3,
            num_cameras=4,
            train_images_per_id=(5, 7),
            train_cameras_per_id=(2, 3),
            gallery_images_per_id=(2, 4),
            gallery_cameras_per_id=(1, 2),
            gallery_same_camera=(0, 1),
            distractor_images_per_id=(1, 2),
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file; tfds 4.9.10 finds it with `importlib_resources`, which it does not install."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        h, w = cfg.image_height, cfg.image_width
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
                    "pid": np.int64,
                    "camid": np.int64,
                    "label": np.int64,
                    "keypoints": tfds.features.Tensor(shape=(17, 3), dtype=np.float32),
                    "heatmaps": tfds.features.Tensor(shape=(h // 4, w // 4, 17), dtype=np.uint8),
                    "occluded": np.bool_,
                    "occlusion_fraction": np.float32,
                    "filename": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,  # keeps query and query_holistic aligned
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        self.builder_config.validate()
        plan = plan_splits(self.builder_config)
        return {name: self._generate_examples(name, plan[name]) for name in SPLITS}

    def _generate_examples(self, split: str, specs: list[ExampleSpec]):
        cfg = self.builder_config
        h, w = cfg.image_height, cfg.image_width
        cameras = [
            render.sample_camera(_rng(cfg, _CAMERA, c), h, w) for c in range(cfg.num_cameras)
        ]
        holistic = split == "query_holistic"
        frames = {}
        if cfg.tracklets and split == "train":
            frames = _render_tracklets(cfg, specs, cameras)
        for key, s in enumerate(specs):
            identity = render.sample_identity(_rng(cfg, _IDENTITY, s.pid))
            occluded = s.occluded or holistic  # the twin consumes the same random draws
            if frames:
                out = frames[(s.pid, s.index)]
            else:
                out = render.render_example(
                    _rng(cfg, _EXAMPLE, s.pid, s.index),
                    identity,
                    cameras[s.camid],
                    h,
                    w,
                    occluded,
                    tuple(cfg.occluded_fraction),
                )
            image, kp = out.image, out.keypoints
            if holistic:
                image, kp = out.holistic_image, out.holistic_keypoints
            yield (
                key,
                {
                    "image": image,
                    "pid": s.pid,
                    "camid": s.camid,
                    "label": s.label,
                    "keypoints": kp,
                    "heatmaps": render.keypoint_heatmaps(kp, h, w),
                    "occluded": out.occluded and not holistic,
                    "occlusion_fraction": 0.0 if holistic else out.occlusion_fraction,
                    "filename": f"{split}/{s.pid:04d}_c{s.camid + 1}_{s.index:04d}.png",
                },
            )


def _render_tracklets(
    cfg: SyntheticOccludedReidConfig, specs: list[ExampleSpec], cameras: list
) -> dict[tuple[int, int], render.Rendered]:
    """(pid, index) -> frame: each identity's examples in one camera rendered as one tracklet,
    frames in the order of their image indices, from the seed of the first index."""
    walks: dict[tuple[int, int], list[ExampleSpec]] = {}
    for s in specs:
        walks.setdefault((s.pid, s.camid), []).append(s)
    frames = {}
    for (pid, camid), members in walks.items():
        members = sorted(members, key=lambda s: s.index)
        rendered = render.render_tracklet(
            _rng(cfg, _EXAMPLE, pid, members[0].index),
            render.sample_identity(_rng(cfg, _IDENTITY, pid)),
            cameras[camid],
            cfg.image_height,
            cfg.image_width,
            [s.occluded for s in members],
            tuple(cfg.occluded_fraction),
            tuple(cfg.tracklet_phase_step),
            side_view=cfg.tracklet_side_view,
        )
        frames.update({(pid, s.index): out for s, out in zip(members, rendered, strict=True)})
    return frames


def build(
    config_name: str | SyntheticOccludedReidConfig = "default", data_dir: str | None = None
) -> SyntheticOccludedReid:
    """Generates the dataset if needed (offline, with progress bars) and returns its builder.

    Args:
        config_name: "default", "tiny", or a custom `SyntheticOccludedReidConfig` (give it a new
            name: a prepared dataset is reused by name and version).
        data_dir: where to write; defaults to ~/tensorflow_datasets.
    """
    tfds.core.utils.gcs_utils._is_gcs_disabled = True  # never probe the TFDS bucket
    data_dir = data_dir or os.path.expanduser(os.path.join("~", "tensorflow_datasets"))
    b = SyntheticOccludedReid(config=config_name, data_dir=data_dir)
    remove_incomplete(b)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return b
