"""Re-ID models (flax.linen). Each returns `(embeddings, aux)`; see the model's docstring."""

from __future__ import annotations

import flax.linen as nn

from occreid_jax.errors import UserError
from occreid_jax.nets.baseline import Baseline
from occreid_jax.nets.mat import Mat
from occreid_jax.nets.pirt import Pirt
from occreid_jax.nets.resnet import BACKBONES, feature_dim, get_backbone

MODELS: dict[str, type[nn.Module]] = {"baseline": Baseline, "pirt": Pirt, "mat": Mat}


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiates the model registered as `name` with constructor `kwargs`.

    Raises:
      UserError: for an unknown model name (or an unknown backbone inside the model).
    """
    if name not in MODELS:
        raise UserError(f"Unknown model {name!r}; known models: {', '.join(MODELS)}.")
    return MODELS[name](**kwargs)


__all__ = [
    "BACKBONES",
    "MODELS",
    "Baseline",
    "Mat",
    "Pirt",
    "build_model",
    "feature_dim",
    "get_backbone",
]
