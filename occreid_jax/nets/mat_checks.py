"""MAT's constructor choices and their check: the values each switch takes, and the one-line
error a bad combination gets (`config_problems`), kept apart from the network in
`nets/mat.py`, which re-exports the constants."""

from __future__ import annotations

from occreid_jax.nets.mat_heads import KEYPOINT_GROUPS

# model.keypoints: where the keypoints of the motion flow come from.
#   self_supervised  MAT: keypoint queries and heatmaps trained by the equivariance loss
#   heatmaps         fed by pose heatmaps (`heatmaps=`: ground truth or a pose net, per
#                    pose.source), grouped into K keypoints (Table 1 row #6, "pretrained")
#   none             no keypoint branch: no motion, segmentation trained by the ID losses only
KEYPOINT_SOURCES = ("self_supervised", "heatmaps", "none")
POSITION_EMBEDDINGS = ("add", "concat")
# model.segment_features: what the segment embeddings are multiplied with (what the keypoint
# embeddings multiply is model.keypoint_features, below).
#   encoder   f_g, the encoder output (our reading of the paper's "feature maps")
#   backbone  the backbone map through its own 1x1 projection to d_model, without positions
#             (not in the paper; keeps the maps spatial when the encoder's tokens grow alike)
#   hourglass no embeddings: co-part segmentation's own predictor on the image
#             (`nets/hourglass.py`, at stride hourglass_stride; not in the paper), which
#             with keypoint_features="segment" also gives the keypoints and Jacobians
SEGMENT_FEATURES = ("encoder", "backbone", "hourglass")
# model.keypoint_features: what the keypoint embeddings multiply (and the Jacobian head reads).
#   encoder   f_g (MAT)
#   segment   the map the segmentation reads (with segmentation; not in the paper): at
#             segment_stage 1 four times finer than f_g, as FOMM keeps its keypoint
#             detector at 64 x 64 (first-order-model issue 81)
#   both      with segment_features="hourglass" (not in the paper): the hourglass's
#             keypoints and Jacobians compose the flow (aux "keypoints", "jacobians"), and
#             MAT's own on f_g are kept beside them (aux "encoder_keypoints",
#             "encoder_jacobians") for L_eq and the separation prior alone, which through
#             them still train the backbone and encoder as in MAT
KEYPOINT_FEATURES = ("encoder", "segment", "both")


def config_problems(model) -> list[str]:
    """What is wrong with a `nets/mat.Mat`'s fields, one phrase each (empty when nothing)."""
    problems = []
    if model.num_classes < 0:
        problems.append(f"num_classes must be >= 0, got {model.num_classes}")
    if model.num_parts < 1:
        problems.append(f"model.num_parts must be >= 1, got {model.num_parts}")
    if model.keypoints not in KEYPOINT_SOURCES:
        problems.append(
            f"unknown model.keypoints {model.keypoints!r}; use one of {KEYPOINT_SOURCES}"
        )
    groups = KEYPOINT_GROUPS.get(model.keypoint_groups)
    if groups is None:
        problems.append(
            f"unknown model.keypoint_groups {model.keypoint_groups!r}; "
            f"use one of {tuple(KEYPOINT_GROUPS)}"
        )
    elif model.keypoints == "heatmaps" and model.num_parts not in groups:
        problems.append(
            f"model.keypoints='heatmaps' with keypoint_groups={model.keypoint_groups!r} groups "
            f"the 17 COCO joints into {tuple(groups)} parts; set model.num_parts to one of them"
        )
    if model.position_embedding not in POSITION_EMBEDDINGS:
        problems.append(
            f"unknown model.position_embedding {model.position_embedding!r}; "
            f"use one of {POSITION_EMBEDDINGS}"
        )
    if model.segment_features not in SEGMENT_FEATURES:
        problems.append(
            f"unknown model.segment_features {model.segment_features!r}; "
            f"use one of {SEGMENT_FEATURES}"
        )
    if model.keypoint_features not in KEYPOINT_FEATURES:
        problems.append(
            f"unknown model.keypoint_features {model.keypoint_features!r}; "
            f"use one of {KEYPOINT_FEATURES}"
        )
    both = (model.segmentation, model.segment_features, model.keypoints)
    if model.keypoint_features == "both" and both != (True, "hourglass", "self_supervised"):
        problems.append(
            "model.keypoint_features='both' (the synthetic variant's default) needs the "
            "hourglass's keypoints beside MAT's: model.segment_features='hourglass', "
            "model.segmentation=True and model.keypoints='self_supervised'; for other parts or "
            "keypoints set model.keypoint_features='encoder' (MAT's) or 'segment'"
        )
    if model.segment_stage not in (1, 2, 3, 4):
        problems.append(f"model.segment_stage={model.segment_stage} must be a stage, 1-4")
    if min(model.hourglass_stride, model.hourglass_expansion, model.hourglass_blocks) < 1:
        problems.append("model.hourglass_stride, hourglass_expansion, hourglass_blocks >= 1")
    if model.d_model % model.num_heads or model.d_model % 4:
        problems.append(
            f"model.d_model={model.d_model} must be a multiple of 4 and of "
            f"model.num_heads={model.num_heads}"
        )
    if model.encoder_layers < 0 or model.decoder_layers < 0 or model.head_layers < 1:
        problems.append("model.encoder_layers, decoder_layers >= 0 and head_layers >= 1")
    return problems
