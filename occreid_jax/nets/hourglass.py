"""Co-part segmentation's part predictor: an hourglass over the image itself.

Motion-supervised co-part segmentation (Siarohin et al. 2020, public repository
AliaksandrSiarohin/motion-cosegmentation, `modules/segmentation_module.py` and
`modules/util.py`) predicts its K+1 part segmentation, its keypoints and their affine maps
from one small encoder-decoder over the image, blurred and subsampled to the segmentation's
resolution (its TaiChi model: 256 x 256 images read at 64 x 64, stride 4). Every pixel of
that map then has its own receptive field over the whole body, which the Re-ID backbone's
shared linear segmentation head lacks (README, "The image-reconstruction signal").

    image [B, H, W, 3] -> Gaussian blur (sigma (stride - 1) / 2) -> every stride-th pixel
      -> [B, H/s, W/s, 3] -> down blocks (conv 3x3, BatchNorm, ReLU, 2x2 average pool) x n
      -> up blocks (2x nearest upsampling, conv 3x3, BatchNorm, ReLU), each concatenated with
         the encoder map of its size, the last with the subsampled image
      -> map [B, H/s, W/s, expansion + 3]
      -> 7x7 convs: K+1 segmentation logits, K keypoint logits, 4K Jacobian entries

As in the repository: widths `min(max_features, expansion * 2^(i+1))` for down block i, the
Jacobian conv starts at zero weights and an identity bias, BatchNorm with torch's defaults
(epsilon 1e-5, momentum 0.9 in flax terms). Not from it: BatchNorm is synchronised over
`axis_name` under pmap (the repository's SynchronizedBatchNorm2d does the same over GPUs).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from occreid_jax.nets.mat_heads import identity_jacobian_bias


def antialias_subsample(images: jax.Array, stride: int) -> jax.Array:
    """Co-part segmentation's `AntiAliasInterpolation2d` at scale 1/stride.

    A separable Gaussian of sigma (stride - 1) / 2 over 2 round(4 sigma) + 1 taps (zero
    padding), then every stride-th pixel from the first ([B, H, W, C] -> [B, H/s, W/s, C]).
    """
    if stride == 1:
        return images
    sigma = (stride - 1) / 2
    taps = 2 * round(sigma * 4) + 1
    grid = jnp.arange(taps, dtype=jnp.float32) - (taps - 1) / 2
    kernel = jnp.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[-1]
    half = taps // 2
    out = images.astype(jnp.float32)
    for axis, shape in ((1, (taps, 1, 1, 1)), (2, (1, taps, 1, 1))):
        padding = [(half, half) if a == axis else (0, 0) for a in (1, 2)]
        taps_hwio = jnp.broadcast_to(kernel.reshape(shape), (*shape[:3], channels))
        out = jax.lax.conv_general_dilated(
            out,
            taps_hwio,
            window_strides=(1, 1),
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    # lax.slice, not out[:, ::stride, ::stride]: with a symbolic batch size (exports) the
    # strided index becomes a two-axis gather, which ONNX cannot take.
    return jax.lax.slice(out, (0, 0, 0, 0), out.shape, (1, stride, stride, 1))


class Hourglass(nn.Module):
    """Encoder-decoder with skip concatenations: [B, h, w, C] -> [B, h, w, expansion + C].

    h and w must be divisible by 2^num_blocks.
    """

    expansion: int = 32
    num_blocks: int = 3
    max_features: int = 256
    axis_name: str | None = None

    def _norm_relu(self, x, train: bool, name: str):
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            axis_name=self.axis_name if train else None, name=name,
        )(x)  # fmt: skip
        return nn.relu(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def width(i):
            return min(self.max_features, self.expansion * 2**i)

        skips = [x]
        for i in range(self.num_blocks):
            y = nn.Conv(width(i + 1), (3, 3), padding=1, name=f"down_{i}")(skips[-1])
            y = self._norm_relu(y, train, f"down_{i}_norm")
            skips.append(nn.avg_pool(y, (2, 2), (2, 2)))
        out = skips.pop()
        for i in reversed(range(self.num_blocks)):
            batch, height, width_, channels = out.shape
            out = jax.image.resize(out, (batch, 2 * height, 2 * width_, channels), "nearest")
            out = nn.Conv(width(i), (3, 3), padding=1, name=f"up_{i}")(out)
            out = self._norm_relu(out, train, f"up_{i}_norm")
            out = jnp.concatenate([out, skips.pop()], axis=-1)
        return out


class CoPartPredictor(nn.Module):
    """Segmentation, keypoint and Jacobian maps from the image at stride `stride`.

    Returns (segmentation logits [B, H/s, W/s, K+1] (channel 0 background), keypoint logits
    [B, H/s, W/s, K], Jacobian map [B, H/s, W/s, 4K], identity where untrained).
    """

    num_parts: int
    stride: int = 4
    expansion: int = 32
    num_blocks: int = 3
    max_features: int = 256
    axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool):
        small = antialias_subsample(images.astype(jnp.float32), self.stride)
        fmap = Hourglass(
            self.expansion, self.num_blocks, self.max_features, self.axis_name,
            name="hourglass",
        )(small, train)  # fmt: skip
        k = self.num_parts
        segmentation = nn.Conv(k + 1, (7, 7), padding=3, name="segmentation")(fmap)
        keypoints = nn.Conv(k, (7, 7), padding=3, name="keypoints")(fmap)
        jacobians = nn.Conv(
            4 * k, (7, 7), padding=3, kernel_init=nn.initializers.zeros,
            bias_init=identity_jacobian_bias(k), name="jacobians",
        )(fmap)  # fmt: skip
        return segmentation, keypoints, jacobians
