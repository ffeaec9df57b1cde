"""Selection rules of the search: potentials over score histories and resampling by them."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

POTENTIALS = ("value", "diff", "sum", "max")


def potential(history: torch.Tensor, kind: str = "value") -> torch.Tensor:
    """Potential per sample from its scores (B, S), oldest first, the current score last.

    value: the current score; diff: current minus previous; sum: all scores; max: the best so far.
    With one score every kind is the current score.
    """
    if kind not in POTENTIALS:
        raise ValueError(f"unknown potential {kind!r}; choose from {', '.join(POTENTIALS)}")
    if history.ndim != 2 or history.shape[1] == 0:
        raise ValueError(f"a score history (B, S >= 1) is needed, got shape {tuple(history.shape)}")
    current = history[:, -1]
    if kind == "value" or history.shape[1] == 1:
        return current
    if kind == "diff":
        return current - history[:, -2]
    if kind == "sum":
        return history.sum(1)
    return history.max(1).values


def resampling_weights(potentials: torch.Tensor, lam: float) -> torch.Tensor:
    """Normalised weights exp(lam * potential), computed in log space.

    NaN potentials get weight 0; +inf potentials share all the weight; when nothing usable is
    left (all NaN or -inf), the weights are uniform and a warning is logged.
    """
    p = potentials.double()
    finite = torch.isfinite(p)
    if lam == 0:  # the potentials do not matter: uniform over the candidates that have one
        w = (~torch.isnan(p)).double()
        return (w / w.sum()).float() if w.sum() > 0 else torch.full_like(p, 1.0 / p.numel()).float()
    if torch.isposinf(p).any():
        w = torch.isposinf(p).double()
        return (w / w.sum()).float()
    if not finite.any():
        log.warning("search: no finite potential among %d candidates; resampling uniformly", p.numel())
        return torch.full_like(p, 1.0 / p.numel()).float()
    if not finite.all():
        log.warning("search: %d of %d potentials are NaN or -inf; they get weight 0",
                    int((~finite).sum()), p.numel())
    logits = torch.where(finite, lam * p, torch.full_like(p, -torch.inf))
    return logits.softmax(0).float()


def resample(potentials: torch.Tensor, n: int, lam: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw n indices with replacement by multinomial(exp(lam * potential))."""
    if n < 1:
        raise ValueError(f"resampling needs n >= 1, got {n}")
    weights = resampling_weights(potentials.cpu(), lam)
    return torch.multinomial(weights, n, replacement=True, generator=generator)
