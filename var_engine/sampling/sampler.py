"""The scale loop: guided next-scale sampling with a static KV cache and hook points.

Add-ons plug in through two small interfaces chosen before the loop:
- a `LayerPlan` (scale_index -> blocks to run) for depth-switchable subnets;
- `ScaleHook`s called after each scale with a `ScaleStep` (the `Population`, the scale index and
  count, partial images on request), which may return population indices to continue with
  (repeats allowed, any length up to the current batch) for search methods.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from ..cache import KVCache
from ..config import SamplingConfig
from ..tokenizer.quantizer import MultiScaleQuantizer
from ..transformer import VARTransformer
from .forcing import ForceStep, TokenForcer
from .logits import Generators, cfg_mix, filter_and_draw, guidance_scale, gumbel_smooth
from .population import Decoder, Population
from .runners import CacheSpec, EagerRunner

LayerPlan = Callable[[int], "Sequence[int] | None"]  # scale_index -> blocks to run (None: all)


@dataclass
class ScaleStep:
    """What a hook sees after scale `scale_index` of `num_scales`: the current population.

    The fields read the population at the time of access, so a hook after one that selected sees the
    selected population (tokens, logits, latents, labels and groups alike).
    """

    scale_index: int
    num_scales: int
    population: Population

    @property
    def idx_Bl(self) -> torch.Tensor:  # tokens drawn at this scale
        return self.population.drawn[-1]

    @property
    def logits_BlV(self) -> torch.Tensor:  # guided logits after top-k/top-p filtering
        return self.population.logits

    @property
    def f_hat_BChw(self) -> torch.Tensor:  # accumulated latent so far
        return self.population.f_hat

    @property
    def labels_B(self) -> torch.Tensor:
        return self.population.labels

    @property
    def group_B(self) -> torch.Tensor:  # which request each sample serves
        return self.population.group

    @property
    def tokens_BL(self) -> torch.Tensor:  # all tokens drawn so far, coarse to fine
        return self.population.tokens

    @property
    def is_last(self) -> bool:
        return self.scale_index == self.num_scales - 1

    def decode(self) -> torch.Tensor:
        """The partial images (B, 3, H, W) in [0, 1]: one decoder pass, made only when asked."""
        return self.population.images()


class ScaleHook(Protocol):
    def after_scale(self, step: ScaleStep) -> torch.Tensor | None:
        """Return population indices to continue with (repeats allowed), or None to keep the population."""


@dataclass
class ScaleStats:
    scale_index: int
    patch_num: int
    batch: int  # samples that generated this scale
    tokens: int  # tokens generated at this scale (batch * pn^2)
    seconds: float  # the whole scale, hooks included
    kv_bytes: int  # bytes held by the cache after this scale
    layers: int  # blocks run at this scale
    hook_seconds: float = 0.0  # time spent in hooks (decodes included)
    selected: int | None = None  # population after the hooks (None: unchanged)
    refilled: int = 0  # samples whose earlier scales were re-run at full depth before this scale


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (B, L)
    f_hat: torch.Tensor  # (B, C, h, w)
    labels: torch.Tensor  # (B,)
    per_scale: list[ScaleStats] = field(default_factory=list)
    kv_peak_bytes: int = 0
    seconds: float = 0.0
    group: torch.Tensor | None = None  # (B,) request of each final sample
    lineage: torch.Tensor | None = None  # (B,)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # scale -> (B,) scores hooks recorded
    decodes: int = 0  # images decoded for hooks
    decode_seconds: float = 0.0  # of those decodes
    images: torch.Tensor | None = None  # the final images in [0, 1] if a hook decoded them (else None)


def runs_layer(plan: LayerPlan | None, scale_index: int, layer: int) -> bool:
    layers = None if plan is None else plan(scale_index)
    return layers is None or layer in layers


def last_run_scales(plan: LayerPlan | None, depth: int, num_scales: int) -> list[int]:
    """For each layer, the last scale index at which the plan runs it (-1: never)."""
    last = [-1] * depth
    for layer in range(depth):
        for si in range(num_scales):
            if runs_layer(plan, si, layer):
                last[layer] = si
    return last


def refill_scales(plan: LayerPlan | None, depth: int, num_scales: int) -> list[int]:
    """Scales before which the sampler recomputes every layer's cache over the earlier scales, at full
    depth: those where a layer runs again after the plan skipped it (its cache would have a hole).

    Such plans must run every layer from there on (a refill needs the full network's prefix).
    """
    refills = []
    for si in range(1, num_scales):
        resumed = [layer for layer in range(depth) if runs_layer(plan, si, layer)
                   and not runs_layer(plan, si - 1, layer)]
        if resumed:
            if any(not runs_layer(plan, k, layer) for k in range(si, num_scales) for layer in range(depth)):
                raise ValueError(f"layer plan resumes layers {resumed} at scale {si} but skips layers then; "
                                 "a plan may return to full depth only for good")
            refills.append(si)
    return refills


def layer_capacities(last_run: Sequence[int], scale_ends: Sequence[int],
                     transient_last_scale: bool = False) -> list[int]:
    """Tokens each layer must cache: up to the end of the last scale it runs (`last_run_scales`).

    With transient_last_scale the final scale's keys/values are never stored (they are read only
    by the final scale itself), so layers that run it cache up to the previous scale.
    """
    K = len(scale_ends)
    caps = []
    for s in last_run:
        if s < 0:
            caps.append(0)
        elif s == K - 1 and transient_last_scale and K > 1:
            caps.append(scale_ends[-2])
        else:
            caps.append(scale_ends[s])
    return caps


def refill_prefix(transformer: VARTransformer, runner: EagerRunner, pop: Population, capacities: Sequence[int],
                  scale_index: int) -> None:
    """Re-run scales [0, scale_index) of the population at full depth from their recorded inputs, so
    every layer's cache holds the full network's keys/values (released layers are allocated anew,
    for the current population only)."""
    cache = pop.cache
    for layer in sorted(cache.released):
        cache.allocate(layer, capacities[layer])
    x = transformer.first_input(pop.cond)
    for k in range(scale_index):
        if k > 0:
            x = transformer.scale_input(pop.inputs[k - 1], k)
            if pop.halves == 2:
                x = x.repeat(2, 1, 1)
        runner.step(transformer, x, k, pop.cond, cache, None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample(transformer: VARTransformer, quantizer: MultiScaleQuantizer, labels_B: torch.Tensor,
           settings: SamplingConfig, *, generator: Generators = None,
           layer_plan: LayerPlan | None = None, hooks: Sequence[ScaleHook] = (),
           transient_last_scale: bool = False, runner: EagerRunner | None = None,
           groups: torch.Tensor | None = None, decoder: Decoder | None = None,
           forcer: TokenForcer | None = None) -> SampleResult:
    """Sample token maps for `labels_B` scale by scale; returns tokens and the final f_hat.

    Parity with the release (settings.draw == "release"): the same generator draws one
    multinomial per scale over the (B*l, V) guided probabilities. A list of per-sample
    generators makes every sample independent of its batch (used for reproducible, shardable batch
    generation); they follow the population when hooks select from it. With cfg == 0 the
    unconditional half is skipped (identical tokens, half the work). transient_last_scale keeps the
    final scale's keys/values out of the cache (one layer's worth exists at a time): about a third
    less peak KV memory. runner: how each scale step executes (eager by default; compiled or CUDA
    graphs, see runners). groups: (B,) request id of each sample (default: its position).
    decoder: f_hat -> images in [0, 1], for hooks that ask for partial images (`ScaleStep.decode`).
    forcer: replaces drawn tokens/embeddings at each scale before they enter f_hat (e.g. editing).
    Under torch.autocast the cache holds keys/values in the autocast dtype.
    """
    if isinstance(generator, Sequence) and len(generator) != labels_B.shape[0]:
        raise ValueError(f"{len(generator)} generators for {labels_B.shape[0]} samples")
    cfg_t = transformer.cfg
    device = transformer.pos_1LC.device
    patch_nums, K = cfg_t.patch_nums, cfg_t.num_scales
    ranges = cfg_t.scale_ranges()
    labels_B = labels_B.to(device)
    B = labels_B.shape[0]
    if groups is not None and tuple(groups.shape) != (B,):
        raise ValueError(f"groups must have shape ({B},), got {tuple(groups.shape)}")
    guided = settings.cfg != 0
    halves = 2 if guided else 1

    t0 = time.perf_counter()
    rows = torch.cat((labels_B, torch.full_like(labels_B, cfg_t.num_classes))) if guided else labels_B
    cond = transformer.condition(rows)
    last_run = last_run_scales(layer_plan, cfg_t.depth, K)
    refills = refill_scales(layer_plan, cfg_t.depth, K)
    runner = runner or EagerRunner()
    kv_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else cond.cond_BD.dtype
    capacities = layer_capacities(last_run, [e for _, e in ranges], transient_last_scale)
    cache: KVCache = runner.new_cache(CacheSpec(B, cfg_t.num_heads, cfg_t.head_dim, tuple(capacities), halves,
                                                kv_dtype, device, transient_last_scale))
    if refills and cache.static:
        raise ValueError(f"the {runner.name} runner keeps static caches; a plan that returns to full depth "
                         "needs the eager runner")
    H = patch_nums[-1]
    arange = torch.arange(B, device=device)
    pop = Population(labels=labels_B, cond=cond, cache=cache, halves=halves,
                     f_hat=cond.cond_BD.new_zeros(B, cfg_t.z_channels, H, H),
                     generators=list(generator) if isinstance(generator, Sequence) else generator,
                     group=arange.clone() if groups is None else groups.to(device=device, dtype=torch.long),
                     lineage=arange, decoder=decoder, inputs=[] if refills else None)
    x = transformer.first_input(cond)
    per_scale: list[ScaleStats] = []
    for si, pn in enumerate(patch_nums):
        ts = time.perf_counter()
        batch = pop.batch
        layers = None if layer_plan is None else layer_plan(si)
        if si in refills:
            refill_prefix(transformer, runner, pop, capacities, si)
        logits = runner.step(transformer, x, si, pop.cond, cache, layers)
        ratio = si / (K - 1)
        if guided:
            logits = cfg_mix(logits, guidance_scale(settings.cfg, si, K))
        idx_Bl, logits = filter_and_draw(logits, settings.top_k, settings.top_p, pop.generators, settings.draw,
                                         filtered=bool(hooks) or settings.more_smooth)
        if settings.more_smooth:
            h = gumbel_smooth(logits, ratio, quantizer.embedding.weight, pop.generators)  # (B, l, C)
            h_BChw = h.transpose(1, 2).reshape(-1, cfg_t.z_channels, pn, pn)
        else:
            h_BChw = quantizer.embed(idx_Bl, pn)
        if forcer is not None:
            idx_Bl, h_BChw = forcer.force(ForceStep(si, pn, pop, idx_Bl, h_BChw))
        f_hat = pop.f_hat.clone()  # hooks may hold the previous f_hat: never change it in place
        next_map = quantizer.next_scale_input(si, f_hat, h_BChw)
        pop.advance(idx_Bl, logits, f_hat, next_map if si + 1 < K else None)
        selected, hook_seconds = None, 0.0
        if hooks:
            _sync(device)  # the scale's own kernels are not hook time
            th, selections = time.perf_counter(), pop.selections
            pop.cache_in_use = si + 1 < K  # after the last scale a selection needs no cache gather
            step = ScaleStep(si, K, pop)
            for hook in hooks:
                keep = hook.after_scale(step)
                if keep is not None:
                    pop.select(keep)
            _sync(device)
            hook_seconds = time.perf_counter() - th
            selected = pop.batch if pop.selections != selections else None
        if si + 1 < K:
            # release caches of layers the next scale does not run (refilled if a later scale does)
            cache.release(layer for layer in range(cfg_t.depth)
                          if runs_layer(layer_plan, si, layer) and not runs_layer(layer_plan, si + 1, layer))
            x = transformer.scale_input(pop.next_map, si + 1)
            if guided:
                x = x.repeat(2, 1, 1)
        _sync(device)
        per_scale.append(ScaleStats(si, pn, batch, batch * pn * pn, time.perf_counter() - ts, cache.nbytes(),
                                    cfg_t.depth if layers is None else len(layers), hook_seconds, selected,
                                    batch if si in refills else 0))
    return SampleResult(pop.tokens, pop.f_hat, pop.labels, per_scale, cache.peak_bytes, time.perf_counter() - t0,
                        group=pop.group, lineage=pop.lineage, scores=pop.scores, decodes=pop.decode_count,
                        decode_seconds=pop.decode_seconds, images=pop.cached_images())
