"""Scoring without decoding: a small classifier on the sampler's partial latent f_hat, and latent features.

On CPU, decoding every candidate's partial image is most of a search's cost. `LatentReward` scores
f_hat itself: log p(label | f_hat, scale) from a conv classifier trained on the partial latents of real
images at every scale (the tokenizer's own residual chain), so a search decodes only its winners.
`LatentFeatures` clusters on f_hat pooled to a coarse grid.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..checkpoints import load_component, read_module_config, save_module
from ..errors import CheckpointError, ConfigError, InputError
from ..evaluator import train_classifier
from ..tokenizer import Tokenizer
from ..training import TrainConfig

log = logging.getLogger(__name__)

NAME = "latent_reward"


@dataclass
class LatentClassifierConfig:
    z_channels: int = 16
    latent_size: int = 8
    num_scales: int = 7
    num_classes: int = 10
    width: int = 64

    def __post_init__(self) -> None:
        if min(self.z_channels, self.latent_size, self.num_scales, self.width) < 1 or self.num_classes < 2:
            raise ConfigError(f"invalid latent classifier config {self}")
        if self.width % 8:
            raise ConfigError(f"latent classifier width must be a multiple of 8 (group norms), got {self.width}")

    def check_fits(self, tokenizer_cfg) -> None:
        """CheckpointError unless this classifier reads the latents of `tokenizer_cfg`."""
        want = (tokenizer_cfg.z_channels, tokenizer_cfg.patch_nums[-1], len(tokenizer_cfg.patch_nums))
        if (self.z_channels, self.latent_size, self.num_scales) != want:
            raise CheckpointError(f"the latent reward reads latents of {self.z_channels} channels, size "
                                  f"{self.latent_size}, {self.num_scales} scales; this model's are {want}")


class LatentClassifier(nn.Module):
    """(f_hat (B, C, h, w), scale index) -> class logits (B, classes); the scale enters as one-hot planes."""

    def __init__(self, cfg: LatentClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.z_channels + cfg.num_scales, w, 3, 1, 1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, 1, 1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GroupNorm(8, 2 * w), nn.SiLU())
        half = (cfg.latent_size + 1) // 2
        self.head = nn.Linear(2 * w * half * half, cfg.num_classes)  # position-aware: a digit is its layout

    def planes(self, f_hat: torch.Tensor, scale_index: torch.Tensor | int) -> torch.Tensor:
        """f_hat with the scale's one-hot planes appended: the classifier's input."""
        B, _, h, w = f_hat.shape
        k = torch.as_tensor(scale_index, device=f_hat.device).expand(B)
        onehot = F.one_hot(k, self.cfg.num_scales).to(f_hat.dtype)[:, :, None, None].expand(B, -1, h, w)
        return torch.cat([f_hat, onehot], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class LatentReward:
    """A Reward on latents: log p(label | f_hat, scale), clipped below at `floor`."""

    input = "latent"

    def __init__(self, classifier: LatentClassifier, floor: float = -20.0):
        self.classifier, self.floor = classifier.eval(), floor

    @torch.no_grad()
    def __call__(self, f_hat: torch.Tensor, labels: torch.Tensor, scale_index: int) -> torch.Tensor:
        c = self.classifier
        if labels.max() >= c.cfg.num_classes:
            raise InputError(f"the latent reward knows {c.cfg.num_classes} classes; labels go up to {int(labels.max())}")
        logits = c(c.planes(f_hat.float(), scale_index))
        return logits.log_softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(self.floor)


class LatentFeatures:
    """Clustering features from f_hat itself (no decode): average-pooled to `grid` x `grid`, flattened."""

    input = "latent"

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, f_hat: torch.Tensor, scale_index: int) -> torch.Tensor:
        return F.adaptive_avg_pool2d(f_hat.float(), self.grid).flatten(1)


def partial_fhats(tokenizer: Tokenizer, tokens: torch.Tensor, scale_index: torch.Tensor) -> torch.Tensor:
    """f_hat after scale `scale_index[i]` of each token sequence (B, L), as the sampler holds it then."""
    q = tokenizer.quantize
    idx_list = tokenizer.split(tokens)
    H = q.patch_nums[-1]
    f_hat = q.embedding.weight.new_zeros(tokens.shape[0], q.Cvae, H, H)
    out = torch.empty_like(f_hat)
    for si, (idx, pn) in enumerate(zip(idx_list, q.patch_nums)):
        f_hat = f_hat + q.upsample_residual(q.embed(idx, pn), si, H)
        hit = scale_index == si
        out[hit] = f_hat[hit]
    return out


@torch.no_grad()
def tokenize(tokenizer: Tokenizer, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Images in [-1, 1] -> tokens (N, L)."""
    return torch.cat([tokenizer.encode(images[i:i + batch]) for i in range(0, len(images), batch)])


def train_latent_reward(tokenizer: Tokenizer, num_classes: int, train: TrainConfig, dataset: Dataset,
                        heldout: tuple[torch.Tensor, torch.Tensor] | None = None, width: int = 64,
                        progress: bool = True, save_dtype: torch.dtype | None = None) -> LatentClassifier:
    """Train the latent classifier on the tokenized images of `dataset` ((image in [-1, 1], label) pairs), each
    batch at random scales; writes `latent_reward.safetensors` + `.json` in train.out_dir."""
    tokenizer = tokenizer.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=500)
    images, labels = zip(*loader)
    tokens = tokenize(tokenizer, torch.cat(images))
    t = tokenizer.cfg
    cfg = LatentClassifierConfig(t.z_channels, t.patch_nums[-1], len(t.patch_nums), num_classes, width)
    model = LatentClassifier(cfg)

    def prepare(tok: torch.Tensor, lab: torch.Tensor, generator: torch.Generator):
        k = torch.randint(cfg.num_scales, (tok.shape[0],), generator=generator)
        with torch.no_grad():
            return model.planes(partial_fhats(tokenizer, tok, k), k), lab

    held = None
    if heldout is not None:
        held_tokens = tokenize(tokenizer, heldout[0])
        last = torch.full((len(held_tokens),), cfg.num_scales - 1)
        with torch.no_grad():
            held = (model.planes(partial_fhats(tokenizer, held_tokens, last), last), heldout[1])
    return train_classifier(model, NAME, asdict(cfg), train, TensorDataset(tokens, torch.cat(labels)), prepare, held,
                            progress, lambda m: save_module(train.out_dir, NAME, m, asdict(cfg), save_dtype))


def load_latent_reward(directory: str | Path) -> LatentReward | None:
    """The latent reward shipped in a checkpoint directory, or None when it has none."""
    directory = Path(directory)
    if not (directory / f"{NAME}.safetensors").is_file():
        return None
    try:
        cfg = LatentClassifierConfig(**read_module_config(directory, NAME))
    except TypeError as e:
        raise CheckpointError(f"{directory / (NAME + '.json')}: unexpected settings ({e})") from e
    return LatentReward(load_component(LatentClassifier(cfg), directory, NAME))


@torch.no_grad()
def latent_accuracy(reward: LatentReward, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor,
                    scale_index: int) -> float:
    """Fraction of real images (in [-1, 1]) whose partial latent after `scale_index` is classified right."""
    tokens = tokenize(tokenizer, images)
    k = torch.full((len(tokens),), scale_index)
    c = reward.classifier
    return float((c(c.planes(partial_fhats(tokenizer, tokens, k), k)).argmax(1) == labels).float().mean())


__all__ = ["LatentClassifier", "LatentClassifierConfig", "LatentFeatures", "LatentReward", "latent_accuracy",
           "load_latent_reward", "partial_fhats", "train_latent_reward"]
