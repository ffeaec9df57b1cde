"""Rewards and feature extractors the search scores candidates with.

A `Reward` maps images (B, 3, H, W) in [0, 1] and labels (B,) to scores (B,), higher is better; a
`FeatureExtractor` maps images to vectors (B, D) for diversity clustering. Any callable with those
signatures plugs in, e.g. a CLIP similarity, an aesthetic head or DINOv2 features (README). One
with the attribute `input = "latent"` reads the partial latent instead, `(f_hat, labels, scale_index)`
or `(f_hat, scale_index)`, and spares the decode (search.latent).
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..errors import InputError
from ..evaluator import Evaluator


class Reward(Protocol):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], labels (B,) -> scores (B,), higher is better."""


class FeatureExtractor(Protocol):
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> features (B, D)."""


class ClassifierReward:
    """log p(label | image) of any classifier `images in [0, 1] -> logits (B, classes)`, clipped below."""

    def __init__(self, classifier: torch.nn.Module, floor: float = -20.0):
        self.classifier, self.floor = classifier, floor

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images)
        if labels.max() >= logits.shape[1]:
            raise InputError(f"the reward classifier has {logits.shape[1]} classes; labels go up to {int(labels.max())} "
                             "(the null class has no reward: give the search a reward of your own)")
        return logits.float().log_softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(self.floor)


def evaluator_reward(evaluator: Evaluator) -> ClassifierReward:
    """The default model's evaluator as a reward: log p(label | image)."""
    return ClassifierReward(evaluator)


class EvaluatorFeatures:
    """Evaluator features of images: 'pooled' (penultimate vector) or 'layout' (first-PC map of its last
    spatial feature map, TTS-VAR's structural signature; see `layout_signature`)."""

    def __init__(self, evaluator: Evaluator, kind: str = "pooled"):
        if kind not in ("pooled", "layout"):
            raise ValueError(f"feature kind must be 'pooled' or 'layout', got {kind!r}")
        self.evaluator, self.kind = evaluator, kind

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "pooled":
            return self.evaluator.features(images)
        patches = self.evaluator.body(self.evaluator.prepare(images))  # (B, C, h, w)
        return layout_signature(patches.flatten(2).transpose(1, 2))


def layout_signature(patches_BND: torch.Tensor) -> torch.Tensor:
    """Per image, its N patch features projected on their own first principal component: (B, N).

    The component's sign is arbitrary, so each signature is flipped to have non-negative skewness
    (two images of the same layout then get the same sign).
    """
    x = patches_BND.float() - patches_BND.float().mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (B, D, D), first row = first component
    s = torch.einsum("bnd,bd->bn", x, vh[:, 0])
    skew = ((s - s.mean(1, keepdim=True)) ** 3).mean(1)
    return s * torch.where(skew < 0, -1.0, 1.0).unsqueeze(1)


def checked_scores(scores: torch.Tensor, batch: int, what: str = "reward") -> torch.Tensor:
    """A reward's output as a float vector of length `batch`, or a clear error."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if scores.numel() != batch or scores.ndim > 2:
        raise InputError(f"the {what} returned shape {tuple(scores.shape)} for {batch} images; expected ({batch},)")
    return scores.detach().float().flatten()
