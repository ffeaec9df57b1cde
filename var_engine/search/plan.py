"""Turning a search request into the starting population, the hook and its trace."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import torch

from ..config import TransformerConfig
from ..errors import ConfigError, InputError
from ..sampling import LayerPlan
from .compute import layers_per_scale, plan_refills
from .configs import SEARCH_MODES, BestOfNConfig, TTSConfig
from .hook import SearchHook
from .rewards import FeatureExtractor, Reward
from .schedule import (CLUSTER_AT, DEFAULT_BUDGET, RESAMPLE_AT, Schedule, one_sample_cost, scales_at,
                       schedule_for_budget)
from .trace import SearchTrace

SEARCH_STREAM = 10**9  # candidate index reserved for a request's search stream (k-means, resampling)


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
    layers, refills = layers_per_scale(cfg, layer_plan), plan_refills(cfg, layer_plan)
    if isinstance(search, BestOfNConfig):
        mode, cluster, resample_at = "best_of_n", (), ()
        if search.n is not None:
            n = search.n
        else:
            n = max(1, int(math.floor(search.budget / one_sample_cost(search.budget, cfg, layers, refills) + 1e-9)))
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
            schedule = schedule_for_budget(search.budget, cfg, (*cluster, *resample_at), layers, refills=refills)
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
    trace = SearchTrace(mode, schedule.batches, tuple(cluster), tuple(resample_at),
                        schedule.cost(cfg, layers, refills))
    hook = SearchHook(schedule, reward, features, cluster, resample_at, potential_kind, lam, standardize,
                      search_generators, trace, search.keep_candidates, final_reward)
    return SearchPlan(labels, groups, generators, hook, trace)
