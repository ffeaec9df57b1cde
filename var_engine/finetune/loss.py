"""Scale-wise weighted loss: per-scale mean cross-entropy times a weight per scale."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError


def scale_weights(spec: str | Sequence[float], patch_nums: Sequence[int]) -> torch.Tensor:
    """Weights per scale (K,), normalised to sum 1.

    spec: 'uniform'; 'power:G' for w_k ∝ (p_K / p_k)^G (coarse scales weigh more, G >= 0); 'step:S:W' for
    1.0 on scales with side <= S and W beyond; or K comma-separated numbers.
    """
    K, last = len(patch_nums), patch_nums[-1]
    if isinstance(spec, str):
        text = spec.strip().lower()
        try:
            if text == "uniform":
                w = [1.0] * K
            elif text.startswith("power:"):
                gamma = float(text.split(":", 1)[1])
                if not gamma >= 0 or not math.isfinite(gamma):
                    raise ValueError
                w = [(last / p) ** gamma for p in patch_nums]
            elif text.startswith("step:"):
                _, side, low = text.split(":")
                w = [1.0 if p <= int(side) else float(low) for p in patch_nums]
            else:
                w = [float(v) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise ConfigError(f"bad scale weights {spec!r}: use 'uniform', 'power:G', 'step:SIDE:W' or "
                              f"{K} comma-separated numbers") from e
    else:
        w = [float(v) for v in spec]
    if len(w) != K or any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"scale weights must be {K} finite numbers >= 0 (not all 0), got {w}")
    t = torch.tensor(w, dtype=torch.float32)
    return t / t.sum()


def token_weights(weights_K: torch.Tensor, patch_nums: Sequence[int]) -> torch.Tensor:
    """Per-scale weights (K,) -> per-token weights (L,): w_k / (p_k^2) on scale k's tokens, so that a
    token-weighted sum of cross-entropies is sum_k w_k * mean over scale k (the 1x1 scale counts in full)."""
    return torch.cat([torch.full((p * p,), float(w) / (p * p)) for w, p in zip(weights_K, patch_nums)])
