"""What a search did: its schedule, every selection and (on request) the final candidates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Selection:
    """One selection of the search: which candidates each request kept."""

    scale_index: int
    kind: str  # 'cluster', 'resample' or 'final'
    before: int  # population size (all requests)
    kept: list[int]  # population indices kept (repeats: duplicated)
    lineage_before: list[int]
    scores: list[float] | None = None  # the reward at this scale, per candidate before selection

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchTrace:
    """What the search did: its schedule, every selection, and (on request) the final candidates."""

    mode: str
    batches: tuple[int, ...]
    cluster_scales: tuple[int, ...]
    resample_scales: tuple[int, ...]
    compute_per_request: float  # planned transformer compute, plain-sample units
    selections: list[Selection] = field(default_factory=list)
    winner_scores: list[float] = field(default_factory=list)  # final reward of each request's pick
    candidates: dict[str, Any] | None = None  # images, labels, groups, final rewards, score history
    overhead_seconds: float = 0.0  # decodes, rewards, features, clustering, gathers

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("selections", "candidates")}
        out["selections"] = [s.to_dict() for s in self.selections]
        if self.candidates is not None:
            out["candidates"] = {k: v.tolist() if isinstance(v, torch.Tensor) and k != "images" else v
                                 for k, v in self.candidates.items() if k != "images"}
        return out
