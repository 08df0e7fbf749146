"""Training objectives: small pure functions of model outputs and labels."""

from occreid_jax.losses.classification import cross_entropy_label_smoothing
from occreid_jax.losses.triplet import hard_example_mining, pairwise_distance, triplet_loss

__all__ = [
    "cross_entropy_label_smoothing",
    "hard_example_mining",
    "pairwise_distance",
    "triplet_loss",
]
