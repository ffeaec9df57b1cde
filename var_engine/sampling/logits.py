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


def _uniforms(counts: Sequence[int] | int, generator: Generators, device: torch.device) -> torch.Tensor:
    """Uniform numbers in [0, 1): `counts` of them from one generator, or counts[i] from generator i."""
    if not isinstance(generator, Sequence):
        return torch.rand(int(counts), generator=generator, device=device)
    parts = [torch.rand(c, generator=g, device=device) for c, g in zip(counts, generator) if c]
    return torch.cat(parts) if parts else torch.empty(0, device=device)


def _inverse_cdf(cdf_NV: torch.Tensor, u_N: torch.Tensor) -> torch.Tensor:
    """Index of the first cdf entry above u * total in each row (a token of non-zero probability)."""
    total = cdf_NV[:, -1:]
    # u * total < total in float32, so the entry found is never past the last non-zero probability
    return torch.searchsorted(cdf_NV, u_N.unsqueeze(1) * total, right=True).clamp_(max=cdf_NV.shape[1] - 1).squeeze(1)


def draw_inverse_cdf(logits_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One categorical draw per token (B, l) from one uniform number each (inverse CDF).

    The same distribution as draw_tokens, which spends V random numbers per token; the tokens a
    seed gives differ from it. With per-sample generators, sample i uses only generator i.
    """
    return draw_top_p_by_rejection(logits_BlV, 1.0, generator)


def mass_above(probs_NV: torch.Tensor, p_N: torch.Tensor) -> torch.Tensor:
    """Per row, the probability mass of the tokens strictly more likely than p_N (one pass, no sort)."""
    return torch.where(probs_NV > p_N.unsqueeze(1), probs_NV, 0.0).sum(dim=1)


def draw_top_p_by_rejection(logits_BlV: torch.Tensor, top_p: float, generator: Generators,
                            max_rounds: int = 8) -> torch.Tensor:
    """One token per position (B, l) from the top-p set of each row, without finding that set.

    Draws from the whole distribution by inverse CDF and redraws the rows whose token lies outside
    the top-p set (the mass of the tokens more likely than it is top_p or more). Accepted tokens
    follow the distribution renormalised to the top-p set exactly; a round rejects at most
    1 - top_p of a row's mass. Rows still rejected after `max_rounds` (rare unless top_p is small)
    take the sorted top-p mask and one more draw. Uniform numbers are spent row by row per
    round, so with per-sample generators a sample's tokens do not depend on its batch.
    """
    B, l, V = logits_BlV.shape
    probs = logits_BlV.float().softmax(dim=-1).view(-1, V)
    cdf = probs.cumsum(dim=-1)
    per_sample = isinstance(generator, Sequence)

    def draw(rows: torch.Tensor, cdf_rows: torch.Tensor) -> torch.Tensor:
        """Tokens for flat rows `rows` (ascending), uniforms taken per sample in row order."""
        counts = torch.bincount(rows // l, minlength=B).tolist() if per_sample else rows.numel()
        return _inverse_cdf(cdf_rows, _uniforms(counts, generator, probs.device))

    pending = torch.arange(B * l, device=probs.device)
    tokens = draw(pending, cdf)
    if not 0 < top_p < 1:  # 0: off; 1: every token of non-zero probability stays
        return tokens.view(B, l)
    for _ in range(max_rounds):
        rows = probs.index_select(0, pending)
        p_tok = rows.gather(1, tokens.index_select(0, pending).unsqueeze(1)).squeeze(1)
        pending = pending[mass_above(rows, p_tok) >= top_p]
        if not pending.numel():
            return tokens.view(B, l)
        tokens[pending] = draw(pending, cdf.index_select(0, pending))
    masked = top_p_from_candidates_(logits_BlV.reshape(-1, V).index_select(0, pending).unsqueeze(0), top_p)
    tokens[pending] = draw(pending, masked.squeeze(0).float().softmax(dim=-1).cumsum_(dim=-1))
    return tokens.view(B, l)


def filter_and_draw(logits_BlV: torch.Tensor, top_k: int, top_p: float, generator: Generators,
                    method: str = "release", filtered: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter the guided logits in place and draw one token per position: (tokens (B, l), logits).

    method 'fast' draws without finding the top-p set; filtered=False then also leaves the logits
    without the top-p mask (set it only when nothing reads them).
    """
    if method == "release":
        logits_BlV = top_k_top_p_(logits_BlV, top_k, top_p)
        return draw_tokens(logits_BlV, generator), logits_BlV
    if method != "fast":
        raise ValueError(f"draw method must be one of {DRAW_METHODS}, got {method!r}")
    logits_BlV = top_k_top_p_(logits_BlV, top_k, 0.0)
    tokens = draw_top_p_by_rejection(logits_BlV, top_p, generator)
    return tokens, (top_p_from_candidates_(logits_BlV, top_p) if filtered else logits_BlV)


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
