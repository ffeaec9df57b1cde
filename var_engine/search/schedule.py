"""Population size per scale: given explicitly, or the largest that fits a compute budget."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

from ..config import TransformerConfig
from ..errors import ConfigError
from .compute import run_cost

# Selection scales as fractions of the scale count (0 = the first scale, 1 = the last), chosen on the
# default model's measurements (bench/search.py); for 7 scales: cluster after 1, 2, resample after 4, 5.
CLUSTER_AT = (0.17, 0.35)
RESAMPLE_AT = (0.67, 0.83)
# Population after each selection, relative to the first. TTS-VAR's 8 -> 6 -> 4 -> 2 -> 1 leaves the final pick
# few candidates; keeping 4 to the end measured better on the default model at budgets 2 and 4 (bench/search.py).
LEVELS = (8, 8, 6, 4, 4)
DEFAULT_BUDGET = 4.0  # plain full-depth samples of transformer compute per request


def check_budget(budget: float) -> float:
    """`budget` as given; ConfigError unless it is a finite number > 0."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"budget must be a finite number > 0, got {budget!r}")
    return budget


def one_sample_cost(budget: float, cfg: TransformerConfig, layers: Sequence[int] | None = None,
                    refills: Sequence[int] = ()) -> float:
    """Compute of one sample with these layers per scale; ConfigError when `budget` buys less than that."""
    one = Schedule((1,) * cfg.num_scales).cost(cfg, layers, refills)
    if budget < one - 1e-9:
        raise ConfigError(f"budget {budget:g} is below one sample with this depth plan "
                          f"({one:.3f} plain-sample units)")
    return one


def scales_at(fractions: Sequence[float], num_scales: int) -> tuple[int, ...]:
    """Scale indices for fractions of the scale count; never the last scale (the final pick is there)."""
    return tuple(sorted({min(num_scales - 2, max(0, round(f * (num_scales - 1)))) for f in fractions}))


@dataclass(frozen=True)
class Schedule:
    """`batches[k]`: samples per request that generate scale k (non-increasing, >= 1)."""

    batches: tuple[int, ...]

    def __post_init__(self) -> None:
        b = tuple(self.batches)
        object.__setattr__(self, "batches", b)
        if not b or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b):
            raise ConfigError(f"a schedule needs batch sizes >= 1 per scale, got {list(b)}")
        if any(later > earlier for earlier, later in zip(b, b[1:])):
            raise ConfigError(f"a schedule's batch sizes must not increase from scale to scale, got {list(b)}")

    @property
    def first(self) -> int:
        return self.batches[0]

    def after(self, scale_index: int) -> int:
        """The population per request that continues after scale `scale_index` (the last: the final pick)."""
        return self.batches[scale_index + 1] if scale_index + 1 < len(self.batches) else 1

    def cost(self, cfg: TransformerConfig, layers: Sequence[int] | None = None, refills: Sequence[int] = ()) -> float:
        """Transformer compute per request in plain full-depth sample units (refills: scales before which
        the population's earlier scales are re-run at full depth)."""
        return run_cost(cfg, self.batches, layers, [b if k in refills else 0 for k, b in enumerate(self.batches)])


def shaped_schedule(selection_scales: Sequence[int], num_scales: int, scale: float,
                    levels: Sequence[int] = LEVELS) -> Schedule:
    """`levels` times `scale` (rounded, at least 1), dropping one level after each selection scale."""
    steps = sorted(set(selection_scales))
    sizes, level = [], 0
    for k in range(num_scales):
        sizes.append(max(1, round(levels[min(level, len(levels) - 1)] * scale)))
        if k in steps:
            level += 1
    for k in range(1, num_scales):  # rounding must not make it increase
        sizes[k] = min(sizes[k], sizes[k - 1])
    return Schedule(tuple(sizes))


def schedule_for_budget(budget: float, cfg: TransformerConfig, selection_scales: Sequence[int],
                        layers: Sequence[int] | None = None, levels: Sequence[int] = LEVELS,
                        refills: Sequence[int] = ()) -> Schedule:
    """The largest shaped schedule whose transformer compute is at most `budget` plain samples."""
    one_sample_cost(check_budget(budget), cfg, layers, refills)
    smallest = Schedule((1,) * cfg.num_scales)
    lo, hi = 0.0, 1.0
    while shaped_schedule(selection_scales, cfg.num_scales, hi, levels).cost(cfg, layers, refills) <= budget:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            break
    for _ in range(50):
        mid = (lo + hi) / 2
        if shaped_schedule(selection_scales, cfg.num_scales, mid, levels).cost(cfg, layers, refills) <= budget:
            lo = mid
        else:
            hi = mid
    best = shaped_schedule(selection_scales, cfg.num_scales, lo, levels)
    return best if best.cost(cfg, layers, refills) <= budget + 1e-9 else smallest
