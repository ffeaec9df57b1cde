"""VARiant: depth-switchable subnets sharing the full network's weights.

A subnet of depth d keeps the equidistant layers floor(i * (D - 1) / (d - 1)), i = 0..d-1 (first
and last always in). A `DepthPlan` runs the full network for the first `switch_scale` scales and
the subnet after; the same plan drives sampling (`layers(scale_index)`) and exact teacher-forced
training (`block_tokens()`: layers outside the subnet process only the full-depth scales' tokens).
A `finish_scale` returns to full depth for the last scales (a search explores wide on the subnet and
finishes its survivors at full depth; the sampler recomputes the skipped layers' caches first).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from .errors import ConfigError


def subnet_layers(D: int, d: int) -> tuple[int, ...]:
    """Equidistant layer indices of a depth-d subnet of a depth-D network."""
    if not 1 <= d <= D:
        raise ConfigError(f"subnet depth must be in [1, {D}], got {d}")
    if d == 1:
        return (0,)
    return tuple(sorted({(i * (D - 1)) // (d - 1) for i in range(d)}))


@dataclass(frozen=True)
class DepthPlan:
    """Full depth for scales [0, switch_scale), the depth-`depth` subnet for the rest, or only up to
    `finish_scale` and full depth again from there (sampling only: the sampler refills the caches)."""

    total_depth: int
    depth: int
    switch_scale: int
    patch_nums: tuple[int, ...]
    finish_scale: int | None = None

    def __post_init__(self) -> None:
        K = len(self.patch_nums)
        subnet_layers(self.total_depth, self.depth)  # validates depth
        if not 1 <= self.switch_scale <= K:
            raise ConfigError(f"switch scale must be in [1, {K}], got {self.switch_scale}")
        if self.finish_scale is not None and not self.switch_scale < self.finish_scale < K:
            raise ConfigError(f"finish scale must be in [{self.switch_scale + 1}, {K - 1}] (after the switch "
                              f"scale {self.switch_scale}, before the end), got {self.finish_scale}")

    @property
    def subnet(self) -> tuple[int, ...]:
        return subnet_layers(self.total_depth, self.depth)

    def layers(self, scale_index: int) -> Sequence[int] | None:
        """Blocks to run at `scale_index` (None: all) - the sampler's LayerPlan."""
        if scale_index < self.switch_scale or self.depth == self.total_depth:
            return None
        if self.finish_scale is not None and scale_index >= self.finish_scale:
            return None
        return self.subnet

    __call__ = layers

    @property
    def switch_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums[: self.switch_scale])

    def block_tokens(self) -> list[int]:
        """Per block, how many leading tokens it processes in the teacher-forced forward."""
        if self.finish_scale is not None:
            raise ConfigError("a plan that finishes at full depth is for sampling; train with switch-only plans")
        total = sum(p * p for p in self.patch_nums)
        keep = set(self.subnet)
        return [total if (i in keep or self.depth == self.total_depth) else self.switch_tokens
                for i in range(self.total_depth)]

    def kv_entries(self) -> int:
        """Cached token-layer entries per image: (D - d) * T_switch + d * T_total (D * T_total when finishing)."""
        if self.finish_scale is not None:
            return self.total_depth * sum(p * p for p in self.patch_nums)
        return sum(self.block_tokens())


@dataclass
class SupernetSchedule:
    """Probability that a training step trains a subnet instead of the full network.

    'progressive': three stages over training progress t in [0, 1]: ratios[0] until
    boundaries[0], a linear ramp to ratios[1] until boundaries[1], then ratios[2].
    'fixed': always `fixed_ratio`.
    """

    kind: str = "progressive"
    ratios: tuple[float, float, float] = (0.2, 0.7, 0.5)
    boundaries: tuple[float, float] = (0.25, 0.75)
    fixed_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("progressive", "fixed"):
            raise ConfigError(f"schedule must be 'progressive' or 'fixed:R', got {self.kind!r}")
        if any(not 0 <= r <= 1 for r in (*self.ratios, self.fixed_ratio)):
            raise ConfigError("schedule ratios must be in [0, 1]")
        b0, b1 = self.boundaries
        if not 0 <= b0 <= b1 <= 1:
            raise ConfigError(f"schedule boundaries must satisfy 0 <= b0 <= b1 <= 1, got {self.boundaries}")

    @classmethod
    def parse(cls, text: str) -> "SupernetSchedule":
        """'progressive', 'progressive:R0,R1,R2[@B0,B1]' or 'fixed:R' (R = subnet step fraction in [0, 1])."""
        if text == "progressive":
            return cls()
        kind, _, spec = text.partition(":")
        try:
            if kind == "fixed" and spec:
                return cls(kind="fixed", fixed_ratio=float(spec))
            if kind == "progressive" and spec:
                ratios, _, bounds = spec.partition("@")
                r = tuple(float(v) for v in ratios.split(","))
                b = tuple(float(v) for v in bounds.split(",")) if bounds else cls.boundaries
                if len(r) != 3 or len(b) != 2:
                    raise ValueError("three ratios and two boundaries")
                return cls(kind="progressive", ratios=r, boundaries=b)
        except ValueError as e:
            raise ConfigError(f"bad schedule {text!r}: {e}") from e
        raise ConfigError(f"schedule must be 'progressive', 'progressive:R0,R1,R2[@B0,B1]' or 'fixed:R', got {text!r}")

    def subnet_probability(self, progress: float) -> float:
        if self.kind == "fixed":
            return self.fixed_ratio
        (r0, r1, r2), (b0, b1) = self.ratios, self.boundaries
        if progress < b0:
            return r0
        if progress < b1:
            return r0 + (r1 - r0) * (progress - b0) / max(1e-9, b1 - b0)
        return r2


@dataclass
class SupernetPlan:
    """The training loop's StepPlan: each step trains the full network or a sampled subnet.

    Decisions depend only on (seed, step), so every process of a distributed run agrees.
    """

    total_depth: int
    patch_nums: tuple[int, ...]
    depths: tuple[int, ...]
    switch_scales: tuple[int, ...]
    total_steps: int
    schedule: SupernetSchedule = field(default_factory=SupernetSchedule)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.depths or not self.switch_scales:
            raise ConfigError("supernet training needs at least one subnet depth and switch scale")
        for d in self.depths:
            subnet_layers(self.total_depth, d)
        for s in self.switch_scales:
            DepthPlan(self.total_depth, self.total_depth, s, self.patch_nums)

    def plan_at(self, step: int) -> DepthPlan | None:
        rng = random.Random(self.seed * 1_000_003 + step)
        if rng.random() >= self.schedule.subnet_probability(step / max(1, self.total_steps)):
            return None
        return DepthPlan(self.total_depth, rng.choice(self.depths), rng.choice(self.switch_scales), self.patch_nums)

    def block_tokens(self, step: int) -> list[int] | None:
        plan = self.plan_at(step)
        return None if plan is None else plan.block_tokens()
