"""Transformer encoder / decoder layers (post-LayerNorm, as Vaswani et al. and DETR) for MAT.

MAT's paper states only the structure (self-attention, feed-forward, LayerNorm; 6 encoder
layers, 1 decoder layer). The rest follows DETR, the encoder-decoder MAT's description
mirrors (not in the paper): post-norm residual blocks, ReLU feed-forward, dropout on the
attention weights and on each residual branch, Xavier-uniform weights.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

xavier = nn.initializers.xavier_uniform()


def sine_position_embedding(height: int, width: int, dims: int) -> jax.Array:
    """DETR's 2D sine embedding (normalised, scale 2 pi, temperature 10000).

    Args:
      height, width: feature map size.
      dims: output channels (even); the first half encodes y, the second half x.

    Returns:
      [height, width, dims] float32.
    """
    if dims % 2:
        raise ValueError(f"position embedding needs an even width, got {dims}")
    feats = dims // 2
    scale = 2.0 * math.pi
    y = jnp.arange(1, height + 1, dtype=jnp.float32) / height * scale
    x = jnp.arange(1, width + 1, dtype=jnp.float32) / width * scale
    dim_t = 10000.0 ** (2.0 * (jnp.arange(feats) // 2) / feats)

    def encode(values):  # [n] -> [n, feats], sin on even and cos on odd channels
        angles = values[:, None] / dim_t
        return jnp.where(jnp.arange(feats) % 2 == 0, jnp.sin(angles), jnp.cos(angles))

    pos_y = jnp.broadcast_to(encode(y)[:, None, :], (height, width, feats))
    pos_x = jnp.broadcast_to(encode(x)[None, :, :], (height, width, feats))
    return jnp.concatenate([pos_y, pos_x], axis=-1)


class FeedForward(nn.Module):
    """Dense(ffn_dim) -> ReLU -> dropout -> Dense(d_model)."""

    d_model: int
    ffn_dim: int
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Dense(self.ffn_dim, dtype=self.dtype, kernel_init=xavier, name="linear1")(x)
        y = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(y))
        return nn.Dense(self.d_model, dtype=self.dtype, kernel_init=xavier, name="linear2")(y)


def attention(num_heads: int, dropout: float, dtype: Any, train: bool, name: str) -> nn.Module:
    """DETR's multi-head attention (Xavier kernels, attention dropout), built inside a parent
    module's compact method. The softmax runs in float32 whatever the compute dtype."""
    return nn.MultiHeadDotProductAttention(
        num_heads,
        dtype=dtype,
        force_fp32_for_softmax=True,
        dropout_rate=dropout,
        deterministic=not train,
        kernel_init=xavier,
        name=name,
    )


class EncoderLayer(nn.Module):
    """x = LN(x + SelfAttn(x)); x = LN(x + FFN(x)). Shapes [B, N, d_model] -> same."""

    d_model: int
    num_heads: int
    ffn_dim: int
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)
        attn = attention(self.num_heads, self.dropout, self.dtype, train, "self_attn")(x, x)
        x = nn.LayerNorm(dtype=self.dtype, name="norm1")(x + drop(attn))
        y = FeedForward(self.d_model, self.ffn_dim, self.dropout, self.dtype, name="ffn")(x, train)
        return nn.LayerNorm(dtype=self.dtype, name="norm2")(x + drop(y))


class DecoderLayer(nn.Module):
    """Queries: LN(q + SelfAttn(q)); LN(q + CrossAttn(q, memory)); LN(q + FFN(q)).

    Shapes: queries [B, Q, d_model], memory [B, N, d_model] -> [B, Q, d_model].
    """

    d_model: int
    num_heads: int
    ffn_dim: int
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, memory: jax.Array, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)

        def attend(name, keys):
            return attention(self.num_heads, self.dropout, self.dtype, train, name)(q, keys)

        q = nn.LayerNorm(dtype=self.dtype, name="norm1")(q + drop(attend("self_attn", q)))
        cross = attend("cross_attn", memory)
        q = nn.LayerNorm(dtype=self.dtype, name="norm2")(q + drop(cross))
        y = FeedForward(self.d_model, self.ffn_dim, self.dropout, self.dtype, name="ffn")(q, train)
        return nn.LayerNorm(dtype=self.dtype, name="norm3")(q + drop(y))
