"""Pirt's building blocks: pose-guided masks, the intra-part relational module, the transformer.

Sources: the paper (Ma et al., ACM MM 2021, Sect. 3.2-3.4) and the authors' released code,
followed where the paper is vague (docs/pirt-released-code.md). Shapes are for a 384 x 128
input and a ResNet-50 with last stride 1: feature map F [B, 24, 8, 2048], heatmaps
[B, 96, 32, 17].

    heatmaps --max pool to the feature grid--> M [B, h, w, 17]
      joint_masks   M > tau                                    [B, h, w, 17]  (0/1)
      group_conf    max over space of the group's max over joints  [B, 3]
      human_mask C  max over the 17 joints                     [B, h, w, 1]
    IntraPartRelation(F, C) -> F_irm [B, h, w, 2048]
    RelationalTransformer(tokens [B, T, 2048]) -> [B, T, 2048]  (one set of weights, shared)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError
from occreid_jax.nets.resnet import IBN, NORM_EPS, batch_norm, conv_kernel_init

# Joint groups in COCO order, as released: arms, legs, head. The released head group includes
# the left shoulder (joint 5), which is also in the arms group; the paper's text ("head, upper
# body, lower body") does not list the joints.
JOINT_GROUPS: tuple[tuple[int, ...], ...] = (
    (5, 7, 9, 6, 8, 10),
    (11, 13, 15, 12, 14, 16),
    (0, 1, 2, 3, 4, 5),
)
NUM_JOINTS = 17

# Released: Linear layers of the transformer and of the stripe layer start from N(0, 0.01).
linear_init = nn.initializers.normal(stddev=0.01)


def adaptive_max_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """torch's adaptive_max_pool2d for sizes that divide evenly: [B, H, W, C] -> [B, h, w, C]."""
    batch, height, width, channels = x.shape
    out_h, out_w = out_hw
    if height % out_h or width % out_w:
        raise UserError(
            f"cannot max-pool a {height}x{width} map to {out_h}x{out_w} (sizes must divide); "
            "use an input size whose feature and heatmap grids are multiples of each other"
        )
    x = x.reshape(batch, out_h, height // out_h, out_w, width // out_w, channels)
    return jnp.max(x, axis=(2, 4))


def pose_guidance(
    heatmaps: jax.Array, feature_hw: tuple[int, int], threshold: float
) -> dict[str, jax.Array]:
    """Masks and confidences from keypoint heatmaps (paper Eq. 1-3; released stripe of code).

    Args:
      heatmaps: [B, Hm, Wm, 17] in [0, 1] (HRNet output at stride 4, or ground truth).
      feature_hw: (h, w) of the backbone's feature map.
      threshold: tau; a joint's mask is `M_j > tau` (0.001 in the paper).

    Returns:
      pooled: M [B, h, w, 17], the heatmaps max-pooled to the feature grid (the paper's GMP).
      joint_masks: [B, h, w, 17] float 0/1.
      group_confidence: [B, 3] the spatial max of each group's mask (max over its joints).
      human_mask: C [B, h, w, 1], the max over all joints (raw values, not binarised).
    """
    pooled = adaptive_max_pool(heatmaps.astype(jnp.float32), feature_hw)
    groups = jnp.stack([jnp.max(pooled[..., list(g)], axis=-1) for g in JOINT_GROUPS], axis=-1)
    return {
        "pooled": pooled,
        "joint_masks": (pooled > threshold).astype(jnp.float32),
        "group_confidence": jnp.max(groups, axis=(1, 2)),
        "human_mask": jnp.max(pooled, axis=-1, keepdims=True),
    }


def joint_features(fmap: jax.Array, joint_masks: jax.Array) -> jax.Array:
    """Masked average pooling per joint, dividing by h * w as released (not by the mask area).

    Args:
      fmap: F_irm [B, h, w, C]; joint_masks: [B, h, w, J] 0/1.
    Returns:
      [B, J, C].
    """
    h, w = fmap.shape[1:3]
    return jnp.einsum("bhwc,bhwj->bjc", fmap, joint_masks) / (h * w)


class StripeAttention(nn.Module):
    """Multi-head self-attention among the positions of each horizontal stripe (one row).

    Released: q/k/v are bias-free 1x1 convs, 4 heads of 128 channels, scale 1/sqrt(d_head), no
    output projection. The paper's Eq. 7 has an output projection W^H: `out_proj=True`.

    Attributes:
      num_heads: heads; the channel count must divide by it.
      out_proj: add the paper's output projection (not in the released code).
    """

    num_heads: int = 4
    out_proj: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, h, w, d] -> [B, h, w, d]; row r's output depends only on row r's input."""
        batch, height, width, dim = x.shape
        if dim % self.num_heads:
            raise UserError(f"stripe attention width {dim} is not divisible by {self.num_heads}")
        head_dim = dim // self.num_heads

        def project(name):
            y = nn.Dense(dim, use_bias=False, kernel_init=linear_init, name=name)(x)
            return y.reshape(batch, height, width, self.num_heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        logits = jnp.einsum("brqhd,brkhd->brhqk", q, k) / jnp.sqrt(float(head_dim))
        out = jnp.einsum("brhqk,brkhd->brqhd", jax.nn.softmax(logits, axis=-1), v)
        out = out.reshape(batch, height, width, dim)
        if self.out_proj:
            out = nn.Dense(dim, kernel_init=linear_init, name="out")(out)
        return out


class IntraPartRelation(nn.Module):
    """The intra-part relational module (the released "stripe layer"), paper Eq. 4-8.

        F_phi  = ReLU(IBN(conv1x1_{C->d}(F)))
        F*_phi = ReLU(BN(StripeAttention(F_phi) + Dropout(F_phi)))
        F_irm  = ReLU(BN(conv1x1_{d->C}(F*_phi)) + C_mask * F)

    Attributes:
      width: d, the reduced width (512 for C=2048 as released).
      num_heads: stripe-attention heads (4 as released).
      residual_dropout: the "stochastic identity" on the residual (0.3 as released).
      out_proj: the paper's attention output projection (off as released).
      bn_axis_name: axis for synchronised BatchNorm.
    """

    width: int = 512
    num_heads: int = 4
    residual_dropout: float = 0.3
    out_proj: bool = False
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, fmap: jax.Array, human_mask: jax.Array, train: bool) -> jax.Array:
        """fmap F [B, h, w, C], human_mask C [B, h, w, 1] -> F_irm [B, h, w, C] (float32)."""
        channels = fmap.shape[-1]
        reduced = nn.Conv(
            self.width, (1, 1), use_bias=False, kernel_init=conv_kernel_init, name="reduce"
        )(fmap)
        reduced = IBN(self.width, bn_axis_name=self.bn_axis_name, name="reduce_norm")(
            reduced, train
        )
        reduced = nn.relu(reduced)
        attended = StripeAttention(self.num_heads, self.out_proj, name="attention")(reduced)
        residual = nn.Dropout(self.residual_dropout, deterministic=not train)(reduced)
        mixed = batch_norm(train, jnp.float32, self.bn_axis_name, "attention_norm")(
            attended + residual
        )
        mixed = nn.relu(mixed)
        restored = nn.Conv(
            channels, (1, 1), use_bias=False, kernel_init=conv_kernel_init, name="restore"
        )(mixed)
        restored = batch_norm(train, jnp.float32, self.bn_axis_name, "restore_norm")(restored)
        return nn.relu(restored + human_mask * fmap)


class TransformerLayer(nn.Module):
    """Post-LayerNorm transformer encoder layer (torch's nn.TransformerEncoderLayer, ReLU).

    x = LN(x + Dropout(MHSA(x)));  x = LN(x + Dropout(W2 Dropout(ReLU(W1 x))))
    """

    num_heads: int = 8
    ffn_dim: int = 512
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, T, d] -> [B, T, d]."""
        dim = x.shape[-1]
        drop = nn.Dropout(self.dropout, deterministic=not train)
        # torch's MultiheadAttention: in-projection xavier-uniform with zero bias (it is not an
        # nn.Linear, so the released N(0, 0.01) init does not reach it); out-projection Linear.
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            kernel_init=nn.initializers.xavier_uniform(),
            out_kernel_init=linear_init,
            dropout_rate=self.dropout,  # torch's TransformerEncoderLayer drops attention too
            deterministic=not train,
            name="attention",
        )(x, x)
        x = nn.LayerNorm(epsilon=NORM_EPS, name="norm1")(x + drop(attention))
        hidden = nn.relu(nn.Dense(self.ffn_dim, kernel_init=linear_init, name="linear1")(x))
        hidden = nn.Dense(dim, kernel_init=linear_init, name="linear2")(drop(hidden))
        return nn.LayerNorm(epsilon=NORM_EPS, name="norm2")(x + drop(hidden))


