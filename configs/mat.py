"""MAT, the motion-aware transformer (Zhou et al.; docs/mat-choices.md): the paper's settings.

ResNet-50, 256 x 128, P=16 x K=4 (batch 64), SGD momentum 0.9, weight decay 1e-4, lr 0.01
x0.1 every 30 epochs, 100 epochs, K=10 parts; flip, pad, random crop and random erasing;
loss `1 ID_g + 1 Tri_g + 1 ID_p + 1 Tri_p + 10 L_eq + 5 L_fc`. MAT has no public code:
every value the paper does not state is marked "not in the paper" below.

Usage (the variant after ":" picks the dataset and size, as in configs/baseline.py):

  python -m occreid_jax.main --config=configs/mat.py:synthetic --workdir=runs/mat
  python -m occreid_jax.main --config=configs/mat.py:synthetic --workdir=runs/mat --mode=visualize
  python -m occreid_jax.main --config=configs/mat.py:occluded_duke --workdir=runs/mat_od \
      --config.data.manual_dir=/data/Occluded_Duke --config.model.backbone_init=resnet50.pth
  # Table 1 row #6: keypoints from ground-truth heatmaps instead of self-supervised ones.
  python -m occreid_jax.main --config=configs/mat.py:synthetic --workdir=runs/mat_gt \
      --config.model.keypoints=heatmaps --config.pose.source=ground_truth \
      --config.model.segment_features=backbone --config.model.keypoint_features=encoder

Variants: synthetic (the built-in benchmark, sized for a 2-core CPU); occluded_duke,
market1501, dukemtmc, msmt17; occluded_reid, partial_reid, partial_ilids (trained on
Market-1501); pets2009 (the people of one static-camera video, docs/pets2009.md).
`ABLATIONS` lists the overrides of the paper's Table 1 and Table 2 rows (and of diagnostic,
flow, image-reconstruction and test-time rows) relative to the `synthetic` variant, for
`python -m benchmarks.ablations --config=configs/mat.py:synthetic --table=table1`.
"""

import os

import ml_collections

from occreid_jax.config_files import load_config_file

_BASELINE = load_config_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.py")
)
VARIANTS = _BASELINE.VARIANTS

