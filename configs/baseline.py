"""Baseline Re-ID model: ResNet backbone, global average pooling, BNNeck, bias-free classifier.

The defaults are the training settings the Pirt authors released (docs/pirt-released-code.md),
which is also how their Table 3 "baseline" row was trained: ResNet-50-IBN-a, 384 x 128,
P=16 x K=4, Adam 3.5e-4 with torch-style coupled weight decay 5e-4, 60 epochs, 10 warm-up
epochs from factor 0.01, flat to epoch 30, cosine to 1e-6 at epoch 60, CE with label
smoothing 0.1 plus soft-margin batch-hard triplet.

Usage (the variant after ":" picks the dataset and size):

  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo
  python -m occreid_jax.main --config=configs/baseline.py:occluded_duke --workdir=runs/od \
      --config.data.manual_dir=/data/Occluded_Duke
  # Cross-dataset protocol: train on Market-1501, test on Occluded-REID.
  python -m occreid_jax.main --config=configs/baseline.py:occluded_reid --workdir=runs/oreid \
      --config.data.manual_dir=/data/Market-1501-v15.09.15 \
      --config.data.test_manual_dir=/data/Occluded_REID
  python -m occreid_jax.main --config=configs/baseline.py:synthetic --workdir=runs/demo \
      --config.train.epochs=4 --config.data.batch_size=32
  # The people walking in PETS 2009 S2L1 (vtest.avi, docs/pets2009.md), one per tracklet:
  python -m occreid_jax.main --config=configs/baseline.py:pets2009 --workdir=runs/pets \
      --config.data.manual_dir=/data/pets2009
  # A smoke run in seconds (4 steps at 64 x 32; what the tests train):
  python -m occreid_jax.main --config=configs/baseline.py:synthetic,size=tiny --workdir=runs/t

Variants: synthetic (the built-in benchmark, sized for a 2-core CPU); occluded_duke,
market1501, dukemtmc, msmt17 (train and test on that dataset); occluded_reid, partial_reid,
partial_ilids (test-only sets: the standard cross-dataset protocol trains on Market-1501);
pets2009 (tracklets of one static-camera video, sized as synthetic; one camera, not a Re-ID
benchmark). Real datasets are read from the user's copy (data.manual_dir) and prepared on
first use.
"""

import ml_collections

from occreid_jax.config_files import parse_arg
from occreid_jax.data.datasets import REAL_DATASETS, TEST_ONLY_DATASETS

VARIANTS = ("synthetic",) + REAL_DATASETS + ("pets2009",)
# size=tiny: the smallest real run (tests and smoke runs), synthetic variant only.
SIZES = ("full", "tiny")


def parse(arg: str, config_file: str = "configs/baseline.py") -> tuple[str, str]:
    """(variant, size) of a config argument "VARIANT[,size=tiny]"; one-line ValueErrors."""
    variant, options = parse_arg(arg, size="full")
    variant = variant or "occluded_duke"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} for {config_file}; use one of {VARIANTS}")
    size = options["size"]
    if size not in SIZES or (size == "tiny" and variant != "synthetic"):
        raise ValueError(f"size={size!r}: use size=tiny with the synthetic variant, or omit it")
    return variant, size


