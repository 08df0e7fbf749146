"""MAT: the motion-aware transformer (Zhou et al., "Motion-Aware Transformer for Occluded
Person Re-identification"; what the paper states and what we chose: docs/mat-choices.md).

    image [B, H, W, 3] -> ResNet -> [B, h, w, C] -> 1x1 projection (+ 2D sine positions)
      -> transformer encoder (6 layers) -> f_g [B, h*w, d]             (the global feature maps)
      -> decoder (1 layer): K keypoint queries + (K+1) segment queries attend to f_g
      -> MLP heads with sigmoid -> keypoint embeddings [B, K, d], segment embeddings [B, K+1, d]
      -> keypoint heatmaps  = f_g . keypoint embeddings -> soft-argmax (T = 0.1) -> keypoints
         segmentation maps = f_g . segment embeddings  -> softmax over the K+1 channels
      -> Jacobians: 1x1 head on f_g, identity-initialised, pooled with each keypoint's heatmap
      -> part k feature = segmentation-weighted mean of f_g (background channel 0 excluded),
         global feature = mean of f_g; BNNeck (+ bias-free classifier) on each.

The keypoints and Jacobians feed only the training losses (equivariance, feature consistency
through the motion flow, `losses/mat.py`); retrieval uses the global and part features and
the parts' visibility (segmentation mass).

Not in the paper (our choices, each a constructor argument): d_model 512, 8 heads,
feed-forward 2048, dropout 0.1 (DETR's); post-norm layers; 3-layer MLP heads; learned queries
fed to the decoder as its input; positions added to the projected map (or concatenated: half
the channels projected features, half positions); with `encoder_layers=0` f_g is the
projected map itself, with `decoder_layers=0` the learned queries go to the MLP heads directly
(image-independent embeddings: the Table 1 rows without encoder or decoder). The maps are the
plain dot products, as the paper says; `scale_maps` divides them by sqrt(d_model) like
attention logits, which makes the maps start nearly flat, where plain products start FOMM-like
(peaked heatmaps, keypoints spread over the image).

Parameter tree: backbone/..., input_proj, encoder_{i}, queries, decoder_{i}, keypoint_head,
segment_head, jacobian_head, bottleneck (global BNNeck), classifier, part_bottleneck,
part_classifier; with segment_features="hourglass", copart/... (`nets/hourglass.py`) in
place of the segment (and with keypoint_features="segment" the keypoint) queries and heads
(with keypoint_features="both" MAT's keypoint queries and heads stay beside it).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax import motion
from occreid_jax.errors import UserError
from occreid_jax.nets.baseline import backbone_features, bnneck, classifier, classifier_init
from occreid_jax.nets.hourglass import CoPartPredictor
from occreid_jax.nets.mat_checks import (  # noqa: F401 (the switches' values, re-exported)
    KEYPOINT_FEATURES,
    KEYPOINT_SOURCES,
    POSITION_EMBEDDINGS,
    SEGMENT_FEATURES,
    config_problems,
)
from occreid_jax.nets.mat_heads import (  # noqa: F401 (COCO_GROUPS re-exported)
    COCO_GROUPS,
    MLPHead,
    group_heatmaps,
    group_members,
    identity_jacobian_bias,
)
from occreid_jax.nets.resnet import get_backbone
from occreid_jax.nets.transformer import DecoderLayer, EncoderLayer, sine_position_embedding


class Mat(nn.Module):
    """The motion-aware transformer; see the module docstring.

    Attributes:
      num_classes: training identities; 0 builds no classifiers (inference / export).
      backbone: a name in `resnet.BACKBONES` (the paper: resnet50).
      last_stride: stride of the backbone's last stage (1: 16 x 8 maps at 256 x 128).
      num_parts: K keypoints and K parts (+ background); 10 in the paper (Table 2: 3-17).
      d_model, num_heads, ffn_dim, dropout: transformer width, heads, feed-forward width,
        dropout (not in the paper: 512, 8, 2048, 0.1).
      encoder_layers: 6 in the paper; 0 = no encoder (Table 1).
      decoder_layers: 1 in the paper; 0 = no decoder (Table 1).
      head_layers: layers of each MLP head (not in the paper: 3).
      position_embedding: "add" (not in the paper) or "concat" (the paper's wording).
      temperature: soft-argmax temperature (0.1, FOMM).
      keypoints: "self_supervised" | "heatmaps" | "none", see `KEYPOINT_SOURCES`.
      segmentation: the part-segmentation branch; False leaves only the global feature.
      scale_maps: divide the map dot products by sqrt(d_model), as attention logits (not in
        the paper, which multiplies plainly; off by default).
      segment_features: what the segmentation multiplies its embeddings with, see
        `SEGMENT_FEATURES`.
      segment_stage: with segment_features="backbone" (ignored otherwise), the backbone
        stage (1-4) whose map the segmentation reads: 4 (the last) gives the feature map's
        resolution, 1 a map four times finer, at stride 4 (not in the paper; a flow that
        moves limbs needs parts finer than a stride-16 map, as the image-space flow probe
        measures). Part features pool f_g
        with the segmentation averaged down to f_g's grid.
      keypoint_features: what the keypoint embeddings multiply, see `KEYPOINT_FEATURES`.
      segment_context: with segment_features="backbone", add f_g through its own projection,
        resized bilinearly, to the segmentation's map: image-wide context (which body part a
        pixel is) on top of the stage's local detail, as a feature pyramid's top-down path
        (not in the paper).
      segmentation_prior_sigma: > 0 adds `motion.keypoint_prior_logits` of the image's own
        keypoints to the segmentation logits, so part k starts around keypoint k (not in the
        paper; FOMM derives its masks from keypoint Gaussians); 0 = off.
      hourglass_stride, hourglass_expansion, hourglass_blocks: with
        segment_features="hourglass", the stride of its maps, its first width and its down
        blocks (co-part segmentation's TaiChi model: stride 4, 32, 5 blocks at 64 x 64; 3
        blocks here fit 32 x 16; not in the paper).
      dtype: compute dtype of backbone and transformer; heads and maps are float32.
      bn_axis_name: axis name for synchronised BatchNorm under pmap/shard_map.
    """

    num_classes: int
    backbone: str = "resnet50"
    last_stride: int = 1
    num_parts: int = 10
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 1
    dropout: float = 0.1
    head_layers: int = 3
    position_embedding: str = "add"
    temperature: float = 0.1
    keypoints: str = "self_supervised"
    segmentation: bool = True
    scale_maps: bool = False
    segment_features: str = "encoder"
    segment_stage: int = 4
    keypoint_features: str = "encoder"
    segmentation_prior_sigma: float = 0.0
    keypoint_groups: str = "coco"
    segment_context: bool = False
    hourglass_stride: int = 4
    hourglass_expansion: int = 32
    hourglass_blocks: int = 3
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    def __post_init__(self) -> None:
        get_backbone(self.backbone)
        problems = config_problems(self)
        if problems:
            raise UserError("; ".join(problems))
        super().__post_init__()

    def _tokens(self, fmap: jax.Array) -> jax.Array:
        """[B, h, w, C] -> encoder input [B, h*w, d_model] with positions."""
        batch, height, width, _ = fmap.shape
        d = self.d_model
        if self.position_embedding == "add":
            x = nn.Dense(d, dtype=self.dtype, name="input_proj")(fmap)
            x = x + sine_position_embedding(height, width, d).astype(x.dtype)
        else:
            x = nn.Dense(d // 2, dtype=self.dtype, name="input_proj")(fmap)
            pos = sine_position_embedding(height, width, d - d // 2).astype(x.dtype)
            x = jnp.concatenate([x, jnp.broadcast_to(pos, (batch, *pos.shape))], axis=-1)
        return x.reshape(batch, height * width, d)

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, heatmaps: jax.Array | None = None
    ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        """Embeds a batch of images.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images.
          train: BatchNorm batch statistics and dropout on (dropout needs a "dropout" rng).
          heatmaps: [B, H/4, W/4, 17] pose heatmaps; read only with keypoints="heatmaps".

        Returns:
          (embeddings, aux), float32. h, w = the feature map size; K = num_parts.
            embeddings["global"]: [B, d] global BNNeck feature.
            embeddings["parts"]: [B, K, d] part BNNeck features (with segmentation).
            embeddings["visibility"]: [B, K] part segmentation mass (mean probability).
            aux["feature_maps"] [B, h, w, d] (f_g), aux["global_feat"] [B, d] (its mean),
            aux["logits"] [B, C]; with segmentation
            aux["part_feat"] [B, K, d], aux["part_logits"] [B, K, C],
            aux["segmentation"] [B, h, w, K+1] (softmax, channel 0 background);
            aux["backbone_maps"] the output of every backbone stage (`ResNet.stage_outputs`);
            with keypoints aux["keypoints"] [B, K, 2] ([-1, 1], see `motion`),
            aux["jacobians"] [B, K, 2, 2], aux["keypoint_heatmaps"] [B, h, w, K]; with
            keypoint_features="both" the same three prefixed "encoder_" (MAT's, on f_g)
            beside the hourglass's. With keypoints="heatmaps" also aux["joints"] [B, 17, 2]
            (`motion.heatmap_joints`) and aux["joint_weights"] [B, K, 17], 1 where a
            joint is visible and in keypoint k's group.
            Logits are absent when num_classes == 0; keypoints are absent with
            keypoints="heatmaps" when no heatmaps are given (inference).
        """
        stages = backbone_features(self, x, train, all_stages=True)
        fmap = stages[-1]
        height, width = fmap.shape[1:3]
        tokens = self._encode(fmap, train)
        features = tokens.astype(jnp.float32)  # f_g: [B, N, d], N = h * w
        keypoint_emb, segment_emb = self._decode(tokens, train)
        aux: dict[str, Any] = {"backbone_maps": stages}
        copart = self._copart(x, train)  # (segmentation, keypoint, Jacobian maps) or None
        segment_input = None
        if self.segmentation and self.keypoint_features == "segment" and copart is None:
            segment_input = self._segment_input(features, stages)  # keypoints read it
        if self.keypoints != "none":
            if copart is not None and self.keypoint_features in ("segment", "both"):
                size = copart[1].shape[1:3]
                aux.update(self._keypoints(None, size, None, heatmaps, train, copart[1:]))
                if self.keypoint_features == "both":  # MAT's own on f_g, outside the flow
                    own = self._keypoints(features, (height, width), keypoint_emb, None, train)
                    aux.update({f"encoder_{name}": v for name, v in own.items()})
            elif segment_input is None:  # f_g, as [B, h * w, d]
                aux.update(
                    self._keypoints(features, (height, width), keypoint_emb, heatmaps, train)
                )
            else:
                flat = segment_input.reshape(features.shape[0], -1, self.d_model)
                size = segment_input.shape[1:3]
                aux.update(self._keypoints(flat, size, keypoint_emb, heatmaps, train))
        out, global_aux = self._global_branch(features, (height, width), train)
        aux.update(global_aux)
        if self.segmentation:
            if copart is not None:
                logits = copart[0]
            else:
                if segment_input is None:
                    segment_input = self._segment_input(features, stages)
                logits = self._segment_logits(segment_input, segment_emb)
            anchors = aux.get("keypoints") if self.segmentation_prior_sigma > 0 else None
            parts, part_aux = self._parts(features, logits, (height, width), train, anchors)
            out.update(parts)
            aux.update(part_aux)
        return out, aux

    def _copart(self, x: jax.Array, train: bool):
        """With segment_features="hourglass": `CoPartPredictor`'s (segmentation logits
        [B, hs, ws, K+1], keypoint logits [B, hs, ws, K], Jacobian map [B, hs, ws, 4K]) of
        the images x [B, H, W, 3]; otherwise None."""
        if not self.segmentation or self.segment_features != "hourglass":
            return None
        cells = self.hourglass_stride * 2**self.hourglass_blocks
        if x.shape[1] % cells or x.shape[2] % cells:
            raise UserError(
                f"model.segment_features='hourglass' needs an image size divisible by "
                f"hourglass_stride * 2^hourglass_blocks = {cells}, got {x.shape[1:3]}; "
                "change data.image_size or model.hourglass_blocks"
            )
        return CoPartPredictor(
            self.num_parts, self.hourglass_stride, self.hourglass_expansion,
            self.hourglass_blocks, axis_name=self.bn_axis_name, name="copart",
        )(x, train)  # fmt: skip

    def _encode(self, fmap: jax.Array, train: bool) -> jax.Array:
        """Projection with positions and encoder: [B, h, w, C] -> tokens [B, h*w, d]."""
        tokens = self._tokens(fmap)
        for i in range(self.encoder_layers):
            tokens = EncoderLayer(
                self.d_model,
                self.num_heads,
                self.ffn_dim,
                self.dropout,
                self.dtype,
                name=f"encoder_{i}",
            )(tokens, train)
        return tokens

    def _decode(self, tokens: jax.Array, train: bool):
        """The decoder's query embeddings: (keypoint [B, K, d] or None, segment [B, K+1, d] or
        None), float32, before their MLP heads."""
        d, k = self.d_model, self.num_parts
        hourglass = self.segmentation and self.segment_features == "hourglass"
        num_kp = k if self.keypoints == "self_supervised" else 0
        if hourglass and self.keypoint_features == "segment":
            num_kp = 0  # the hourglass gives the keypoints
        num_seg = k + 1 if self.segmentation and not hourglass else 0
        if not num_kp + num_seg:
            return None, None
        queries = self.param(
            "queries", nn.initializers.normal(1.0), (num_kp + num_seg, d), jnp.float32
        )
        q = jnp.broadcast_to(queries.astype(self.dtype), (tokens.shape[0], num_kp + num_seg, d))
        for i in range(self.decoder_layers):
            q = DecoderLayer(
                d, self.num_heads, self.ffn_dim, self.dropout, self.dtype, name=f"decoder_{i}"
            )(q, tokens, train)
        embeddings = q.astype(jnp.float32)
        keypoint_emb = embeddings[:, :num_kp] if num_kp else None
        segment_emb = embeddings[:, num_kp:] if num_seg else None
        return keypoint_emb, segment_emb

    def _map_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_model) if self.scale_maps else 1.0

    def _keypoints(self, features, size, keypoint_emb, heatmaps, train: bool, maps=None) -> dict:
        """Keypoints [B, K, 2], Jacobians [B, K, 2, 2] and heatmaps [B, h, w, K] from the map
        [B, h * w, d] of `size` (h, w) the keypoint embeddings multiply, or from `maps`
        (keypoint logits [B, h, w, K], Jacobian map [B, h, w, 4K]) of the hourglass (aux
        entries; none with keypoints="heatmaps" and no heatmaps at inference)."""
        k = self.num_parts
        if maps is None:
            batch, (height, width) = features.shape[0], size
            # FOMM's Jacobian head: zero weights, bias = identity, so every J_k starts at I.
            jacobian_map = nn.Dense(
                4 * k,
                dtype=jnp.float32,
                kernel_init=nn.initializers.zeros,
                bias_init=identity_jacobian_bias(k),
                name="jacobian_head",
            )(features).reshape(batch, height, width, 4 * k)
        else:
            jacobian_map = maps[1]
        if self.keypoints == "self_supervised":
            if maps is None:
                emb = MLPHead(self.d_model, self.head_layers, name="keypoint_head")(keypoint_emb)
                logits = jnp.einsum("bnd,bkd->bnk", features, emb) * self._map_scale()
                logits = logits.reshape(batch, height, width, k)
            else:
                logits = maps[0]
            points, heat = motion.soft_argmax(logits, self.temperature)
        elif heatmaps is not None:
            heat = group_heatmaps(heatmaps, size, k, self.keypoint_groups)
            points = motion.expected_position(heat)
        elif train:
            raise UserError(
                "model.keypoints='heatmaps' needs pose heatmaps; set --config.pose.source "
                "to ground_truth (synthetic), precomputed or online"
            )
        else:
            return {}
        out = {
            "keypoints": points,
            "jacobians": motion.pool_jacobians(heat, jacobian_map),
            "keypoint_heatmaps": heat,
        }
        if self.keypoints == "heatmaps":  # for loss.consistency_motions="joints"
            out["joints"], visible = motion.heatmap_joints(heatmaps)
            members = group_members(k, self.keypoint_groups, heatmaps.shape[-1])  # [K, J]
            out["joint_weights"] = members * visible[:, None, :].astype(jnp.float32)
        return out

    def _global_branch(self, features, size, train: bool) -> tuple[dict, dict]:
        """({"global": [B, d]}, aux with feature_maps, global_feat and logits)."""
        batch, d = features.shape[0], self.d_model
        global_feat = jnp.mean(features, axis=1)
        aux = {
            "feature_maps": features.reshape(batch, *size, d),
            "global_feat": global_feat,
        }
        out = {"global": self._bnneck(global_feat, train, "bottleneck")}
        if self.num_classes:
            aux["logits"] = classifier(self.num_classes, "classifier")(out["global"])
        return out, aux

    def _segment_input(self, features: jax.Array, stages: list) -> jax.Array:
        """What the segment embeddings multiply (`segment_features`): f_g [B, h, w, d] (from
        `features` [B, h * w, d]), or the backbone map of stage `segment_stage` through its
        own projection to [B, hs, ws, d], plus with `segment_context` f_g's own projection
        resized to it."""
        height, width = stages[-1].shape[1:3]
        features = features.reshape(-1, height, width, self.d_model)
        if self.segment_features == "encoder":
            return features
        fmap = stages[self.segment_stage - 1]
        out = nn.Dense(self.d_model, dtype=jnp.float32, name="segment_proj")(
            fmap.astype(jnp.float32)
        )
        if self.segment_context:
            context = nn.Dense(self.d_model, dtype=jnp.float32, name="segment_context")(features)
            out = out + jax.image.resize(context, out.shape, "linear")
        return out

    def _segment_logits(self, segment_input: jax.Array, segment_emb: jax.Array) -> jax.Array:
        """Segment embeddings [B, K+1, d] times the map [B, hs, ws, d]: [B, hs, ws, K+1]."""
        emb = MLPHead(self.d_model, self.head_layers, name="segment_head")(segment_emb)
        batch, height, width, d = segment_input.shape
        flat = segment_input.reshape(batch, -1, d)  # [B, hs * ws, d]
        logits = jnp.einsum("bnd,bkd->bnk", flat, emb) * self._map_scale()
        return logits.reshape(batch, height, width, -1)

    def _parts(self, features, logits, size, train: bool, anchors=None) -> tuple[dict, dict]:
        """K+1 segmentation (softmax of `logits` [B, hs, ws, K+1]), part features pooled from
        f_g [B, h * w, d] and visibility: ({"parts", "visibility"}, aux)."""
        batch, d, k = features.shape[0], self.d_model, self.num_parts
        height, width = size
        seg_size = logits.shape[1:3]
        logits = logits.reshape(batch, -1, k + 1)
        if anchors is not None:
            prior = motion.keypoint_prior_logits(anchors, seg_size, self.segmentation_prior_sigma)
            logits = logits + prior.reshape(logits.shape)
        seg_flat = jax.nn.softmax(logits, axis=-1)  # [B, hs * ws, K+1]
        seg = seg_flat.reshape(batch, *seg_size, k + 1)
        if seg_size != (height, width):  # a finer segmentation, averaged to f_g's cells
            fy, fx = seg_size[0] // height, seg_size[1] // width
            pooled = seg.reshape(batch, height, fy, width, fx, k + 1).mean(axis=(2, 4))
            seg_flat = pooled.reshape(batch, height * width, k + 1)
        part_weights = seg_flat[..., 1:]  # [B, h * w, K], background out
        mass = part_weights.sum(axis=1)  # [B, K]
        part_feat = jnp.einsum("bnk,bnd->bkd", part_weights, features) / (mass[..., None] + 1e-6)
        bn_parts = self._bnneck(part_feat.reshape(batch, k * d), train, "part_bottleneck")
        out = {"parts": bn_parts.reshape(batch, k, d), "visibility": mass / (height * width)}
        aux = {"segmentation": seg, "part_feat": part_feat}
        if self.num_classes:
            kernel = self.param(
                "part_classifier", classifier_init, (k, d, self.num_classes), jnp.float32
            )
            aux["part_logits"] = jnp.einsum("bkd,kdc->bkc", out["parts"], kernel)
        return out, aux

    def _bnneck(self, feat: jax.Array, train: bool, name: str) -> jax.Array:
        """BatchNorm1d with the bias frozen at zero (omitted), float32."""
        return bnneck(train, self.bn_axis_name, name)(feat)
