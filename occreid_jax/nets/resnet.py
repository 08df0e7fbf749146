"""ResNet backbones (bottleneck, torchvision layout) with optional IBN-a and Re-ID last stride.

The module tree mirrors torchvision's `ResNet` (and XingangPan/IBN-Net's `resnet50_ibn_a`)
so that a PyTorch state dict converts by name:

    torch key                          flax path (collection "params" or "batch_stats")
    conv1.weight                       conv1/kernel                       (OIHW -> HWIO)
    bn1.{weight,bias}                  bn1/{scale,bias}
    bn1.{running_mean,running_var}     bn1/{mean,var}                     (batch_stats)
    layer2.0.conv2.weight              layer2_0/conv2/kernel
    layer2.0.downsample.0.weight       layer2_0/downsample_conv/kernel
    layer2.0.downsample.1.*            layer2_0/downsample_bn/*
    layer2.0.bn1.IN.{weight,bias}      layer2_0/bn1/IN/{scale,bias}       (IBN-a only)
    layer2.0.bn1.BN.*                  layer2_0/bn1/BN/*                  (IBN-a only)

Everything that affects numerics follows PyTorch: explicit paddings on the 7x7/2 and 3x3 convs
and on the 3x3/2 max pool (padded with -inf), no conv bias, BatchNorm epsilon 1e-5 and
momentum 0.9 in flax terms (0.1 in torch terms), affine InstanceNorm with epsilon 1e-5.
One known difference remains: in training flax updates the running variance with the biased
batch variance, torch with the unbiased one (a factor n / (n - 1), n = B * H * W).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.errors import UserError

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9  # flax convention: new = 0.9 * old + 0.1 * batch (torch momentum 0.1).
NORM_EPS = 1e-5


def batch_norm(
    train: bool, dtype: Any, axis_name: str | None, name: str
) -> Callable[[jax.Array], jax.Array]:
    """BatchNorm matching torch (eps 1e-5, momentum 0.1), synced over `axis_name` if given."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=NORM_EPS,
        dtype=dtype,
        axis_name=axis_name,
        name=name,
    )


class IBN(nn.Module):
    """IBN-a normalisation: affine InstanceNorm on the first channels, BatchNorm on the rest.

    Attributes:
      planes: number of input (= output) channels.
      ratio: fraction of channels that go through InstanceNorm (`int(planes * ratio)`).
      dtype: compute dtype.
      bn_axis_name: pmap/shard_map axis over which the BatchNorm part syncs its statistics.
    """

    planes: int
    ratio: float = 0.5
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, planes] -> [B, H, W, planes]."""
        half = int(self.planes * self.ratio)
        x_in = nn.InstanceNorm(epsilon=NORM_EPS, dtype=self.dtype, name="IN")(x[..., :half])
        x_bn = batch_norm(train, self.dtype, self.bn_axis_name, "BN")(x[..., half:])
        return jnp.concatenate([x_in, x_bn], axis=-1)


class Bottleneck(nn.Module):
    """torchvision bottleneck (v1.5: stride on the 3x3 conv), output `4 * planes` channels.

    Attributes:
      planes: width of the 1x1 -> 3x3 part; the block outputs `4 * planes` channels.
      strides: stride of the 3x3 conv and of the downsample conv.
      downsample: add the 1x1 conv + BN projection on the shortcut.
      ibn: replace `bn1` by IBN-a (InstanceNorm on half the channels).
      dtype: compute dtype.
      bn_axis_name: axis name for synchronised BatchNorm.
    """

    planes: int
    strides: int = 1
    downsample: bool = False
    ibn: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, C] -> [B, H / strides, W / strides, 4 * planes]."""
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init
        )
        s = self.strides

        y = conv(self.planes, (1, 1), padding="VALID", name="conv1")(x)
        if self.ibn:
            y = IBN(self.planes, dtype=self.dtype, bn_axis_name=self.bn_axis_name, name="bn1")(
                y, train
            )
        else:
            y = batch_norm(train, self.dtype, self.bn_axis_name, "bn1")(y)
        y = nn.relu(y)
        y = conv(self.planes, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, "bn2")(y))
        y = conv(4 * self.planes, (1, 1), padding="VALID", name="conv3")(y)
        y = batch_norm(train, self.dtype, self.bn_axis_name, "bn3")(y)

        shortcut = x
        if self.downsample:
            shortcut = conv(
                4 * self.planes, (1, 1), strides=(s, s), padding="VALID", name="downsample_conv"
            )(x)
            shortcut = batch_norm(train, self.dtype, self.bn_axis_name, "downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet trunk without the pooling/fc head.

    Attributes:
      stage_sizes: bottleneck blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      width: base width (stem channels and planes of the first stage); 64 for ResNet-50.
        Stage i has planes `width * 2**i` and outputs `4 * width * 2**i` channels.
      last_stride: stride of the last stage (1 for Re-ID, 2 as in ImageNet ResNets).
      ibn: IBN-a; every block of every stage except the last uses IBN for its `bn1`.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
      bn_axis_name: axis name passed to every BatchNorm so that batch statistics are
        averaged over devices under pmap/shard_map (the training code uses "batch").
    """

    stage_sizes: Sequence[int]
    width: int = 64
    last_stride: int = 1
    ibn: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Feature map of an image batch.

        Args:
          x: [B, H, W, 3] float images (ImageNet-normalised).
          train: use batch statistics (and update running ones) in BatchNorm.

        Returns:
          [B, H / (16 * last_stride), W / (16 * last_stride), 32 * width] feature map in
          `dtype` (for 4 stages; H, W multiples of 32).
        """
        return self.stage_outputs(x, train)[-1]

    @nn.compact
    def stage_outputs(self, x: jax.Array, train: bool) -> list[jax.Array]:
        """The output of every stage: [B, H / 4, W / 4, 4 * width] for stage 1, then each
        stage at half the resolution (the last at `last_stride`) and twice the channels."""
        x = nn.Conv(
            self.width,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_kernel_init,
            name="conv1",
        )(x)
        x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, "bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf

        num_stages = len(self.stage_sizes)
        outputs = []
        for i, num_blocks in enumerate(self.stage_sizes):
            last = i == num_stages - 1
            stage_stride = 1 if i == 0 else (self.last_stride if last else 2)
            for j in range(num_blocks):
                x = Bottleneck(
                    planes=self.width * 2**i,
                    strides=stage_stride if j == 0 else 1,
                    downsample=j == 0,
                    ibn=self.ibn and not last,
                    dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
            outputs.append(x)
        return outputs


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet50IBNa = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), ibn=True)
# Small CPU variants for tests and demos (same topology, far fewer channels/blocks).
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), width=16)
ResNetTinyIBNa = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), width=16, ibn=True)
ResNetSmall = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=32)

BACKBONES: dict[str, functools.partial[ResNet]] = {
    "resnet50": ResNet50,
    "resnet50_ibn_a": ResNet50IBNa,
    "resnet_tiny": ResNetTiny,
    "resnet_tiny_ibn_a": ResNetTinyIBNa,
    "resnet_small": ResNetSmall,
}


def get_backbone(name: str) -> functools.partial[ResNet]:
    """The backbone constructor registered as `name`; raises UserError for an unknown name."""
    if name not in BACKBONES:
        raise UserError(f"Unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def feature_dim(name: str) -> int:
    """Channels of the feature map produced by backbone `name` (2048 for resnet50)."""
    keywords = get_backbone(name).keywords
    width = keywords.get("width", 64)
    return 4 * width * 2 ** (len(keywords["stage_sizes"]) - 1)
