"""Pirt: pose-guided inter- and intra-part relational transformer (Ma et al., ACM MM 2021).

The released training recipe (docs/pirt-released-code.md), shared with configs/baseline.py:
ResNet-50-IBN-a, last stride 1, 384 x 128, P=16 x K=4, Adam 3.5e-4 with coupled weight decay
5e-4, 60 epochs, warm-up 10 epochs from factor 0.01, flat to 30, cosine to 1e-6 at 60; CE with
label smoothing 0.1 on stripe, patch and each part, soft-margin batch-hard triplet on the parts;
test: stripe + patch cosine distances plus the part distance over each query's top 100.

Usage (the variant after ":" picks the dataset and size):

  # The built-in synthetic benchmark (ground-truth heatmaps), sized for a 2-core CPU:
  python -m occreid_jax.main --config=configs/pirt.py:synthetic --workdir=runs/pirt_demo

  # Occluded-Duke: precompute HRNet heatmaps once, then train and evaluate.
  python -m occreid_jax.main --config=configs/pirt.py:occluded_duke --workdir=runs/pirt_od \
      --config.data.manual_dir=/data/Occluded_Duke --config.model.backbone_init=/w/ibn.pth \
      --config.pose.init=/w/pose_hrnet_w48_256x192.pth --mode=heatmaps
  python -m occreid_jax.main --config=configs/pirt.py:occluded_duke --workdir=runs/pirt_od \
      --config.data.manual_dir=/data/Occluded_Duke --config.model.backbone_init=/w/ibn.pth \
      --config.pose.init=/w/pose_hrnet_w48_256x192.pth

Ablations (papers' tables; `ABLATIONS` below lists the synthetic rows, run by
`python -m benchmarks.ablations --config=configs/pirt.py:synthetic --table=table3`):
  Table 3  --config.model.use_pose / use_intra / use_inter (and the `baseline` model);
  Table 4  --config.model.num_layers=1..4;
  Table 5  --config.eval.confidence=query_and_gallery|query|gallery|none (test time only:
           `--mode=eval` on one trained model).
  The released evaluator's gallery-confidence index defect: --config.eval.released_index_defect.

Variants: synthetic; occluded_duke, market1501, dukemtmc, msmt17; occluded_reid, partial_reid,
partial_ilids (trained on Market-1501, the cross-dataset protocol). 256 x 128 also works:
--config.data.image_size='(256, 128)'.
"""

import os

import ml_collections

from occreid_jax.config_files import load_config_file

# configs/baseline.py, found next to this file (works from any working directory).
baseline = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.py"))


def get_config(arg: str = "occluded_duke") -> ml_collections.ConfigDict:
    """Returns the Pirt config for one variant; see the module docstring."""
    variant, size = baseline.parse(arg, "configs/pirt.py")
    config = baseline.get_config(arg)

    model = config.model
    model.name = "pirt"
    model.backbone = "resnet50_ibn_a"
    model.irm_width = 512  # released stripe layer 2048 -> 512 -> 2048
    model.irm_heads = 4  # released: 4 heads of 128
    model.irm_dropout = 0.3  # released "stochastic identity" on the IRM residual
    model.irm_out_proj = False  # paper Eq. 7 has W^H; the released code has none
    model.num_layers = 3  # paper Table 4
    model.num_heads = 8
    model.ffn_dim = 512
    model.dropout = 0.1
    model.csm_width = 512
    # (rows, cols) of the patch tokens; None = (h / 4, w / 2): 6 x 4 at 384 x 128.
    model.patch_grid = ml_collections.config_dict.placeholder(tuple)
    model.mask_threshold = 0.001  # tau
    model.use_pose = True  # Table 3 switches
    model.use_intra = True
    model.use_inter = True

    # Real datasets: HRNet heatmaps precomputed by --mode=heatmaps (the released code runs the
    # frozen HRNet inside the training step: pose.source=online does that).
    config.pose.source = "precomputed"

    config.eval.top_n = 100  # local re-ranking over each query's top-N by the stripe distance
    # query_and_gallery (paper, released) | query | gallery | none (paper Table 5)
    config.eval.confidence = "query_and_gallery"
    # True reproduces the released evaluator's gallery-confidence indexing (a defect).
    config.eval.released_index_defect = False

    if variant == "synthetic":
        _shrink_for_cpu(config)
    if size == "tiny":
        _shrink_to_tiny(config)
    return config


def _shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """size=tiny (tests, smoke runs): the baseline's tiny run with narrow Pirt modules."""
    baseline.shrink_to_tiny(config)
    config.model.irm_width = 32
    config.model.ffn_dim = 32
    config.model.csm_width = 16
    config.model.num_layers = 1
    config.eval.top_n = 5


def _shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """Not in the paper: the synthetic benchmark's size (see configs/baseline.py), with a tiny
    IBN-a ResNet (512 channels) and the widths after it scaled by the same 1/4 as released."""
    config.pose.source = "ground_truth"
    config.model.backbone = "resnet_tiny_ibn_a"
    config.model.irm_width = 128
    config.model.ffn_dim = 128
    config.model.csm_width = 128
    # Half the baseline demo's 40 epochs: the transformer makes a step about 2x slower on
    # this CPU. Same warm-up; flat to epoch 10, cosine to 20.
    config.train.epochs = 20
    config.train.cosine_start_epoch = 10
    config.train.eval_every_epochs = 10


# Rows of the paper's ablation tables on the synthetic benchmark: overrides of the `synthetic`
# variant, the same step budget for every row. Table 3's baseline is "an individual feature
# vector extracted from the single backbone without using triplet loss function" (Sect. 4.4);
# the BoT row is the project's baseline with its triplet loss, for reference.
ABLATIONS = {
    "table3": {
        "baseline": {"model.name": "baseline", "loss.triplet_weight": 0.0},
        "baseline (BoT: + triplet)": {"model.name": "baseline"},
        "+pose": {"model.use_intra": False, "model.use_inter": False},
        "+intra": {"model.use_inter": False},
        "+inter (Pirt)": {},
    },
    "table4": {f"{n} layers": {"model.num_layers": n} for n in (1, 2, 3, 4)},
}
# Table 5 is a test-time setting: evaluate the trained full-model runs of Table 3.
ABLATIONS["table5"] = {
    "Q & G": {"eval.confidence": "query_and_gallery"},
    "Q only": {"eval.confidence": "query"},
    "G only": {"eval.confidence": "gallery"},
    "none": {"eval.confidence": "none"},
    "Q & G, released index defect": {"eval.released_index_defect": True},
    # Not in the paper: how much the part distance adds. With top_n = 1 only each query's
    # nearest image by the stripe distance gets a part distance; the rest rank globally.
    "no part re-ranking (top_n = 1)": {"eval.top_n": 1},
}
EVAL_ONLY = {"table5": ("table3", "+inter (Pirt)")}
