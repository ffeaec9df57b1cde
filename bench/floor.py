"""The physical floor of sampling: what the device could not beat even with perfect kernels.

Per scale step, the transformer must read every weight it uses once (bytes / memory bandwidth)
and do its multiply-adds (FLOPs / peak matmul rate); the step cannot take less than the larger
of the two. The decoder's floor is its FLOPs over the peak rate. Peaks are measured on the
device (a large copy, a large matmul), not taken from a datasheet.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import sync

from var_engine.config import TransformerConfig


@dataclass
class DevicePeaks:
    bandwidth: float  # bytes/s, device memory copy (read + write counted)
    matmul: float  # FLOP/s of a large square matmul in the compute dtype


def _best_seconds(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure_peaks(device: torch.device | str, dtype: torch.dtype = torch.float32) -> DevicePeaks:
    """Best-of-5 copy bandwidth and matmul rate on `device` (sizes scaled for CPU or GPU)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n_bytes = (1 << 30) if cuda else (1 << 28)
    buffers = torch.ones(2, n_bytes // 4, dtype=torch.float32, device=device)
    bandwidth = 2 * n_bytes / _best_seconds(lambda: buffers[1].copy_(buffers[0]), device)
    buffers = None  # free before the matmul
    n = 8192 if cuda else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul = 2 * n ** 3 / _best_seconds(lambda: a @ b, device)
    return DevicePeaks(bandwidth, matmul)


def block_matmul_params(cfg: TransformerConfig) -> int:
    """Weights of one block's token-wise matmuls (qkv, proj, fc1, fc2); AdaLN runs once per call."""
    C = cfg.embed_dim
    hidden = round(C * cfg.mlp_ratio)
    return 3 * C * C + C * C + 2 * C * hidden


def step_matmul_params(cfg: TransformerConfig, depth: int | None = None) -> int:
    """Weights every token of a scale step multiplies: the blocks' matmuls, the head and the input projection."""
    depth = cfg.depth if depth is None else depth
    return depth * block_matmul_params(cfg) + cfg.embed_dim * cfg.vocab_size + cfg.z_channels * cfg.embed_dim


def transformer_step_costs(cfg: TransformerConfig, rows: int, scale_index: int,
                           depth: int | None = None, elem_bytes: int = 4) -> tuple[float, float]:
    """(FLOPs, bytes) of one cached scale step for `rows` sequences (CFG doubles the rows).

    bytes: the step's weights once plus the keys/values it reads; FLOPs: matmuls + attention + head.
    """
    depth = cfg.depth if depth is None else depth
    C = cfg.embed_dim
    begin, end = cfg.scale_ranges()[scale_index]
    l = end - begin
    params = step_matmul_params(cfg, depth)
    flops = 2 * rows * l * params + depth * 4 * rows * l * end * C
    weight_bytes = params * elem_bytes
    kv_bytes = depth * 2 * rows * end * C * elem_bytes
    return flops, weight_bytes + kv_bytes


def conditioning_costs(cfg: TransformerConfig, rows: int, elem_bytes: int = 4) -> tuple[float, float]:
    """(FLOPs, bytes) of the AdaLN projections, computed once per call from the class embeddings."""
    C = cfg.embed_dim
    params = (1 if cfg.shared_aln else cfg.depth) * 6 * C * C + 2 * C * C
    return 2 * rows * params, params * elem_bytes


def transformer_floor_seconds(cfg: TransformerConfig, batch: int, peaks: DevicePeaks, *, guided: bool = True,
                              elem_bytes: int = 4) -> float:
    """Conditioning once, then the sum over scales of max(bytes / bandwidth, FLOPs / matmul rate)."""
    rows = batch * (2 if guided else 1)
    flops, nbytes = conditioning_costs(cfg, rows, elem_bytes)
    total = max(nbytes / peaks.bandwidth, flops / peaks.matmul)
    for si in range(cfg.num_scales):
        flops, nbytes = transformer_step_costs(cfg, rows, si, elem_bytes=elem_bytes)
        total += max(nbytes / peaks.bandwidth, flops / peaks.matmul)
    return total


def transformer_matmul_flops(cfg: TransformerConfig, batch: int, *, guided: bool = True) -> float:
    """FLOPs of one sampling call's weight matmuls (linear layers): the conditioning once, then every
    scale's tokens through the blocks, the head and the input projection (attention not included)."""
    rows = batch * (2 if guided else 1)
    return conditioning_costs(cfg, rows)[0] + 2 * rows * cfg.num_tokens * step_matmul_params(cfg)


def decoder_flops(decoder: torch.nn.Module, latent_shape: tuple[int, ...], device: torch.device | str) -> int:
    """FLOPs of one decoder pass on a latent of `latent_shape` (counted by PyTorch's FlopCounterMode)."""
    z = torch.zeros(latent_shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        decoder(z)
    return counter.get_total_flops()
