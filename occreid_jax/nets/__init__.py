"""Re-ID models (flax.linen). Each returns `(embeddings, aux)`; see the model's docstring.

Models are looked up by name through their family record (`occreid_jax/families.py`).
"""

from __future__ import annotations

from occreid_jax.nets.baseline import Baseline
from occreid_jax.nets.mat import Mat
from occreid_jax.nets.pirt import Pirt
from occreid_jax.nets.resnet import BACKBONES, feature_dim, get_backbone

__all__ = [
    "BACKBONES",
    "Baseline",
    "Mat",
    "Pirt",
    "feature_dim",
    "get_backbone",
]
