"""Datasets, sampler and input pipeline.

The ImageNet normalisation below is shared by the training pipeline (`augment.normalize`) and
by export bundles, which must not import TensorFlow; hence it lives here, free of imports.
"""

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 pixels
IMAGENET_STD = (58.395, 57.12, 57.375)
