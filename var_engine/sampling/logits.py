"""Pure tensor functions of the sampler: guidance mixing, filtering, drawing tokens."""
from __future__ import annotations

from typing import Sequence

import torch

from ..config import DRAW_METHODS

# one generator for the whole batch (the release's protocol), or one per sample
Generators = "torch.Generator | Sequence[torch.Generator] | None"

TOP_P_CANDIDATES = 32  # enough for nearly every row of a trained model's later scales


def guidance_scale(cfg: float, scale_index: int, num_scales: int) -> float:
    """The release's linear ramp: 0 at the first scale, cfg at the last."""
    return cfg * scale_index / (num_scales - 1)


def cfg_mix(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * cond - t * uncond; conditional rows first, unconditional second."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def sort_ascending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x.sort(dim=-1) for float32 on CPU through order-preserving int32 keys (about 1.5x faster there).

    Equal values may come out in another order, which changes neither the sorted values nor any sum
    over them: only which of several exactly tied tokens sits at a top-p boundary.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return x.sort(dim=-1)
    bits = x.view(torch.int32)
    _, idx = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).sort(dim=-1)
    return x.gather(-1, idx), idx


def top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask (in place, with -inf) all but the top_k tokens, then all outside the top_p mass."""
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:  # top_k >= V keeps every token: nothing to mask
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = sort_ascending(logits_BlV)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        logits_BlV.masked_fill_(remove_sorted.scatter(-1, sorted_idx, remove_sorted), -torch.inf)
    return logits_BlV


def top_p_from_candidates_(logits_BlV: torch.Tensor, top_p: float) -> torch.Tensor:
    """top_k_top_p_'s top-p mask without sorting every row (in place; returns logits_BlV).

    A token is kept while the probability mass of the tokens above it is below top_p. Rows whose
    TOP_P_CANDIDATES most likely tokens already hold top_p of the mass keep a subset of those, found
    with a partial top-k; only the other rows are sorted. The kept sets equal the release's up to
    float rounding of a sum that lands exactly on the boundary.
    """
    if not 0 < top_p < 1:  # 0: off; 1: every token of non-zero probability stays
        return logits_BlV
    V = logits_BlV.shape[-1]
    flat = logits_BlV.view(-1, V)
    probs = flat.float().softmax(dim=-1)
    top_vals, top_idx = probs.topk(min(TOP_P_CANDIDATES, V), dim=-1)  # descending
    head = top_vals.cumsum(dim=-1)
    remove = torch.ones_like(flat, dtype=torch.bool)
    remove.scatter_(-1, top_idx, head - top_vals >= top_p)
    uncovered = (head[:, -1] < top_p).nonzero().squeeze(1)
    if uncovered.numel():
        sorted_probs, sorted_idx = probs.index_select(0, uncovered).sort(dim=-1, descending=True)
        cut = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        remove[uncovered] = cut.scatter(-1, sorted_idx, cut)
    flat.masked_fill_(remove, -torch.inf)
    return logits_BlV


def draw_inverse_cdf(logits_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One categorical draw per token (B, l) from one uniform number each (inverse CDF).

    The same distribution as draw_tokens, which spends V random numbers per token; the tokens a
    seed gives differ from it.
    """
    if isinstance(generator, Sequence):
        return torch.cat([draw_inverse_cdf(logits_BlV[i:i + 1], g) for i, g in enumerate(generator)])
    B, l, V = logits_BlV.shape
    cdf = logits_BlV.float().softmax(dim=-1).view(-1, V).cumsum_(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=total.device, dtype=total.dtype)
    # u * total < total in float32, so the first entry above it is a token of non-zero probability
    return torch.searchsorted(cdf, u * total, right=True).clamp_(max=V - 1).view(B, l)


def filter_and_draw(logits_BlV: torch.Tensor, top_k: int, top_p: float, generator: Generators,
                    method: str = "release") -> tuple[torch.Tensor, torch.Tensor]:
    """Filter the guided logits in place and draw one token per position: (tokens (B, l), logits)."""
    if method == "release":
        logits_BlV = top_k_top_p_(logits_BlV, top_k, top_p)
        return draw_tokens(logits_BlV, generator), logits_BlV
    if method != "fast":
        raise ValueError(f"draw method must be one of {DRAW_METHODS}, got {method!r}")
    logits_BlV = top_p_from_candidates_(top_k_top_p_(logits_BlV, top_k, 0.0), top_p)
    return draw_inverse_cdf(logits_BlV, generator), logits_BlV


def draw_tokens(logits_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One multinomial draw per token (B, l), from a single (B*l, V) call as the release does.

    With a list of generators each sample draws from its own (a batch then equals single runs).
    """
    if isinstance(generator, Sequence):
        return torch.cat([draw_tokens(logits_BlV[i:i + 1], g) for i, g in enumerate(generator)])
    B, l, V = logits_BlV.shape
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def gumbel_smooth(logits_BlV: torch.Tensor, ratio: float, codebook_VC: torch.Tensor,
                  generator: Generators) -> torch.Tensor:
    """Soft token embeddings (B, l, C) by gumbel-softmax with the release's temperature schedule."""
    if isinstance(generator, Sequence):
        return torch.cat([gumbel_smooth(logits_BlV[i:i + 1], ratio, codebook_VC, g) for i, g in enumerate(generator)])
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits = logits_BlV.mul(1 + ratio)
    noise = torch.empty_like(logits).exponential_(generator=generator).log().neg()
    return ((logits + noise) / tau).softmax(dim=-1) @ codebook_VC.unsqueeze(0)
