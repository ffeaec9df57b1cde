"""A small image classifier trained on the default data, shipped beside the model.

It gives class accuracy of generated images, penultimate features for an FID-style distance
(and clustering), and a reward log p(label | image). Inputs are images in [0, 1] of any size;
the module resizes and normalises them itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .checkpoints import load_component, read_module_config, save_module
from .errors import ConfigError
from .training import Callback, TrainConfig, freeze_except, infinite_batches, run_fingerprint, run_loop, start_run

log = logging.getLogger(__name__)


@dataclass
class EvaluatorConfig:
    num_classes: int = 10
    image_size: int = 32
    width: int = 32
    num_features: int = 128

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.image_size < 8 or self.width < 8 or self.num_features < 2:
            raise ConfigError(f"invalid evaluator config {self}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class Evaluator(nn.Module):
    """CNN classifier: images (N, 3, H, W) in [0, 1] -> logits (N, classes)."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(_conv(3, w, 1), _conv(w, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),
                                  _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 1))
        self.proj = nn.Linear(4 * w, cfg.num_features)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Accept uint8 or float [0, 1] images of any size; return [-1, 1] at the trained size."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return x * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, num_features)."""
        h = self.body(self.prepare(images)).mean(dim=(2, 3))
        return F.silu(self.proj(h))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def reward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(label | image) per image (N,)."""
        return self(images).log_softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1)


class FeatureExtractor(nn.Module):
    """The evaluator's features as a module torchmetrics' FID accepts (`num_features` attribute)."""

    def __init__(self, evaluator: Evaluator):
        super().__init__()
        self.evaluator = evaluator
        self.num_features = evaluator.cfg.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluator.features(images)


def save_evaluator(directory: str | Path, evaluator: Evaluator, dtype: torch.dtype | None = None) -> Path:
    return save_module(directory, "evaluator", evaluator, evaluator.cfg.to_dict(), dtype)


def load_evaluator(directory: str | Path) -> Evaluator:
    cfg = EvaluatorConfig(**read_module_config(directory, "evaluator"))
    return load_component(Evaluator(cfg), directory, "evaluator").eval()


@torch.no_grad()
def accuracy(evaluator: Evaluator, images01: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of images classified as their label."""
    evaluator.eval()
    dev = next(evaluator.parameters()).device
    hits = 0
    for i in range(0, len(images01), batch_size):
        pred = evaluator(images01[i:i + batch_size].to(dev)).argmax(-1).cpu()
        hits += (pred == labels[i:i + batch_size]).sum().item()
    return hits / max(1, len(images01))


def train_evaluator(cfg: EvaluatorConfig, train: TrainConfig, dataset: Dataset,
                    heldout: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
                    save_dtype: torch.dtype | None = None) -> Evaluator:
    """Train the classifier (cross-entropy, AdamW); saves `evaluator.safetensors` + `.json` in train.out_dir.

    heldout: (images in [-1, 1], labels) used for the accuracy log. save_dtype: dtype of the written weights.
    """
    def prepare(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        images = images.add(1).mul(0.5)
        # light augmentation: random shifts of up to 2 px
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        return torch.roll(images, shifts=(dy, dx), dims=(2, 3)), labels

    held = None if heldout is None else (heldout[0].add(1).mul(0.5), heldout[1])
    return train_classifier(Evaluator(cfg), "evaluator", cfg.to_dict(), train, dataset, prepare, held, progress,
                            lambda model: save_evaluator(train.out_dir, model, save_dtype))


def train_classifier(model: nn.Module, name: str, settings: dict, train: TrainConfig, dataset: Dataset,
                     prepare: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
                     heldout: tuple[torch.Tensor, torch.Tensor] | None, progress: bool,
                     save: Callable[[nn.Module], Any]) -> nn.Module:
    """Cross-entropy training of `model` on `prepare(*batch, generator)` -> (inputs, labels); resumable in
    train.out_dir/<name>_run (settings join the resume fingerprint); `save(model)` writes the result.

    heldout: (inputs, labels) for the accuracy log.
    """
    ctx = start_run(train)
    out = Path(train.out_dir)
    model = model.to(ctx.device)
    params = freeze_except(model, model.parameters())
    ddp = ctx.wrap(model)
    fingerprint = run_fingerprint(train, ctx.world_size, **{name: settings})
    generator = torch.Generator().manual_seed(train.seed + ctx.rank)
    batches: list = []  # started at the first step run (after a resume)

    def step_loss(step: int) -> tuple[torch.Tensor, dict]:
        if not batches:
            batches.append(infinite_batches(dataset, train, ctx, step))
        inputs, labels = prepare(*next(batches[0]), generator)
        return F.cross_entropy(ddp(inputs.to(ctx.device)), labels.to(ctx.device)), {}

    run_loop(model, params, step_loss, train, ctx, fingerprint=fingerprint, state_dir=out / f"{name}_run",
             log_dir=out / f"{name}_run", name=name, callbacks=[_HeldoutAccuracy(model, heldout, ctx)],
             grad_clip=0.0, progress=progress)
    if ctx.is_main:
        save(model)
    ctx.barrier()
    return model


class _HeldoutAccuracy(Callback):
    """Held-out accuracy in every train log row (main process)."""

    def __init__(self, model: nn.Module, heldout: tuple[torch.Tensor, torch.Tensor] | None, ctx: Any):
        self.model, self.heldout, self.ctx = model, heldout, ctx

    def on_log(self, step: int, row: dict) -> None:
        if self.heldout is not None and self.ctx.is_main:
            row["heldout_accuracy"] = accuracy(self.model, self.heldout[0], self.heldout[1])