def get_config(arg: str = "occluded_duke") -> ml_collections.ConfigDict:
    """Returns the baseline config for one variant (dataset and size); see the module docstring."""
    variant, size = parse(arg)

    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "baseline"
    config.model.backbone = "resnet50_ibn_a"
    config.model.last_stride = 1
    # ImageNet weights of the backbone: resnet50_ibn_a-d9d0bb7b.pth (IBN-Net) or torchvision's
    # resnet50 .pth, or a folder written by `python -m occreid_jax.nets.convert`; "" = from scratch.
    config.model.backbone_init = ""

    config.data = ml_collections.ConfigDict()
    # Training dataset; test-only variants train on Market-1501 (cross-dataset protocol).
    config.data.name = "market1501" if variant in TEST_ONLY_DATASETS else variant
    config.data.builder_config = ""  # "" = the dataset's default builder config
    # The user's copy of a real dataset (the folder docs/protocols.md describes).
    config.data.manual_dir = ""
    # Evaluate on another dataset ("" = the training dataset), read from test_manual_dir.
    config.data.test_name = variant if variant in TEST_ONLY_DATASETS else ""
    config.data.test_manual_dir = ""
    config.data.test_builder_config = ""
    # Fail (instead of warn) when a real dataset's split sizes differ from the published ones.
    config.data.strict = False
    # Where tfds keeps built datasets; "" means ~/tensorflow_datasets.
    config.data.data_dir = ""
    config.data.image_size = (384, 128)  # (height, width)
    config.data.batch_size = 64  # global batch over all devices: P identities x K images
    config.data.instances_per_id = 4  # K
    # The second image of each identity's K from the first one's camera (sampler.py), cropped
    # and flipped like it (pipeline.py): MAT's feature consistency on same-camera pairs, a
    # frame of the same tracklet in real datasets (not in the papers).
    config.data.same_camera_pairs = False
    config.data.pad = 10
    config.data.flip_prob = 0.5
    config.data.erasing_prob = 0.5
    # Evaluation batch over all devices.
    config.data.eval_batch_size = 128

    config.pose = ml_collections.ConfigDict()
    # none | ground_truth | precomputed | online (see occreid_jax/training/pose.py). The baseline
    # is not pose-guided; pose-guided models read heatmaps from here.
    config.pose.source = "none"
    config.pose.net = "hrnet_w48"  # released Pirt: HRNet W48 (COCO); hrnet_w32 also works
    # pose_hrnet_w48_256x192.pth, or a folder written by `python -m occreid_jax.nets.convert`.
    config.pose.init = ""
    # Heatmap store of --mode=heatmaps; "" = <data_dir>/heatmaps/<dataset>-<config>-<net>-<HxW>.
    config.pose.store = ""

    config.loss = ml_collections.ConfigDict()
    config.loss.ce_weight = 1.0
    config.loss.label_smoothing = 0.1
    config.loss.triplet_weight = 1.0
    config.loss.triplet_margin = 0.3  # used only when soft_margin is False
    config.loss.soft_margin = True
    config.loss.triplet_metric = "euclidean"  # euclidean | sqeuclidean | cosine
    config.loss.triplet_normalize = False

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 60
    # None: len(train split) // batch_size, as fast-reid counts an epoch.
    config.train.steps_per_epoch = ml_collections.config_dict.placeholder(int)
    config.train.optimizer = "adam"  # adam (torch-style coupled L2) | sgd (momentum)
    config.train.lr = 3.5e-4
    config.train.weight_decay = 5e-4
    config.train.momentum = 0.9  # sgd only
    config.train.adam_betas = (0.9, 0.999)
    config.train.schedule = "warmup_flat_cosine"  # warmup_flat_cosine | warmup_multistep
    config.train.warmup_epochs = 10
    config.train.warmup_factor = 0.01
    config.train.cosine_start_epoch = 30
    config.train.final_lr = 1e-6
    config.train.milestones = (40, 70)  # warmup_multistep only
    config.train.gamma = 0.1  # warmup_multistep only
    config.train.dtype = "float32"  # float32 | bfloat16 (compute dtype; params stay float32)
    config.train.eval_every_epochs = 10
    config.train.eval_at_start = False  # also evaluate the untrained model, for comparison
    config.train.checkpoint_every_steps = 500
    config.train.max_checkpoints = 3
    config.train.log_every_steps = 50

    config.eval = ml_collections.ConfigDict()
    config.eval.metric = "cosine"  # cosine | euclidean
    config.eval.flip = False  # average features of the image and its mirror
    # k-reciprocal re-ranking (Zhong et al., CVPR 2017; parameters from the paper): adds
    # "<row> +re-rank" rows to the results, exact, in blocks within memory_mib.
    config.eval.rerank = False
    config.eval.rerank_k1 = 20
    config.eval.rerank_k2 = 6
    config.eval.rerank_lambda = 0.3
    # Average query expansion (fast-reid's TEST.AQE defaults) on the global features: adds
    # "<row> +AQE" rows (and "<row> +AQE +re-rank" with rerank).
    config.eval.aqe = False
    config.eval.aqe_k = 5
    config.eval.aqe_alpha = 3.0
    config.eval.max_rank = 50
    # Queries ranked at a time against the whole gallery; None: as many as memory_mib allows.
    config.eval.query_chunk = ml_collections.config_dict.placeholder(int)
    # Working memory of the distance blocks and their ranking, in MiB, whatever the gallery
    # size (not in the papers; exact metrics either way). On a GPU, device memory.
    config.eval.memory_mib = 256.0

    # --mode=visrank: pictures of the ranked lists (not in the papers;
    # occreid_jax/pictures/visrank.py).
    config.vis = ml_collections.ConfigDict()
    config.vis.sort = "worst_ap"  # worst_ap | best_ap | index
    config.vis.num_queries = 20
    config.vis.top_k = 10

    if variant in ("synthetic", "pets2009"):
        _shrink_for_cpu(config)
    if variant == "pets2009":
        config.data.builder_config = ""  # one build per video and parameters
    if size == "tiny":
        shrink_to_tiny(config)
    return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """size=tiny: 2 epochs x 2 steps at 64 x 32 on the "tiny" synthetic build, batch 8
    (P=2 x K=4: one identity per device on two), every step logged, a checkpoint every 2 steps.
    For tests and smoke runs; not in any paper."""
    config.data.builder_config = "tiny"
    config.data.image_size = (64, 32)
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.train.epochs = 2
    config.train.steps_per_epoch = 2
    config.train.warmup_epochs = 1
    config.train.cosine_start_epoch = 1
    config.train.eval_every_epochs = 2
    config.train.eval_at_start = False
    config.train.checkpoint_every_steps = 2
    config.train.log_every_steps = 1


def _shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """The built-in synthetic benchmark, sized to train and evaluate on a 2-core CPU.

    Not in any paper: a tiny ResNet at 128 x 64 with the same recipe, compressed in epochs.
    """
    config.model.backbone = "resnet_tiny"
    config.data.builder_config = "default"
    config.data.image_size = (128, 64)
    config.data.batch_size = 32
    config.data.pad = 4
    config.train.epochs = 40
    config.train.lr = 1e-3
    config.train.warmup_epochs = 2
    config.train.cosine_start_epoch = 20
    config.train.eval_every_epochs = 20
    config.train.eval_at_start = True
    config.train.checkpoint_every_steps = 100
    config.train.log_every_steps = 20