class RelationalTransformer(nn.Module):
    """The inter-part relational transformer: `num_layers` post-LN encoder layers.

    One instance is called on every token set (each joint group, the stripes, the patches), so
    all of them share one set of weights, as released.
    """

    num_layers: int = 3
    num_heads: int = 8
    ffn_dim: int = 512
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:
        """[B, T, d] -> [B, T, d]."""
        for i in range(self.num_layers):
            tokens = TransformerLayer(self.num_heads, self.ffn_dim, self.dropout, name=f"layer{i}")(
                tokens, train
            )
        return tokens


class ConfidenceScore(nn.Module):
    """The confidence score module (Eq. 13-14): an MLP score per part, times the pose score.

    s = sigmoid(W2 ReLU(W1 f)); conf = L1-normalise(s * group_confidence) over the parts.
    The sigmoid is released, not in the paper's Eq. 13.
    """

    hidden_dim: int = 512

    @nn.compact
    def __call__(self, parts: jax.Array, group_confidence: jax.Array) -> jax.Array:
        """parts [B, P, d], group_confidence [B, P] -> confidences [B, P] (sum 1, or all 0)."""
        hidden = nn.relu(nn.Dense(self.hidden_dim, kernel_init=linear_init, name="fc1")(parts))
        score = nn.sigmoid(nn.Dense(1, kernel_init=linear_init, name="fc2")(hidden))[..., 0]
        weighted = score * group_confidence
        # torch F.normalize(p=1, eps=1e-12).
        return weighted / jnp.maximum(jnp.sum(jnp.abs(weighted), -1, keepdims=True), 1e-12)
