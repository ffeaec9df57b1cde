"""Image-set metrics: FID through torchmetrics (custom features offline, Inception when available)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import ConfigError


def frechet_distance(feature: nn.Module | int, real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor],
                     device: torch.device | str = "cpu") -> float:
    """FID between two image streams (batches of (N, 3, H, W) floats in [0, 1]).

    feature: a module returning (N, D) features with a `num_features` attribute (e.g. the shipped
    evaluator's `FeatureExtractor`: an FID-style distance, not comparable to Inception FID), or
    2048/768/192/64 for standard InceptionV3 FID, which needs torch-fidelity and its weights.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        metric = FrechetInceptionDistance(feature=feature, normalize=True).to(device)
    except (ModuleNotFoundError, ImportError, RuntimeError, OSError) as e:
        raise ConfigError(
            "standard Inception FID is unavailable: it needs `pip install torch-fidelity` and the "
            "InceptionV3 FID weights (downloaded on first use, or placed in torch's hub cache "
            f"as 'weights-inception-2015-12-05-6726825d.pth'); cause: {e}") from e
    metric.eval()
    with torch.no_grad():
        for batch in real:
            metric.update(batch.to(device).float(), real=True)
        for batch in fake:
            metric.update(batch.to(device).float(), real=False)
    return float(metric.compute())


def batches(images: torch.Tensor, size: int = 500) -> list[torch.Tensor]:
    return [images[i:i + size] for i in range(0, len(images), size)]
