"""PyTorch twin of `occreid_jax.nets.hrnet` (the HRNet pose network), plain torch.nn.

Written from scratch with the module names of leoxiaobin/deep-high-resolution-net.pytorch
`lib/models/pose_hrnet.py`, so its state dict has the keys of the released COCO checkpoints
(`conv1.weight`, `layer1.0.downsample.0.weight`, `transition1.1.0.0.weight`,
`stage2.0.branches.1.3.conv2.weight`, `stage3.2.fuse_layers.2.0.1.1.running_var`,
`final_layer.bias`, ...). Used by the conversion parity tests. Importing it has no side effects.

Layouts: inputs are NCHW here, NHWC in JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmarks.torch_baseline import Bottleneck

STAGES = ((1, 2), (4, 3), (3, 4))  # (modules, branches) of stages 2, 3, 4.
BLOCKS_PER_BRANCH = 4


def conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """Sequential(conv (no bias), BN[, ReLU]): keys `0.weight`, `1.*`."""
    layers = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, identity shortcut (HRNet branches keep channels and resolution)."""

    def __init__(self, planes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class HighResolutionModule(nn.Module):
    """Branches of BasicBlocks + fusion by sum (`fuse_layers[i][j]` is None for i == j)."""

    def __init__(self, channels: Sequence[int], multi_scale_output: bool = True):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(BLOCKS_PER_BRANCH)]) for c in channels
        )
        self.fuse_layers = nn.ModuleList()
        for i in range(n if multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    up = conv_bn(channels[j], channels[i], 1, 1, relu=False)
                    up.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    row.append(up)
                elif j == i:
                    row.append(None)
                else:
                    chain = [
                        conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)
                    ]
                    chain.append(conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*chain))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            out.append(self.relu(y))
        return out


class PoseHighResolutionNet(nn.Module):
    """HRNet pose net: [B, 3, H, W] (ImageNet-normalised) -> [B, num_joints, H/4, W/4].

    Args:
      width: channels of the highest-resolution branch (32 or 48).
      num_joints: output heatmaps (17 for COCO).
    """

    def __init__(self, width: int = 32, num_joints: int = 17):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*[Bottleneck(64 if j == 0 else 256, 64) for j in range(4)])
        prev = [256]
        for s, (num_modules, num_branches) in enumerate(STAGES, start=2):
            channels = [width * 2**i for i in range(num_branches)]
            self.add_module(f"transition{s - 1}", self._transition(prev, channels))
            last_stage = s == len(STAGES) + 1
            modules = [
                HighResolutionModule(channels, not (last_stage and m == num_modules - 1))
                for m in range(num_modules)
            ]
            self.add_module(f"stage{s}", nn.Sequential(*modules))
            prev = channels
        self.final_layer = nn.Conv2d(width, num_joints, 1)

    @staticmethod
    def _transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(None if c == prev[i] else conv_bn(prev[i], c, 3, 1, relu=True))
            else:
                chain = [
                    conv_bn(prev[-1], c if k == i - len(prev) else prev[-1], 3, 2, relu=True)
                    for k in range(i + 1 - len(prev))
                ]
                layers.append(nn.Sequential(*chain))
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(2, len(STAGES) + 2):
            transition = getattr(self, f"transition{s - 1}")
            xs = [
                (xs[i] if layer is None else layer(xs[i])) if i < len(xs) else layer(xs[-1])
                for i, layer in enumerate(transition)
            ]
            xs = getattr(self, f"stage{s}")(xs)
        return self.final_layer(xs[0])
