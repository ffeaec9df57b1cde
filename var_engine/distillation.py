"""Soft-target distillation from a teacher's logits, mixed into the token loss.

Two uses share it: in-place distillation of supernet subnets (the teacher is the network itself
at full depth, on subnet steps only) and distillation from a frozen prior model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError


@dataclass(frozen=True)
class Distillation:
    """loss = (1 - weight) * CE + weight * temperature^2 * KL(teacher_T || student_T), per token.

    weight 1 learns from the teacher's distribution alone (in-place distillation of subnets).
    """

    weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 1:  # also refuses NaN
            raise ConfigError(f"distillation weight must be in [0, 1], got {self.weight}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"distillation temperature must be a finite number > 0, got {self.temperature}")


def distill_loss(student_BLV: torch.Tensor, teacher_BLV: torch.Tensor, weight_L: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """temperature^2 * KL(softmax(teacher/T) || softmax(student/T)) per token, weighted by weight_L, mean over batch."""
    log_s = F.log_softmax(student_BLV.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_BLV.float() / temperature, dim=-1)
    kl_BL = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return temperature ** 2 * (kl_BL * weight_L).sum(dim=1).mean()