# Overrides of each ablation row relative to get_config("synthetic"), as dotted config keys.
ABLATIONS = {
    # Table 1: encoder / decoder / segmentation branch / keypoint branch.
    "table1": {
        "#1 baseline (ResNet, BNNeck)": {"model.name": "baseline"},
        "#2 segmentation + self-supervised keypoints": {
            "model.encoder_layers": 0,
            "model.decoder_layers": 0,
        },
        "#3 + encoder": {"model.decoder_layers": 0},
        "#4 + decoder": {"model.encoder_layers": 0},
        "#5 + encoder + decoder (MAT)": {},
        "#6 MAT, ground-truth keypoints": {
            "model.keypoints": "heatmaps",
            "pose.source": "ground_truth",
        },
    },
    # Table 2: number of parts (the paper's best is 10).
    "table2": {f"{k} parts": {"model.num_parts": k} for k in (3, 6, 10, 17)},
}
# Not in the paper: rows that isolate what the motion machinery adds.
ABLATIONS["diagnostics"] = {
    "no keypoint branch (parts from ID losses only)": {"model.keypoints": "none"},
    "no segmentation branch (global feature only)": {"model.segmentation": False},
    "no feature consistency (lambda6 = 0)": {"loss.consistency_weight": 0.0},
    # With L_fc the maps stay uniform even with L_div; without L_fc, L_div moves them off the
    # uniform map but puts each image on one part (README, MAT results).
    "no feature consistency + part diversity 1": {
        "loss.consistency_weight": 0.0,
        "loss.part_diversity_weight": 1.0,
    },
    "part diversity 1 (with L_fc)": {"loss.part_diversity_weight": 1.0},
}
# The paper's own reading of L_fc, before the choices that let its flow find a person:
# every image of a group against A, independent images, f_g compared and segmented.
_PAPER_PAIRS = {
    "data.builder_config": "default",
    "data.same_camera_pairs": False,
    "loss.consistency_pairs": "all",
    "model.segment_features": "encoder",
    "loss.keypoint_separation_weight": 0.0,
}
# Not in the paper: each choice of the synthetic variant's feature consistency undone alone,
# and the earlier readings of Eq. 8 (what the flow probe measures, trained).
ABLATIONS["flow"] = {
    "segmentation L_fc, as first built": {
        **_PAPER_PAIRS,
        "loss.consistency_target": "segmentation",
    },
    "encoder L_fc over B C D (the paper's Eq. 8 and 12)": {
        **_PAPER_PAIRS,
        "loss.consistency_target": "encoder",
    },
    "encoder L_fc": {"loss.consistency_target": "encoder"},
    "independent images (default data)": {"data.builder_config": "default"},
    "segmentation from f_g": {"model.segment_features": "encoder"},
    "no keypoint separation": {"loss.keypoint_separation_weight": 0.0},
    "L_fc gradient into the features": {"loss.consistency_stop_gradient": False},
    "no feature consistency (lambda6 = 0)": {"loss.consistency_weight": 0.0},
}
# Not in the paper: test-time matching, evaluated on the trained full-MAT runs of Table 1.
ABLATIONS["matching"] = {
    "global + visibility-weighted parts": {},
    "global only": {"eval.part_weight": 0.0},
    "parts weighted x2": {"eval.part_weight": 2.0},
}
# Not in the paper: the image-reconstruction consistency (co-part segmentation's signal),
# what was tried to keep its parts from falling to the background, and the hourglass's parts
# (README, "The image-reconstruction signal").
_IMAGE_TARGET = {
    "loss.consistency_target": "image",
    "model.segment_stage": 1,
    "data.builder_config": "tracklets_wide",
}
_FINE_KEYPOINTS = {
    **_IMAGE_TARGET,
    "model.keypoint_features": "segment",
    "loss.keypoint_separation_weight": 10.0,
}
_GROUND_TRUTH_TRANSLATIONS = {
    **_IMAGE_TARGET,
    "model.keypoint_features": "segment",
    "model.keypoints": "heatmaps",
    "pose.source": "ground_truth",
    "loss.consistency_jacobians": False,
}
_HOURGLASS = {
    **_IMAGE_TARGET,
    "model.segment_features": "hourglass",
    "model.keypoint_features": "segment",
}
_GROUND_TRUTH_PRIOR_SIDE = {
    **_IMAGE_TARGET,
    "model.keypoint_features": "segment",
    "model.keypoints": "heatmaps",
    "pose.source": "ground_truth",
    "model.segment_features": "hourglass",
    "model.segmentation_prior_sigma": 0.15,
    "data.builder_config": "tracklets_side",
}
_LIMBS_SIDE = {**_GROUND_TRUTH_PRIOR_SIDE, "model.keypoint_groups": "limbs"}
_BOTH = "feature L_fc, hourglass parts and flow keypoints, MAT's kept for L_eq"
_BOTH_KEYPOINTS = {"model.segment_features": "hourglass", "model.keypoint_features": "both"}
ABLATIONS["reconstruction"] = {
    "feature L_fc, MAT's parts (the default until 2026-12-06)": {},
    "feature L_fc, hourglass parts, keypoints and Jacobians": {
        "model.segment_features": "hourglass",
        "model.keypoint_features": "segment",
    },
    "feature L_fc, hourglass parts, MAT's keypoints": {"model.segment_features": "hourglass"},
    _BOTH: _BOTH_KEYPOINTS,
    "the same without L_fc (lambda6 = 0)": {**_BOTH_KEYPOINTS, "loss.consistency_weight": 0.0},
    "the same with presence 10": {**_BOTH_KEYPOINTS, "loss.part_presence_weight": 10.0},
    "image L_fc, hourglass parts and flow keypoints, MAT's kept for L_eq": {
        **_IMAGE_TARGET,
        **_BOTH_KEYPOINTS,
    },
    # Side-view tracklets ("tracklets_side"): the limbs swing in the image plane between frames.
    "both keypoint sets, side-view tracklets": {
        **_BOTH_KEYPOINTS,
        "data.builder_config": "tracklets_side",
    },
    "image L_fc, both keypoint sets, side-view tracklets": {
        **_IMAGE_TARGET,
        **_BOTH_KEYPOINTS,
        "data.builder_config": "tracklets_side",
    },
    "image L_fc, stride-4 parts": _IMAGE_TARGET,
    "image L_fc without the visibility map": {
        **_IMAGE_TARGET,
        "loss.consistency_visibility": False,
    },
    "+ keypoints on the stride-4 map, separation 10": _FINE_KEYPOINTS,
    "+ parts around their keypoints (prior sigma 0.15)": {
        **_FINE_KEYPOINTS,
        "model.segmentation_prior_sigma": 0.15,
    },
    "image L_fc, ground-truth keypoints": {
        **_IMAGE_TARGET,
        "model.keypoint_features": "segment",
        "model.keypoints": "heatmaps",
        "pose.source": "ground_truth",
    },
    "image L_fc, ground-truth keypoints, translations": _GROUND_TRUTH_TRANSLATIONS,
    "+ segmentation with f_g's context": {
        **_GROUND_TRUTH_TRANSLATIONS,
        "model.segment_context": True,
    },
    "+ presence 10": {**_GROUND_TRUTH_TRANSLATIONS, "loss.part_presence_weight": 10.0},
    "learned keypoints on the stride-4 map, separation 10, presence 10": {
        **_FINE_KEYPOINTS,
        "loss.part_presence_weight": 10.0,
    },
    # Co-part segmentation's predictor, an hourglass over the image (model.segment_features
    # "hourglass"), in place of the embeddings times the stage-1 map.
    "hourglass parts, ground-truth keypoints, translations": {
        **_GROUND_TRUTH_TRANSLATIONS,
        "model.segment_features": "hourglass",
    },
    # Keypoints on the limbs lead the image L_fc into the limb partition's basin (README,
    # "The segmentation landscape"): pose-heatmap keypoints, learned Jacobians, the prior.
    "image L_fc, ground-truth keypoints, hourglass, prior 0.15, side-view tracklets": (
        _GROUND_TRUTH_PRIOR_SIDE
    ),
    "the same, keypoints on the limbs": _LIMBS_SIDE,
    "the same, motions fitted to the joints": {**_LIMBS_SIDE, "loss.consistency_motions": "joints"},
    "hourglass parts, keypoints and Jacobians": _HOURGLASS,
    "hourglass, translations": {**_HOURGLASS, "loss.consistency_jacobians": False},
    "hourglass, parts around their keypoints (sigma 0.15)": {
        **_HOURGLASS,
        "model.segmentation_prior_sigma": 0.15,
    },
    "hourglass, L_fc from step 100": {**_HOURGLASS, "loss.consistency_start_step": 100},
    "hourglass, flow from keypoint masks": {
        **_HOURGLASS,
        "loss.consistency_flow": "keypoint_masks",
    },
}
# Every row above was defined and measured against the synthetic variant's parts before
# 2026-12-06, MAT's own (segment embeddings x the backbone map, keypoints on f_g); the rows
# keep them unless they set their own. ("matching" adds to the trained row's overrides.)
_MAT_PARTS = {"model.segment_features": "backbone", "model.keypoint_features": "encoder"}
for _table in ("table1", "table2", "diagnostics", "flow", "reconstruction"):
    ABLATIONS[_table] = {label: {**_MAT_PARTS, **row} for label, row in ABLATIONS[_table].items()}
