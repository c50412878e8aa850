"""How much samples differ from one another: what a collapsed model (one image whatever the
noise) lacks, measured against the same number on real images."""

import torch

from lib.metrics.scores import mean_pairwise_distance


def spread(images: torch.Tensor) -> float:
    """Mean pixel distance between two images of a batch: 0 when all are one image."""
    return mean_pairwise_distance(images.flatten(1))


def class_spread(images: torch.Tensor, labels: torch.Tensor) -> float:
    """`spread` within each class, averaged: 0 for a model with one image per class."""
    return sum(spread(images[labels == c]) for c in labels.unique()) / len(labels.unique())
