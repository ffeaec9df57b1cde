"""The search as a scale hook: TTS-VAR (diversity clustering, potential resampling) and Best-of-N.

Every request (label) gets its own population, tagged by the population's group ids. After a
clustering scale each request keeps the candidates nearest the k-means centres of their partial
images' features; after a resampling scale it draws its next population by the potentials of its
rewards; after the last scale it keeps the candidate of highest reward. Partial images are decoded
only at those scales.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import torch

from ..errors import InputError
from ..sampling import ScaleStep
from .kmeans import representatives
from .rewards import FeatureExtractor, Reward, checked_scores
from .schedule import Schedule
from .selection import potential, resample
from .trace import SearchTrace, Selection

log = logging.getLogger(__name__)


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
