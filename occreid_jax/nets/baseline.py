"""The strong Re-ID baseline ("Bag of Tricks", fast-reid `bagtricks`): ResNet + GAP + BNNeck.

    image [B, H, W, 3] -> backbone -> [B, h, w, D] -> global average pool -> global_feat [B, D]
      -> BNNeck (BatchNorm1d, bias frozen at zero) -> bn_feat [B, D] -> linear, no bias -> logits

Parameter tree (names chosen to map from fast-reid checkpoints):
    backbone/...            the ResNet (see `resnet.py`)
    bottleneck/scale        BNNeck weight (fast-reid `heads.bottleneck.0.weight`); there is
                            no bias parameter, the frozen zero bias is simply omitted
    classifier/kernel       [D, num_classes] (torch `heads.classifier.weight` transposed)

The head (pooling, BNNeck, classifier) always computes in float32, whatever the backbone's
compute dtype: it is cheap and the logits feed the loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError
from occreid_jax.nets.resnet import BN_MOMENTUM, NORM_EPS, get_backbone

classifier_init = nn.initializers.normal(stddev=0.001)


def bnneck(train: bool, axis_name: str | None, name: str) -> nn.BatchNorm:
    """BNNeck: BatchNorm1d whose bias is frozen at zero (so it has no bias parameter)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=NORM_EPS,
        use_bias=False,
        dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )


def classifier(num_classes: int, name: str) -> nn.Dense:
    """The bias-free linear classifier on a BNNeck output, float32, N(0, 0.001) weights."""
    return nn.Dense(
        num_classes, use_bias=False, dtype=jnp.float32, kernel_init=classifier_init, name=name
    )


def backbone_features(module: nn.Module, x: jax.Array, train: bool, all_stages: bool = False):
    """Runs the backbone a model module configures (its `backbone`, `last_stride`, `dtype`,
    `bn_axis_name` fields) as the submodule "backbone": [B, H, W, 3] -> [B, h, w, C], or with
    `all_stages` the list of every stage's output (`ResNet.stage_outputs`)."""
    backbone = get_backbone(module.backbone)(
        last_stride=module.last_stride,
        dtype=module.dtype,
        bn_axis_name=module.bn_axis_name,
        name="backbone",
    )
    return backbone.stage_outputs(x, train) if all_stages else backbone(x, train)


class Baseline(nn.Module):
    """Backbone -> GAP -> BNNeck -> bias-free classifier.

    Attributes:
      num_classes: training identities. 0 builds no classifier (inference / export); then
        `aux` has no "logits" entry.
      backbone: a name in `resnet.BACKBONES` ("resnet50", "resnet50_ibn_a", "resnet_tiny", ...).
      last_stride: stride of the backbone's last stage (1 for Re-ID).
      dtype: compute dtype of the backbone (e.g. jnp.bfloat16); params and head are float32.
      bn_axis_name: axis name for synchronised BatchNorm under pmap/shard_map ("batch").
    """

    num_classes: int
    backbone: str = "resnet50"
    last_stride: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # An unknown name fails at construction, as a UserError.
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {self.num_classes}.")
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, heatmaps: jax.Array | None = None
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Embeds a batch of images.

        Args:
          x: [B, H, W, 3] float images, ImageNet-normalised.
          train: BatchNorm in batch-statistics mode (the caller makes "batch_stats" mutable).
          heatmaps: [B, H/4, W/4, 17] keypoint heatmaps; ignored (the baseline is not
            pose-guided), accepted so that every model has one call signature.

        Returns:
          (embeddings, aux), all float32:
            embeddings["global"]: [B, D] BNNeck output, the retrieval feature.
            aux["global_feat"]: [B, D] pooled feature before the BNNeck (for the triplet loss).
            aux["logits"]: [B, num_classes] (absent when num_classes == 0).
        """
        fmap = backbone_features(self, x, train)
        global_feat = jnp.mean(fmap, axis=(1, 2), dtype=jnp.float32)
        bn_feat = bnneck(train, self.bn_axis_name, "bottleneck")(global_feat)
        aux = {"global_feat": global_feat}
        if self.num_classes > 0:
            aux["logits"] = classifier(self.num_classes, "classifier")(bn_feat)
        return {"global": bn_feat}, aux
