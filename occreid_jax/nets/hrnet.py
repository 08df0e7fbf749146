"""HRNet pose network (Sun et al. 2019) in flax.linen, the layout of the official COCO models.

Mirrors leoxiaobin/deep-high-resolution-net.pytorch `lib/models/pose_hrnet.py` so that the
released `pose_hrnet_w{32,48}_256x192.pth` state dicts convert by name (see `convert.py`):

    torch key                                  flax path ("params" / "batch_stats")
    conv1.weight, bn1.*, conv2.weight, bn2.*   conv1/kernel, bn1/*, conv2/kernel, bn2/*
    layer1.{j}.conv1.weight                    layer1_{j}/conv1/kernel (resnet.Bottleneck)
    layer1.0.downsample.{0,1}.*                layer1_0/downsample_{conv,bn}/*
    transition1.0.{0,1}.*                      transition1_0/{conv,bn}/*       (same resolution)
    transition1.1.0.{0,1}.*                    transition1_1_0/{conv,bn}/*     (new branch)
    stage2.{m}.branches.{b}.{k}.conv1.weight   stage2_{m}/branches_{b}_{k}/conv1/kernel
    stage2.{m}.fuse_layers.{i}.{j}.{0,1}.*     stage2_{m}/fuse_layers_{i}_{j}/{conv,bn}/*
    stage2.{m}.fuse_layers.{i}.{j}.{k}.{0,1}.* stage2_{m}/fuse_layers_{i}_{j}_{k}/{conv,bn}/*

(fuse_layers_{i}_{j} upsamples branch j > i into branch i; fuse_layers_{i}_{j}_{k} is step k of
the strided-conv chain that downsamples branch j < i.)
    final_layer.{weight,bias}                  final_layer/{kernel,bias}

Numerics follow PyTorch: explicit (1, 1) padding on every 3x3 conv, no conv bias except the
final 1x1 conv, BatchNorm epsilon 1e-5 and momentum 0.9 in flax terms (0.1 in torch terms),
nearest-neighbour upsampling by an integer factor (`jnp.repeat`, as `nn.Upsample`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.nets.resnet import Bottleneck, batch_norm, conv_kernel_init

NUM_JOINTS = 17  # COCO keypoints.
# (modules, branches) of stages 2, 3, 4; every branch has 4 BasicBlocks (official w32/w48).
STAGES: tuple[tuple[int, int], ...] = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        kernel_init=conv_kernel_init,
        name=name,
    )


def _bn(train: bool, dtype: Any, name: str):
    """BatchNorm as torch's (eps 1e-5, momentum 0.1); the frozen pose net is never synced."""
    return batch_norm(train, dtype, None, name)


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU): torch `nn.Sequential(conv, bn[, relu])`.

    Attributes:
      features: output channels.
      kernel: 1 or 3 (3x3 convs are padded by 1, as in torch).
      strides: 1 or 2.
      relu: apply a ReLU after the BatchNorm.
      dtype: compute dtype.
    """

    features: int
    kernel: int = 3
    strides: int = 1
    relu: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, C] -> [B, ceil(H / strides), ceil(W / strides), features]."""
        x = _conv(self.features, self.kernel, self.strides, self.dtype, "conv")(x)
        x = _bn(train, self.dtype, "bn")(x)
        return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity shortcut (channels in == out, stride 1)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, features] -> [B, H, W, features]."""
        y = nn.relu(
            _bn(train, self.dtype, "bn1")(_conv(self.features, 3, 1, self.dtype, "conv1")(x))
        )
        y = _bn(train, self.dtype, "bn2")(_conv(self.features, 3, 1, self.dtype, "conv2")(y))
        return nn.relu(y + x)


def _upsample(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling [B, H, W, C] -> [B, factor * H, factor * W, C]."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then multi-resolution fusion by sum.

    Attributes:
      channels: channels of each branch, highest resolution first (branch i is at 1 / 2**i
        of branch 0's resolution).
      num_blocks: BasicBlocks per branch.
      multi_scale_output: output every branch; False outputs only the highest resolution.
      dtype: compute dtype.
    """

    channels: Sequence[int]
    num_blocks: int = BLOCKS_PER_BRANCH
    multi_scale_output: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        """xs[i]: [B, H / 2**i, W / 2**i, channels[i]] -> list of the same shapes (or only
        the first when `multi_scale_output` is False)."""
        n = len(self.channels)
        xs = list(xs)
        for b in range(n):
            for k in range(self.num_blocks):
                xs[b] = BasicBlock(self.channels[b], self.dtype, name=f"branches_{b}_{k}")(
                    xs[b], train
                )
        if n == 1:
            return xs

        outputs = []
        for i in range(n if self.multi_scale_output else 1):
            y = None
            for j in range(n):
                if j == i:
                    z = xs[j]
                elif j > i:  # Lower resolution: 1x1 conv + BN, then nearest upsampling.
                    z = ConvBN(
                        self.channels[i],
                        1,
                        relu=False,
                        dtype=self.dtype,
                        name=f"fuse_layers_{i}_{j}",
                    )(xs[j], train)
                    z = _upsample(z, 2 ** (j - i))
                else:  # Higher resolution: i - j strided 3x3 convs, ReLU between them only.
                    z = xs[j]
                    for k in range(i - j):
                        last = k == i - j - 1
                        z = ConvBN(
                            self.channels[i] if last else self.channels[j],
                            3,
                            strides=2,
                            relu=not last,
                            dtype=self.dtype,
                            name=f"fuse_layers_{i}_{j}_{k}",
                        )(z, train)
                y = z if y is None else y + z
            outputs.append(nn.relu(y))
        return outputs


