"""Attention backends behind one switch: 'sdpa' (default), 'math' (reference), 'xformers' (GPU)."""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError

# q, k, v: (B, H, L, D); mask: additive (1, 1, Lq, Lk) or None -> (B, H, Lq, D)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


def sdpa_attention(q, k, v, scale: float, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def math_attention(q, k, v, scale: float, mask=None):
    attn = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        attn = attn + mask
    return attn.softmax(dim=-1) @ v


def xformers_attention(q, k, v, scale: float, mask=None):
    from xformers.ops import memory_efficient_attention  # optional 'gpu' extra

    bias = None if mask is None else mask.to(q.dtype).expand(q.shape[0], q.shape[1], -1, -1)
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                     attn_bias=bias, scale=scale)
    return out.transpose(1, 2)


BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention, "math": math_attention, "xformers": xformers_attention}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` ('xformers' only on CUDA with the package installed)."""
    names = ["sdpa", "math"]
    if torch.device(device).type == "cuda" and importlib.util.find_spec("xformers") is not None:
        names.append("xformers")
    return names


def resolve_backend(name: str | None, device: torch.device | str = "cpu") -> AttentionFn:
    """'auto'/None -> sdpa; otherwise the named backend, with a clear error if unusable here."""
    if name in (None, "auto"):
        return sdpa_attention
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose from {sorted(BACKENDS)} or 'auto'")
    if name not in available_backends(device):
        raise ConfigError(f"attention backend {name!r} is not available on {torch.device(device).type}"
                         " (xformers needs CUDA and the 'gpu' extra)")
    return BACKENDS[name]
