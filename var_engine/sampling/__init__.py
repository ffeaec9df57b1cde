"""Sampling: pure logit functions, the population and the scale loop."""
from .logits import cfg_mix, draw_tokens, guidance_scale, gumbel_smooth, top_k_top_p_
from .population import Population, cloned_generator, forked_generator
from .runners import RUNNERS, CompiledRunner, CUDAGraphRunner, EagerRunner, make_runner
from .sampler import (LayerPlan, SampleResult, ScaleHook, ScaleStats, ScaleStep, last_run_scales, layer_capacities,
                      refill_scales, sample)

__all__ = ["RUNNERS", "CUDAGraphRunner", "CompiledRunner", "EagerRunner", "LayerPlan", "Population", "SampleResult",
           "ScaleHook", "ScaleStats", "ScaleStep", "cfg_mix", "cloned_generator", "draw_tokens", "forked_generator",
           "guidance_scale", "gumbel_smooth", "last_run_scales", "layer_capacities", "make_runner", "refill_scales",
           "sample", "top_k_top_p_"]