# The global-only and parts-x2 matching rows on that row's checkpoints.
ABLATIONS["matching_hourglass"] = ABLATIONS["matching"]
EVAL_ONLY = {
    "matching": ("table1", "#5 + encoder + decoder (MAT)"),
    "matching_hourglass": ("reconstruction", _BOTH),
}


def get_config(arg: str = "occluded_duke") -> ml_collections.ConfigDict:
    """Returns the MAT config for one variant (dataset and size); see the module docstring."""
    variant, size = _BASELINE.parse(arg, "configs/mat.py")
    # Dataset fields, evaluation rows and train bookkeeping come from the baseline config;
    # everything MAT's paper states is set below.
    config = _BASELINE.get_config(arg)

    config.model = ml_collections.ConfigDict()
    config.model.name = "mat"
    config.model.backbone = "resnet50"  # the paper: ResNet-50 (no IBN)
    config.model.last_stride = 1  # not in the paper: the Re-ID convention, 16 x 8 maps
    # ImageNet weights of the backbone (torchvision resnet50 .pth or a converted folder);
    # "" = from scratch. The paper starts from ImageNet (usual, not stated).
    config.model.backbone_init = ""
    config.model.num_parts = 10  # K keypoints and K parts + background (Table 2: best 10)
    config.model.d_model = 512  # not in the paper (the 1x1 projection's width)
    config.model.num_heads = 8  # not in the paper
    config.model.ffn_dim = 2048  # not in the paper
    config.model.encoder_layers = 6  # 0 = no encoder (Table 1)
    config.model.decoder_layers = 1  # 0 = no decoder (Table 1)
    config.model.dropout = 0.1  # not in the paper
    config.model.head_layers = 3  # not in the paper: layers of each sigmoid MLP head
    # "add" (not in the paper) or "concat" (the paper's wording): 2D sine positions.
    config.model.position_embedding = "add"
    config.model.temperature = 0.1  # soft-argmax temperature (FOMM)
    # self_supervised (MAT) | heatmaps (keypoints from pose.source heatmaps: Table 1 row #6)
    # | none (no keypoint branch, no motion; not in the paper).
    config.model.keypoints = "self_supervised"
    config.model.segmentation = True  # the part-segmentation branch
    # Divide the map dot products by sqrt(d_model), as attention logits (not in the paper: it
    # multiplies plainly). The plain products' gradients through L_eq and L_fc into the shared
    # encoder output are sqrt(d) times larger and kept the global feature collapsed (README,
    # "Where the paper is silent").
    config.model.scale_maps = True
    # What the segment embeddings multiply: "encoder" (f_g, our reading of "the feature maps")
    # or "backbone" (the backbone map through its own 1x1 projection; not in the paper: f_g's
    # tokens grow alike over positions, the backbone map keeps a spatial signal).
    config.model.segment_features = "backbone"
    # Not in the paper: the backbone stage whose map the segmentation reads (with
    # segment_features "backbone"): 4 = the feature map's stride 16, 1 = stride 4; the image
    # L_fc rows use 1, where limbs pay in pixels (README, "Probe v2").
    config.model.segment_stage = 4
    # What the keypoint embeddings multiply: "encoder" (f_g, the paper) or "segment" (the
    # segmentation's map, finer, as FOMM's detector; not in the paper); "both" (not in the
    # paper; with the hourglass): its keypoints compose the flow, MAT's on f_g serve L_eq.
    config.model.keypoint_features = "encoder"
    # Not in the paper: > 0 adds log-Gaussians (this sigma, in [-1, 1] units) around each
    # image's keypoints to its segmentation logits, so part k starts around keypoint k.
    config.model.segmentation_prior_sigma = 0.0
    # Not in the paper: how model.keypoints="heatmaps" groups the 17 COCO joints into K
    # keypoints: "coco" (head, shoulders, elbows, wrists, hips, legs for K = 10) or "limbs"
    # (head, torso, upper and lower arms and legs: one keypoint per rigid limb).
    config.model.keypoint_groups = "coco"
    # Not in the paper: add f_g's own projection, resized, to the map the segmentation reads
    # (image-wide context over the finer stage's local detail).
    config.model.segment_context = False
    # Not in the paper: with segment_features "hourglass", co-part segmentation's predictor
    # (an hourglass over the image blurred and subsampled to this stride) gives the parts,
    # and with keypoint_features "segment" the keypoints and Jacobians too.
    config.model.hourglass_stride = 4
    config.model.hourglass_expansion = 32  # its first width (co-part segmentation's)
    config.model.hourglass_blocks = 3  # down blocks (5 at co-part's 64 x 64; 3 fit 32 x 16)

    config.data.image_size = (256, 128)
    config.data.batch_size = 64  # 16 identities x 4 images
    config.data.instances_per_id = 4  # also the A, B, C, D groups of L_fc
    # Not in the paper: B from A's camera (a frame of A's tracklet in real datasets), cropped
    # and flipped like A, for L_fc on that pair (loss.consistency_pairs="first").
    config.data.same_camera_pairs = True
    config.data.pad = 10  # not in the paper (the usual Re-ID padding)
    config.data.flip_prob = 0.5  # not in the paper
    config.data.erasing_prob = 0.5  # not in the paper

    loss = config.loss
    loss.ce_weight = 1.0  # lambda1
    loss.label_smoothing = 0.0  # Eq. 15 is plain cross-entropy
    loss.triplet_weight = 1.0  # lambda2
    loss.soft_margin = True  # Eq. 17
    loss.triplet_metric = "sqeuclidean"  # Eq. 17: squared Euclidean distances
    # Not in the paper: L2-normalise the features before Eq. 17's squared distances (then
    # 2 - 2 cos, bounded by 4). On the raw mean of the post-LayerNorm encoder tokens the
    # squared distances start at tens, the soft margin sits on its linear branch, and its
    # gradient swamps the ID loss's and collapses every image's features to one map (README,
    # "Where the paper is silent").
    loss.triplet_normalize = True
    loss.part_ce_weight = 1.0  # lambda3
    loss.part_triplet_weight = 1.0  # lambda4
    loss.equivariance_weight = 10.0  # lambda5
    loss.consistency_weight = 5.0  # lambda6
    # Not in the paper: L_fc is off before this step (0 = from the start): a warm-up in which
    # L_eq alone steadies the keypoints, so the first part motions L_fc sees are near the
    # identity rather than keypoint noise (README, "The image-reconstruction signal").
    loss.consistency_start_step = 0
    # Not in the paper: weight of L_div = -I(pixel; part) + log K (losses/mat.py), which pushes
    # the K+1 segmentation maps apart; 0 = the paper's Eq. 9, whose L_fc and part ID losses are
    # all satisfied by one uniform map on every image. An experiment, not a fix: see the README.
    loss.part_diversity_weight = 0.0
    # Not in the paper: weight of PDiscoNet's presence term (losses/mat.part_presence_loss),
    # 1 - the mean over parts of each part's largest 3 x 3-averaged probability in the batch;
    # it keeps parts from vanishing into the background (README, "The image-reconstruction
    # signal"); 0 = off.
    loss.part_presence_weight = 0.0
    # L_fc compares image features (Eq. 8): "encoder" = f_g, a softmax over channels at each
    # position, warped by the flow A's segmentation composes; "backbone" = the backbone stages
    # loss.consistency_stages' maps, L_fc averaged over them (not in the paper: f_g has
    # almost no spatial structure to align; README, flow probe); "segmentation" = the part
    # maps, as first built. "image" (not in the paper): X's pixels read through the flow
    # against A by an L1 pyramid (scales 1, 1/2, 1/4), co-part segmentation's signal; trained
    # with learned keypoints it falls to all background on the synthetic benchmark (README,
    # "The image-reconstruction signal"), so the default stays "backbone".
    loss.consistency_target = "backbone"
    loss.consistency_stages = (1, 2)
    # Not in the paper: with target "image", weigh the pyramid by co-part segmentation's
    # visibility map 1 - fg_X (1 - fg_A), behind a stop-gradient (pixels the person left).
    loss.consistency_visibility = True
    # Not in the paper: with target "image", "keypoint_masks" composes the flow from soft
    # Gaussian masks around the keypoints (sigma keypoint_mask_sigma, [-1, 1] units) instead
    # of the learned segmentation, as FOMM builds its masks from keypoints: L_fc then reaches
    # the keypoints whatever the segmentation does. "segmentation" = Eq. 7.
    loss.consistency_flow = "segmentation"
    loss.keypoint_mask_sigma = 0.15
    # Not in the paper: no gradient from L_fc into the compared features (it then trains only
    # the flow: segmentation, keypoints, Jacobians); without it, flattening the features
    # also lowers the KL.
    loss.consistency_stop_gradient = True
    # Not in the paper: False moves each part of the flow by a translation (identity
    # Jacobians) instead of Eq. 5's affine motion; L_eq still trains the Jacobians.
    loss.consistency_jacobians = True
    # A diagnostic (not in the paper): "joints" fits the part motions to the pose joints.
    loss.consistency_motions = "learned"
    # "all": A against B, C and D (Eq. 12); "first": against B only, the same-camera pair of
    # data.same_camera_pairs (not in the paper).
    loss.consistency_pairs = "first"
    # Not in the paper: Zhang et al. (2018)'s separation prior on the keypoints, weight and
    # distance scale in [-1, 1] units (losses/mat.keypoint_separation_loss); 0 = off.
    loss.keypoint_separation_weight = 1.0
    loss.keypoint_separation_sigma = 0.2
    loss.tps_sigma_affine = 0.05  # FOMM's random warp for L_eq
    loss.tps_sigma_tps = 0.005  # FOMM
    loss.tps_points = 5  # FOMM: 5 x 5 control points

    train = config.train
    train.epochs = 100
    train.optimizer = "sgd"
    train.lr = 0.01
    train.weight_decay = 1e-4
    train.momentum = 0.9
    train.schedule = "warmup_multistep"
    train.warmup_epochs = 0  # the paper states no warm-up
    train.warmup_factor = 1.0
    train.milestones = (30, 60, 90)  # x0.1 every 30 epochs
    train.gamma = 0.1

    config.eval.metric = "cosine"  # not in the paper
    # Weight of the visibility-weighted part distance added to the global distance at test
    # time (evaluation/mat_matching.py; not in the paper).
    config.eval.part_weight = 1.0

    if variant in ("synthetic", "pets2009"):
        _shrink_for_cpu(config)
    if variant == "synthetic":
        # Not in the paper: co-part segmentation's hourglass gives the parts and the flow's
        # keypoints and Jacobians; MAT's keypoint queries on f_g stay for L_eq. Seeds 0-2:
        # 14.4 +- 1.4 occluded mAP against 13.0 +- 0.3 for MAT's own parts, which stay one
        # person region; these split into 3-4 bands of the body (README, "The synthetic
        # default's parts"). On pets2009 MAT's own parts retrieve better.
        config.model.segment_features = "hourglass"
        config.model.keypoint_features = "both"
    if variant == "pets2009":
        config.data.builder_config = ""  # one build per video (docs/pets2009.md)
    if size == "tiny":
        _shrink_to_tiny(config)
    return config


