"""Test-time search as a scale hook: TTS-VAR (diversity clustering, potential resampling) and Best-of-N.

Every request (label) gets its own population, tagged by the population's group ids. After a
clustering scale each request keeps the candidates nearest the k-means centres of their partial
images' features; after a resampling scale it draws its next population by the potentials of its
rewards; after the last scale it keeps the candidate of highest reward. Partial images are decoded
only at those scales.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from ..config import TransformerConfig
from ..errors import ConfigError, InputError
from ..sampling import LayerPlan, ScaleStep
from .compute import layers_per_scale
from .kmeans import representatives
from .rewards import FeatureExtractor, Reward, checked_scores
from .schedule import (CLUSTER_AT, DEFAULT_BUDGET, RESAMPLE_AT, Schedule, check_budget, one_sample_cost, scales_at,
                       schedule_for_budget)
from .selection import POTENTIALS, potential, resample

SEARCH_MODES = ("tts", "best_of_n")
SEARCH_STREAM = 10**9  # candidate index reserved for a request's search stream (k-means, resampling)
log = logging.getLogger(__name__)


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


class SearchHook:
    """The search as a `ScaleHook` (see the module docstring)."""

    def __init__(self, schedule: Schedule, reward: Reward, features: FeatureExtractor | None,
                 cluster_scales: Sequence[int], resample_scales: Sequence[int], potential_kind: str, lam: float,
                 standardize: bool, generators: Sequence[torch.Generator], trace: SearchTrace, keep_candidates: bool,
                 final_reward: Reward | None = None):
        self.schedule, self.reward, self.features = schedule, reward, features
        self.final_reward = final_reward or reward
        self.cluster_scales, self.resample_scales = set(cluster_scales), set(resample_scales)
        self.potential_kind, self.lam, self.standardize = potential_kind, lam, standardize
        # one stream per request, so a request's search does not depend on the other requests of the call
        self.generators, self.trace, self.keep_candidates = list(generators), trace, keep_candidates

    def after_scale(self, step: ScaleStep) -> torch.Tensor | None:
        si = step.scale_index
        t = time.perf_counter()
        try:
            if step.is_last:
                return self._final(step)
            if si in self.cluster_scales:
                return self._cluster(step)
            if si in self.resample_scales:
                return self._resample(step)
            return None
        finally:
            self.trace.overhead_seconds += time.perf_counter() - t

    def _groups(self, step: ScaleStep) -> list[tuple[int, torch.Tensor]]:
        """(request, its members' population indices) for every request, in request order."""
        group = step.group_B.cpu()
        return [(int(g), (group == g).nonzero().flatten()) for g in group.unique(sorted=True)]

    def _score(self, step: ScaleStep, reward: Reward) -> torch.Tensor:
        pop = step.population
        if reads_latents(reward):
            scores = reward(pop.f_hat, pop.labels, step.scale_index)
        else:
            scores = reward(step.decode(), pop.labels)
        scores = checked_scores(scores, pop.batch)
        pop.record_score(scores)
        return scores.cpu()

    def _cluster(self, step: ScaleStep) -> torch.Tensor | None:
        k = self.schedule.after(step.scale_index)
        groups = self._groups(step)
        if all(len(m) <= k for _, m in groups):
            return None
        if reads_latents(self.features):
            feats = self.features(step.f_hat_BChw, step.scale_index)
        else:
            feats = self.features(step.decode())
        if not isinstance(feats, torch.Tensor) or feats.ndim < 1 or feats.shape[0] != step.population.batch:
            raise InputError(f"the feature extractor returned {getattr(feats, 'shape', type(feats))} for "
                             f"{step.population.batch} images; expected ({step.population.batch}, D)")
        feats = feats.detach().float().reshape(step.population.batch, -1).cpu()
        if not torch.isfinite(feats).all():
            raise InputError("the feature extractor returned NaN or inf features")
        kept = []
        for g, members in groups:
            chosen = representatives(feats[members], min(k, len(members)), self.generators[g])
            kept.append(members[chosen])
        return self._record(step, "cluster", torch.cat(kept), None)

    def _resample(self, step: ScaleStep) -> torch.Tensor:
        n = self.schedule.after(step.scale_index)
        scores = self._score(step, self.reward)
        history = step.population.score_history().cpu()
        kept = []
        for g, members in self._groups(step):
            h = history[members]
            if self.standardize:
                h = standardized(h)
            kept.append(members[resample(potential(h, self.potential_kind), n, self.lam, self.generators[g])])
        return self._record(step, "resample", torch.cat(kept), scores)

    def _final(self, step: ScaleStep) -> torch.Tensor:
        scores = self._score(step, self.final_reward)
        pop = step.population
        if self.keep_candidates:
            self.trace.candidates = {"images": step.decode().cpu(), "labels": pop.labels.cpu(),
                                     "groups": pop.group.cpu(), "lineage": pop.lineage.cpu(), "final_scores": scores,
                                     "score_history": {s: v.cpu().tolist() for s, v in sorted(pop.scores.items())}}
        kept = []
        for g, members in self._groups(step):
            finite = torch.where(torch.isnan(scores[members]), -torch.inf, scores[members])
            if torch.isnan(scores[members]).all():
                log.warning("search: every final reward of request %d is NaN; returning its first candidate", g)
            kept.append(members[int(finite.argmax())].view(1))
        kept_t = torch.cat(kept)
        self.trace.winner_scores = scores[kept_t].tolist()
        return self._record(step, "final", kept_t, scores)

    def _record(self, step: ScaleStep, kind: str, kept: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        pop = step.population
        self.trace.selections.append(Selection(step.scale_index, kind, pop.batch, kept.tolist(),
                                               pop.lineage.cpu().tolist(),
                                               None if scores is None else scores.tolist()))
        return kept


def reads_latents(fn: object) -> bool:
    """True for rewards and feature extractors that score the partial latent f_hat (`input = 'latent'`):
    they are called with (f_hat, [labels,] scale_index) and need no decode."""
    return getattr(fn, "input", "images") == "latent"


def standardized(history: torch.Tensor) -> torch.Tensor:
    """Each column as z-scores over the rows (a constant column becomes zeros)."""
    finite = torch.where(torch.isfinite(history), history, torch.nan)
    mean = finite.nanmean(0, keepdim=True)
    std = torch.sqrt(((finite - mean) ** 2).nanmean(0, keepdim=True)).clamp_min(1e-6)
    return (history - mean) / std


@dataclass
class SearchPlan:
    """A search ready to run: the population to start from, the hook, and its trace."""

    labels: torch.Tensor  # (B * first,) requests' labels, each repeated for its population
    groups: torch.Tensor  # (B * first,)
    generators: torch.Generator | list[torch.Generator]
    hook: SearchHook
    trace: SearchTrace


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of candidate j of a request seeded `seed` (candidate 0: the seed itself)."""
    if candidate == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def plan_search(search: str | TTSConfig | BestOfNConfig, cfg: TransformerConfig, labels_B: torch.Tensor,
                generator: torch.Generator | list[torch.Generator], *, budget: float | None = None,
                reward: Reward | None = None, default_reward: Reward | None = None,
                default_features: FeatureExtractor | None = None, default_final_reward: Reward | None = None,
                layer_plan: LayerPlan | None = None) -> SearchPlan:
    """Turn a search request into the starting population and the hook.

    search: 'tts', 'best_of_n' or a config; budget/reward override the config's (a reward given here or in
    the config also makes the final pick unless the config names a final_reward; otherwise the defaults
    apply: default_reward and default_features during the search, default_final_reward for the pick).
    generator: the call's generator (one stream for the whole population) or one per request (each
    candidate then gets its own stream from `candidate_seed`).
    """
    if isinstance(search, str):
        if search not in SEARCH_MODES:
            raise InputError(f"unknown search {search!r}; choose from {', '.join(SEARCH_MODES)}")
        budget = DEFAULT_BUDGET if budget is None else budget
        search = TTSConfig(budget=budget) if search == "tts" else BestOfNConfig(budget=budget)
    elif budget is not None:
        search = replace(search, budget=budget, **({"n": None} if isinstance(search, BestOfNConfig) else
                                                   {"batches": None}))
    chosen = reward or search.reward
    final_reward = getattr(search, "final_reward", None) or chosen or default_final_reward or default_reward
    reward = chosen or default_reward
    if reward is None or final_reward is None:
        raise ConfigError("this model has no evaluator to score candidates with: pass reward=")
    K = cfg.num_scales
    layers = layers_per_scale(cfg, layer_plan)
    if isinstance(search, BestOfNConfig):
        mode, cluster, resample_at = "best_of_n", (), ()
        if search.n is not None:
            n = search.n
        else:
            n = max(1, int(math.floor(search.budget / one_sample_cost(search.budget, cfg, layers) + 1e-9)))
        schedule = Schedule((n,) * K)
        features, potential_kind, lam, standardize = None, "value", 0.0, False
    else:
        mode = "tts"
        cluster = tuple(search.cluster_scales) if search.cluster_scales is not None else scales_at(CLUSTER_AT, K)
        if search.resample_scales is not None:
            resample_at = tuple(search.resample_scales)
        else:  # on models of few scales the default resampling scales may fall on clustering ones: skip those
            resample_at = tuple(k for k in scales_at(RESAMPLE_AT, K) if k not in cluster)
        for name, scales in (("cluster", cluster), ("resample", resample_at)):
            if any(not 0 <= s < K - 1 for s in scales):
                raise ConfigError(f"{name} scales must be in [0, {K - 2}] (the last scale is the final pick), "
                                  f"got {list(scales)}")
        if set(cluster) & set(resample_at):
            raise ConfigError(f"a scale cannot both cluster and resample: {sorted(set(cluster) & set(resample_at))}")
        if search.batches is not None:
            schedule = Schedule(tuple(search.batches))
            if len(schedule.batches) != K:
                raise ConfigError(f"batches need one size per scale ({K}), got {len(schedule.batches)}")
            drops = [k for k in range(K - 1) if schedule.batches[k + 1] < schedule.batches[k]]
            stray = [k for k in drops if k not in cluster and k not in resample_at]
            if stray:
                raise ConfigError(f"the population shrinks after scales {stray}, where no selection runs "
                                  f"(cluster at {list(cluster)}, resample at {list(resample_at)})")
        else:
            schedule = schedule_for_budget(search.budget, cfg, (*cluster, *resample_at), layers)
        features = search.features or default_features
        if cluster and features is None:
            raise ConfigError("clustering needs a feature extractor: pass TTSConfig(features=...)")
        potential_kind, lam, standardize = search.potential, search.lam, search.standardize
    first = schedule.first
    B = labels_B.shape[0]
    labels = labels_B.repeat_interleave(first)
    groups = torch.arange(B, device=labels_B.device).repeat_interleave(first)
    if isinstance(generator, list):
        if len(generator) != B:
            raise InputError(f"{len(generator)} seeds for {B} labels: give one seed per label with search")
        generators: torch.Generator | list[torch.Generator] = []
        for g in generator:
            for j in range(first):
                child = torch.Generator(device=g.device)
                child.manual_seed(candidate_seed(g.initial_seed(), j))
                generators.append(child)
        search_seeds = [candidate_seed(g.initial_seed(), SEARCH_STREAM) for g in generator]
    else:
        generators = generator
        search_seeds = [candidate_seed(generator.initial_seed(), SEARCH_STREAM + i) for i in range(B)]
    search_generators = [torch.Generator().manual_seed(s) for s in search_seeds]
    trace = SearchTrace(mode, schedule.batches, tuple(cluster), tuple(resample_at), schedule.cost(cfg, layers))
    hook = SearchHook(schedule, reward, features, cluster, resample_at, potential_kind, lam, standardize,
                      search_generators, trace, search.keep_candidates, final_reward)
    return SearchPlan(labels, groups, generators, hook, trace)
