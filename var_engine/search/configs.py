"""Search settings: TTS-VAR (`TTSConfig`) and Best-of-N (`BestOfNConfig`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .rewards import FeatureExtractor, Reward
from .schedule import DEFAULT_BUDGET, check_budget
from .selection import POTENTIALS

SEARCH_MODES = ("tts", "best_of_n")


@dataclass
class TTSConfig:
    """TTS-VAR settings. Give `budget` (plain full-depth samples of transformer compute per request) or
    explicit `batches` (samples per request generating each scale, non-increasing)."""

    budget: float | None = DEFAULT_BUDGET
    batches: tuple[int, ...] | None = None
    cluster_scales: tuple[int, ...] | None = None  # None: CLUSTER_AT of the scale count
    resample_scales: tuple[int, ...] | None = None  # None: RESAMPLE_AT of the scale count
    potential: str = "value"
    lam: float = 10.0  # resampling sharpness on standardized rewards
    standardize: bool = True  # rewards as z-scores within each request's population before potentials
    reward: Reward | None = None  # scores at the resampling scales (None: the pipeline's default scorer)
    features: FeatureExtractor | None = None  # for clustering (None: the pipeline's default features)
    final_reward: Reward | None = None  # picks the winner after the last scale (None: `reward`, or the default)
    keep_candidates: bool = False  # return every final candidate with its per-scale scores

    def __post_init__(self) -> None:
        if self.potential not in POTENTIALS:
            raise ConfigError(f"unknown potential {self.potential!r}; choose from {', '.join(POTENTIALS)}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(f"lam must be a finite number >= 0, got {self.lam}")
        if self.batches is None and self.budget is None:
            raise ConfigError("give a compute budget or explicit batches")
        if self.budget is not None:
            check_budget(self.budget)


@dataclass
class BestOfNConfig:
    """Best-of-N: n independent samples per request (or as many as `budget` buys), the best by reward."""

    n: int | None = None
    budget: float | None = None
    reward: Reward | None = None
    keep_candidates: bool = False

    def __post_init__(self) -> None:
        if (self.n is None) == (self.budget is None):
            raise ConfigError("Best-of-N needs exactly one of n and budget")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ConfigError(f"n must be an integer >= 1, got {self.n!r}")
        if self.budget is not None:
            check_budget(self.budget)