class HRNet(nn.Module):
    """HRNet pose estimator: image -> COCO keypoint heatmaps at 1/4 resolution.

    Attributes:
      width: channels of the highest-resolution branch (32 or 48); branch i has
        `width * 2**i` channels.
      num_joints: output heatmaps (17 COCO keypoints).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32 and the heatmaps are
        returned in float32.
    """

    width: int = 32
    num_joints: int = NUM_JOINTS
    dtype: Any = jnp.float32

    def _transition(
        self, xs: list[jax.Array], prev: Sequence[int], cur: Sequence[int], name: str, train: bool
    ) -> list[jax.Array]:
        """Adapts the branches of one stage to the next; new branches come from the lowest
        resolution by strided 3x3 convs (each + BN + ReLU)."""
        out = []
        for i, channels in enumerate(cur):
            if i < len(prev):
                if channels == prev[i]:
                    out.append(xs[i])
                else:
                    out.append(ConvBN(channels, dtype=self.dtype, name=f"{name}_{i}")(xs[i], train))
            else:
                z = xs[-1]
                for k in range(i + 1 - len(prev)):
                    last = k == i - len(prev)
                    z = ConvBN(
                        channels if last else prev[-1],
                        strides=2,
                        dtype=self.dtype,
                        name=f"{name}_{i}_{k}",
                    )(z, train)
                out.append(z)
        return out

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Keypoint heatmaps of an image batch.

        Args:
          x: [B, H, W, 3] RGB images normalised with the ImageNet mean/std; H and W multiples
            of 32 (e.g. 256x128 -> 64x32 heatmaps, 384x128 -> 96x32).
          train: BatchNorm in batch-statistics mode (the pose net is normally frozen: False).

        Returns:
          [B, H / 4, W / 4, num_joints] float32 heatmaps.
        """
        x = nn.relu(_bn(train, self.dtype, "bn1")(_conv(64, 3, 2, self.dtype, "conv1")(x)))
        x = nn.relu(_bn(train, self.dtype, "bn2")(_conv(64, 3, 2, self.dtype, "conv2")(x)))
        for j in range(4):
            x = Bottleneck(64, downsample=j == 0, dtype=self.dtype, name=f"layer1_{j}")(x, train)

        xs, prev = [x], [4 * 64]
        for s, (num_modules, num_branches) in enumerate(STAGES, start=2):
            channels = [self.width * 2**i for i in range(num_branches)]
            xs = self._transition(xs, prev, channels, f"transition{s - 1}", train)
            for m in range(num_modules):
                final = s == len(STAGES) + 1 and m == num_modules - 1
                xs = HighResolutionModule(
                    channels, multi_scale_output=not final, dtype=self.dtype, name=f"stage{s}_{m}"
                )(xs, train)
            prev = channels

        heatmaps = nn.Conv(
            self.num_joints,
            (1, 1),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=conv_kernel_init,
            name="final_layer",
        )(xs[0])
        return heatmaps.astype(jnp.float32)


HRNetW32 = functools.partial(HRNet, width=32)
HRNetW48 = functools.partial(HRNet, width=48)

POSE_NETS: dict[str, functools.partial[HRNet]] = {"hrnet_w32": HRNetW32, "hrnet_w48": HRNetW48}
