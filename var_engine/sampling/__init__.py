"""Sampling: pure logit functions and the scale loop."""
from .logits import cfg_mix, draw_tokens, guidance_scale, gumbel_smooth, top_k_top_p_
from .sampler import (LayerPlan, SampleResult, ScaleHook, ScaleStats, ScaleStep, last_run_scales, layer_capacities,
                      sample)

__all__ = ["LayerPlan", "SampleResult", "ScaleHook", "ScaleStats", "ScaleStep", "cfg_mix", "draw_tokens",
           "guidance_scale", "gumbel_smooth", "last_run_scales", "layer_capacities", "sample", "top_k_top_p_"]
