"""The shipped scorers of a search, by name: which reward steers it and which features cluster it."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .latent import LatentFeatures, LatentReward
from .rewards import EvaluatorFeatures, FeatureExtractor, Reward, evaluator_reward

SCORERS = ("auto", "latent", "evaluator", "imagenet")


def shipped_scorer(name: str, components: Mapping[str, nn.Module], num_classes: int,
                   device: torch.device) -> tuple[Reward | None, FeatureExtractor | None]:
    """(reward, clustering features) for a scorer name, from a model's shipped components.

    'latent': the latent reward on f_hat and pooled latents (no decode); 'evaluator': decoded partial images
    scored by the evaluator (None, None when the model has none); 'imagenet': EfficientNet-Lite0 (a
    1,000-class model, the `var-engine[imagenet]` extra); 'auto': latent when shipped, else the evaluator,
    and for a 1,000-class model with neither, imagenet when installed.
    """
    evaluator, latent = components.get("evaluator"), components.get("latent_reward")
    if name == "auto":
        name = "latent" if latent is not None else "evaluator"
        if evaluator is None and latent is None and num_classes == 1000:
            from . import imagenet

            name = "imagenet" if imagenet.available() else name
    if name == "imagenet":
        from .imagenet import ImageNetFeatures, imagenet_reward, shared_imagenet_classifier

        if num_classes != 1000:
            raise ConfigError(f"the ImageNet reward needs a 1,000-class model; this one has {num_classes}")
        classifier = shared_imagenet_classifier(device)
        return imagenet_reward(classifier), ImageNetFeatures("pooled", classifier)
    if name == "latent":
        if latent is None:
            raise ConfigError("this checkpoint ships no latent reward (train one: var-engine train-latent-reward)")
        return LatentReward(latent), LatentFeatures()
    if name == "evaluator":
        if evaluator is None:
            return None, None
        return evaluator_reward(evaluator), EvaluatorFeatures(evaluator)
    raise InputError(f"unknown reward {name!r}: {', '.join(repr(s) for s in SCORERS[1:])}, 'auto' or a callable")
