"""The forcing hook point of the scale loop: replace drawn tokens before a scale enters f_hat.

A `TokenForcer` is called once per scale, after the tokens are drawn and before their embeddings
are added to the running `f_hat`. Tokens are drawn once per sample and both CFG halves continue
from the same `f_hat`, so whatever a forcer decides holds for both halves alike. Zero-shot editing
(`var_engine.editing`) is one such rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .population import Population


@dataclass
class ForceStep:
    """What a forcer sees at scale `scale_index`: the population before this scale enters f_hat."""

    scale_index: int
    patch_num: int
    population: Population  # .f_hat: the running sum through the previous scale; .group: request of each sample
    idx_Bl: torch.Tensor  # (B, pn*pn) tokens drawn at this scale
    h_BChw: torch.Tensor  # (B, C, pn, pn) their embeddings (gumbel-smoothed with more_smooth)

    @property
    def f_hat_BChw(self) -> torch.Tensor:
        return self.population.f_hat

    @property
    def group_B(self) -> torch.Tensor:
        return self.population.group


class TokenForcer(Protocol):
    def force(self, step: ForceStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (idx_Bl, h_BChw) this scale continues with (shapes as in the step)."""