def _shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """size=tiny (tests, smoke runs): the baseline's tiny run with a narrow one-layer
    transformer and 3 parts, one epoch of 2 steps."""
    _BASELINE.shrink_to_tiny(config)
    config.model.d_model = 16
    config.model.num_heads = 2
    config.model.ffn_dim = 32
    config.model.encoder_layers = 1
    config.model.num_parts = 3
    config.train.epochs = 1
    config.train.warmup_epochs = 0
    config.train.milestones = (1,)
    config.train.eval_every_epochs = 1


def _shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """The built-in synthetic benchmark on a 2-core CPU (not in the paper).

    The baseline's synthetic sizes (tiny ResNet, 128 x 64, 8 x 4 feature maps, batch 32 =
    8 identities x 4) with a narrow 2-layer encoder; Adam 1e-3 as the baseline's synthetic
    variant (everything starts from scratch here, where the paper's SGD 0.01 trains far more
    slowly: README, "Config and switches"), a 2-epoch warm-up and the decays late in the
    shorter run.
    """
    config.model.backbone = "resnet_tiny"
    config.model.d_model = 128
    config.model.num_heads = 4
    config.model.ffn_dim = 256
    config.model.encoder_layers = 2
    # Each identity's train images in one camera are frames of one walk (builder config
    # "tracklets"; the test splits are those of "default").
    config.data.builder_config = "tracklets"
    config.data.image_size = (128, 64)
    config.data.batch_size = 32
    config.data.pad = 4
    config.train.optimizer = "adam"
    config.train.lr = 1e-3
    config.train.epochs = 12
    config.train.warmup_epochs = 2
    config.train.warmup_factor = 0.01
    config.train.milestones = (8, 11)
    config.train.eval_every_epochs = 6
    config.train.eval_at_start = True
    config.train.checkpoint_every_steps = 100
    config.train.log_every_steps = 20
