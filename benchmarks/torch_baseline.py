"""PyTorch twin of `occreid_jax.nets` (ResNet, IBN-a, Baseline) and of the baseline losses.

Written from scratch in plain torch.nn with torchvision's / IBN-Net's module names, so its
state dict has the keys of the public checkpoints (`layer1.0.bn1.IN.weight`, ...). Used by the
parity tests (random weights, same forward in both frameworks) and by the train-step
benchmark that times JAX against PyTorch. Importing this file has no side effects.

Layouts: inputs are NCHW here, NHWC in JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_CONFIGS: dict[str, dict] = {
    "resnet50": {"stage_sizes": (3, 4, 6, 3)},
    "resnet50_ibn_a": {"stage_sizes": (3, 4, 6, 3), "ibn": True},
    "resnet_tiny": {"stage_sizes": (1, 1, 1, 1), "width": 16},
    "resnet_tiny_ibn_a": {"stage_sizes": (1, 1, 1, 1), "width": 16, "ibn": True},
    "resnet_small": {"stage_sizes": (2, 2, 2, 2), "width": 32},
}


class IBN(nn.Module):
    """IBN-a: affine InstanceNorm on the first `int(planes * ratio)` channels, BN on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)


class Bottleneck(nn.Module):
    """torchvision bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), optional IBN-a on bn1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ibn: bool = False):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet trunk (no pooling/fc): [B, 3, H, W] -> [B, 32 * width, H/16, W/16].

    Args:
      stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50.
      width: base width, 64 for ResNet-50.
      last_stride: stride of the last stage (1 for Re-ID).
      ibn: IBN-a in every block of every stage but the last.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        width: int = 64,
        last_stride: int = 1,
        ibn: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        num_stages = len(stage_sizes)
        for i, num_blocks in enumerate(stage_sizes):
            last = i == num_stages - 1
            stride = 1 if i == 0 else (last_stride if last else 2)
            planes = width * 2**i
            blocks = []
            for j in range(num_blocks):
                blocks.append(
                    Bottleneck(inplanes, planes, stride if j == 0 else 1, ibn=ibn and not last)
                )
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = num_stages
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def build_backbone(name: str, last_stride: int = 1) -> ResNet:
    """The twin of `occreid_jax.nets.resnet.BACKBONES[name](last_stride=...)`."""
    return ResNet(last_stride=last_stride, **BACKBONE_CONFIGS[name])


class Baseline(nn.Module):
    """Backbone -> GAP -> BNNeck (bias frozen at 0) -> bias-free classifier (fast-reid names).

    `forward(x [B, 3, H, W])` returns `(embeddings, aux)` like the JAX model:
    `{"global": bn_feat [B, D]}`, `{"global_feat": [B, D], "logits": [B, num_classes]}`
    (no logits when num_classes == 0).
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", last_stride: int = 1):
        super().__init__()
        self.backbone = build_backbone(backbone, last_stride)
        dim = self.backbone.out_channels
        self.bottleneck = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> tuple[dict, dict]:
        global_feat = self.backbone(x).mean(dim=(2, 3))
        bn_feat = self.bottleneck(global_feat)
        aux = {"global_feat": global_feat}
        if self.classifier is not None:
            aux["logits"] = self.classifier(bn_feat)
        return {"global": bn_feat}, aux


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """fast-reid's label-smoothed CE: target 1 - eps, eps / (C - 1) on the other classes,
    summed loss divided by the number of non-zero per-sample losses."""
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    with torch.no_grad():
        targets = torch.full_like(log_probs, eps / (num_classes - 1))
        targets.scatter_(1, labels.unsqueeze(1), 1.0 - eps)
    loss = (-targets * log_probs).sum(dim=1)
    with torch.no_grad():
        count = max(int(torch.count_nonzero(loss)), 1)
    return loss.sum() / count


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """fast-reid's pairwise distance: sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12))."""
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).t()
    return (xx + yy - 2.0 * x @ y.t()).clamp(min=1e-12).sqrt()


def triplet_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    norm_feat: bool = False,
) -> torch.Tensor:
    """fast-reid's batch-hard triplet: hinge (margin_ranking_loss) if margin > 0, else soft
    margin. As fast-reid, mining reshapes the masked rows, so every identity in the batch must
    have the same number of samples (P x K batches)."""
    if norm_feat:
        embedding = F.normalize(embedding, dim=-1)
    dist = euclidean_dist(embedding, embedding)
    n = dist.shape[0]
    is_pos = labels.view(n, 1).eq(labels.view(1, n))
    is_neg = ~is_pos
    dist_ap = dist[is_pos].contiguous().view(n, -1).max(dim=1).values
    dist_an = dist[is_neg].contiguous().view(n, -1).min(dim=1).values
    y = torch.ones_like(dist_an)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    return F.soft_margin_loss(dist_an - dist_ap, y)


def baseline_loss(
    aux: dict,
    labels: torch.Tensor,
    eps: float = 0.1,
    margin: float = 0.0,
) -> torch.Tensor:
    """CE with label smoothing on the logits + batch-hard triplet on the pre-BNNeck features
    (margin 0 = soft margin, the Pirt setting), both weight 1."""
    return cross_entropy_loss(aux["logits"], labels, eps) + triplet_loss(
        aux["global_feat"], labels, margin
    )
