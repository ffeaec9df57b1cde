"""Linear-layer kernels behind one switch: 'blas' (torch's default GEMM) or 'onednn' (CPU inference).

On CPU the sampler's early scales multiply a few token rows by weights of tens of MB; there
oneDNN's matmul measured 1.7-1.85x faster than the BLAS path at 2-8 rows and 1.15-1.9x at 32-72,
about even from 200 rows, and slower for small weights. 'auto' therefore sends CPU float32
inference with at most ONEDNN_MAX_ROWS rows against a weight of at least ONEDNN_MIN_WEIGHT
elements to oneDNN, and everything else (training, CUDA, autocast, torch.compile, which chooses
its own kernels) to BLAS. Both compute the same function up to summation order.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_BACKENDS = ("auto", "blas", "onednn")
LinearFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN has no backward here and is a CPU float32 kernel: everything else goes to BLAS."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


# where oneDNN measured faster than BLAS on CPU: few rows against a large weight
ONEDNN_MAX_ROWS = 128
ONEDNN_MIN_WEIGHT = 1 << 20


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through oneDNN's matmul (CPU, float32, no gradient), else F.linear."""
    if _needs_grad(x, weight, bias) or not _onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def auto_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN for few rows against a large weight (where it beats BLAS on CPU), else F.linear."""
    if x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1] and weight.numel() >= ONEDNN_MIN_WEIGHT:
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def resolve_linear(name: str | None) -> LinearFn:
    """'auto'/None -> oneDNN for few rows x large weights, 'blas' -> F.linear, 'onednn' -> oneDNN wherever it applies."""
    if name not in (None, *LINEAR_BACKENDS):
        raise ValueError(f"unknown linear backend {name!r}; choose from {list(LINEAR_BACKENDS)}")
    if name == "blas":
        return F.linear
    if name == "onednn":
        if not onednn_available():
            raise ValueError("linear backend 'onednn' is not available in this torch build")
        return onednn_linear
    return auto_linear if onednn_available() else F.linear


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) whose kernel can be switched."""

    kernel: LinearFn = staticmethod(F.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.bias)


def set_linear_backend(module: nn.Module, name: str | None) -> None:
    """Use backend `name` for every switchable Linear inside `module`."""
    kernel = resolve_linear(name)
    for m in module.modules():
        if isinstance(m, Linear):  # small weights never take oneDNN under 'auto': skip the per-call check
            small = kernel is auto_linear and m.weight.numel() < ONEDNN_MIN_WEIGHT
            m.kernel = F.linear if small else kernel
