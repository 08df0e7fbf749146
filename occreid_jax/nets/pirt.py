"""Pirt: the pose-guided inter- and intra-part relational transformer (Ma et al., ACM MM 2021).

    image [B, H, W, 3] --backbone--> F [B, h, w, C]            (h, w = H/16, W/16; C = 2048)
    heatmaps [B, H/4, W/4, 17] --pose_guidance--> joint masks, group confidences, human mask C
    F, C --IntraPartRelation--> F_irm [B, h, w, C]
    F_irm --mean over width--> h stripe tokens --T--> mean --BNNeck--> stripe   (global)
    F_irm --max pool to (h/4, w/2)--> patch tokens --T--> mean --BNNeck--> patch (global)
    F_irm, joint masks --masked GAP--> 17 joint tokens; per group: 6 tokens --T--> mean -> part
    parts --ConfidenceScore--> conf [B, 3]; parts * conf --BNNeck, classifier per part
    (T is ONE RelationalTransformer, shared by all token sets.)

Ablation switches (paper Table 3, "off" as its Sect. 4.4 defines the rows):
  use_pose=False   no pose branch: no part features, no confidences, and the IRM's mask
                   residual uses C = 1 (a plain residual; not in the paper, which never turns
                   pose off with IRM on). The Table 3 baseline row is the `baseline` model.
  use_intra=False  F_irm = F (no intra-part relational module).
  use_inter=False  every token set is averaged directly, without the transformer (the paper's
                   "+pose" row: GMP/GAP local features, "averaged local features" per joint).
Table 4 is `num_layers`; Table 5 is a matching setting (evaluation/pirt_matching.py).

Parameter names follow the released modules where they exist; see `pirt_parts.py`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError
from occreid_jax.nets.baseline import backbone_features, bnneck, classifier
from occreid_jax.nets.pirt_parts import (
    JOINT_GROUPS,
    ConfidenceScore,
    IntraPartRelation,
    RelationalTransformer,
    adaptive_max_pool,
    joint_features,
    pose_guidance,
)
from occreid_jax.nets.resnet import get_backbone

PART_NAMES = ("arms", "legs", "head")


class Pirt(nn.Module):
    """Pirt with its ablation switches.

    Attributes:
      num_classes: training identities; 0 builds no classifiers (inference / export).
      backbone: a name in `resnet.BACKBONES` (released: "resnet50_ibn_a").
      last_stride: stride of the backbone's last stage (1).
      irm_width: the intra-part module's reduced width d (512 for C = 2048).
      irm_heads: stripe-attention heads (4).
      irm_dropout: the dropout on the IRM's residual (0.3).
      irm_out_proj: the paper's attention output projection W^H (the released code has none).
      num_layers: transformer layers (3; Table 4 tries 1-4).
      num_heads: transformer heads (8).
      ffn_dim: transformer feed-forward width (512).
      dropout: transformer dropout (0.1).
      csm_width: hidden width of the confidence score module (512).
      patch_grid: (rows, cols) of the patch tokens; None = (h / 4, w / 2), i.e. 6 x 4 at 384 x 128.
      mask_threshold: tau (0.001).
      use_pose, use_intra, use_inter: the Table 3 switches (see the module docstring).
      dtype: backbone compute dtype; everything after the backbone computes in float32.
      bn_axis_name: axis for synchronised BatchNorm.
    """

    num_classes: int
    backbone: str = "resnet50_ibn_a"
    last_stride: int = 1
    irm_width: int = 512
    irm_heads: int = 4
    irm_dropout: float = 0.3
    irm_out_proj: bool = False
    num_layers: int = 3
    num_heads: int = 8
    ffn_dim: int = 512
    dropout: float = 0.1
    csm_width: int = 512
    patch_grid: tuple[int, int] | None = None
    mask_threshold: float = 0.001
    use_pose: bool = True
    use_intra: bool = True
    use_inter: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    def __post_init__(self) -> None:
        get_backbone(self.backbone)
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {self.num_classes}.")
        if self.num_layers < 1 and self.use_inter:
            raise UserError(
                f"model.num_layers={self.num_layers}: the transformer needs at least one "
                "layer; set model.use_inter=False to drop it"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, heatmaps: jax.Array | None = None
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Embeds a batch of images.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images.
          train: batch statistics in BatchNorm, dropout on.
          heatmaps: [B, H/4, W/4, 17] keypoint heatmaps in [0, 1]; required with use_pose.

        Returns:
          (embeddings, aux), float32:
            embeddings["stripe"], ["patch"]: [B, C] after their BNNeck (the global features).
            embeddings["parts"]: [B, 3, C] confidence-weighted part features (arms, legs,
              head), before their BNNeck; the matcher L2-normalises them. (use_pose only.)
            embeddings["confidence"]: [B, 3] part confidences, summing to 1. (use_pose only.)
            aux["logits"]: {"stripe", "patch", "part0".."part2"} -> [B, num_classes].
            aux["parts"]: [B, 3, C] the same confidence-weighted part features (triplet input).
        """
        fmap = backbone_features(self, x, train).astype(jnp.float32)
        guide = self._pose_guidance(heatmaps, fmap.shape[1:3])
        if self.use_intra:
            human_mask = guide["human_mask"] if guide is not None else jnp.ones_like(fmap[..., :1])
            fmap = IntraPartRelation(
                self.irm_width,
                self.irm_heads,
                self.irm_dropout,
                self.irm_out_proj,
                bn_axis_name=self.bn_axis_name,
                name="intra",
            )(fmap, human_mask, train)
        transformer = (
            RelationalTransformer(
                self.num_layers, self.num_heads, self.ffn_dim, self.dropout, name="inter"
            )
            if self.use_inter
            else None
        )

        def relate(tokens):  # [B, T, C] -> [B, C], with the one shared transformer
            if transformer is not None:
                tokens = transformer(tokens, train)
            return jnp.mean(tokens, axis=1)

        embeddings, logits = self._global_features(fmap, relate, train)
        aux = {}
        if guide is not None:
            parts, part_logits = self._part_features(fmap, guide, relate, train)
            embeddings.update(parts)
            logits.update(part_logits)
            aux["parts"] = parts["parts"]
        if self.num_classes > 0:
            aux["logits"] = logits
        return embeddings, aux

    def _pose_guidance(self, heatmaps, feature_hw) -> dict | None:
        """Joint masks, group confidences and the human mask (None without the pose branch)."""
        if not self.use_pose:
            return None
        if heatmaps is None:
            raise UserError(
                "Pirt needs keypoint heatmaps; set pose.source (ground_truth on the "
                "synthetic benchmark, precomputed after --mode=heatmaps, or online)"
            )
        return pose_guidance(heatmaps, feature_hw, self.mask_threshold)

    def _classify(self, feat: jax.Array, name: str) -> jax.Array | None:
        """Bias-free linear classifier on a BNNeck output (None without classes)."""
        if self.num_classes == 0:
            return None
        return classifier(self.num_classes, name)(feat)

    def _global_features(self, fmap, relate, train: bool) -> tuple[dict, dict]:
        """Stripe and patch features after their BNNeck, and their logits."""
        height, width = fmap.shape[1:3]
        grid = (
            tuple(self.patch_grid) if self.patch_grid else (max(height // 4, 1), max(width // 2, 1))
        )
        global_feats = {
            "stripe": relate(jnp.mean(fmap, axis=2)),
            "patch": relate(
                adaptive_max_pool(fmap, grid).reshape(fmap.shape[0], -1, fmap.shape[-1])
            ),
        }
        embeddings, logits = {}, {}
        for name, feat in global_feats.items():
            embeddings[name] = bnneck(train, self.bn_axis_name, f"{name}_bnneck")(feat)
            logits[name] = self._classify(embeddings[name], f"{name}_classifier")
        return embeddings, logits

    def _part_features(self, fmap, guide, relate, train: bool) -> tuple[dict, dict]:
        """Confidence-weighted part features [B, P, C], confidences [B, P], part logits."""
        joints = joint_features(fmap, guide["joint_masks"])  # [B, 17, C]
        # The groups have equal token counts: one transformer call on [P * B, 6, C] (the
        # same computation as one call per group, with fewer, larger operations).
        tokens = jnp.concatenate([joints[:, list(g)] for g in JOINT_GROUPS], axis=0)
        parts = relate(tokens).reshape(len(JOINT_GROUPS), -1, tokens.shape[-1])
        parts = jnp.swapaxes(parts, 0, 1)  # [B, P, C]
        confidence = ConfidenceScore(self.csm_width, name="confidence")(
            parts, guide["group_confidence"]
        )
        parts = parts * confidence[..., None]
        logits = {}
        for p in range(len(JOINT_GROUPS)):
            part_bn = bnneck(train, self.bn_axis_name, f"part{p}_bnneck")(parts[:, p])
            logits[f"part{p}"] = self._classify(part_bn, f"part{p}_classifier")
        return {"parts": parts, "confidence": confidence}, logits
