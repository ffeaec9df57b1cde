"""Transformer compute of a sampling run, in units of one plain full-depth sample at the same guidance.

Per token, each block costs about 24 C^2 multiply-add FLOPs (QKV, projection, a 4x MLP) plus 4 C L
for attention over the L tokens cached so far; the head costs 2 C V. Guidance doubles both the run and
the unit, so it cancels. A plan that returns to full depth re-runs the earlier scales of its population
at full depth first (the refill); that counts too. Decoding and rewards are not transformer compute: they are reported in
seconds beside it.
"""
from __future__ import annotations

from typing import Sequence

from ..config import TransformerConfig
from ..sampling import LayerPlan, refill_scales


def scale_flops(cfg: TransformerConfig, scale_index: int, layers: int) -> float:
    """FLOPs to generate one sample's tokens of scale `scale_index` with `layers` blocks."""
    start, end = cfg.scale_ranges()[scale_index]
    C = cfg.embed_dim
    per_token = layers * (24 * C * C + 4 * C * end) + 2 * C * cfg.vocab_size
    return (end - start) * per_token


def plain_sample_flops(cfg: TransformerConfig) -> float:
    """The unit: one sample through every scale at full depth."""
    return sum(scale_flops(cfg, k, cfg.depth) for k in range(cfg.num_scales))


def layers_per_scale(cfg: TransformerConfig, layer_plan: LayerPlan | None) -> list[int]:
    return [cfg.depth if layer_plan is None or layer_plan(k) is None else len(layer_plan(k))
            for k in range(cfg.num_scales)]


def plan_refills(cfg: TransformerConfig, layer_plan: LayerPlan | None) -> tuple[int, ...]:
    """Scales before which the sampler re-runs the earlier scales at full depth (`sampling.refill_scales`)."""
    return tuple(refill_scales(layer_plan, cfg.depth, cfg.num_scales))


def run_cost(cfg: TransformerConfig, batches: Sequence[int], layers: Sequence[int] | None = None,
             refilled: Sequence[int] | None = None) -> float:
    """Compute of generating `batches[k]` samples at each scale k with `layers[k]` blocks, plus `refilled[k]`
    samples whose scales [0, k) are re-run at full depth before scale k, in plain-sample units."""
    if len(batches) != cfg.num_scales:
        raise ValueError(f"{len(batches)} batch sizes for {cfg.num_scales} scales")
    layers = [cfg.depth] * cfg.num_scales if layers is None else layers
    flops = sum(b * scale_flops(cfg, k, n) for k, (b, n) in enumerate(zip(batches, layers)))
    for k, r in enumerate(refilled or ()):
        flops += r * sum(scale_flops(cfg, j, cfg.depth) for j in range(k))
    return flops / plain_sample_flops(cfg)
