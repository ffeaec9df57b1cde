"""3x3 stride-1 convolutions by the Winograd transform F(4x4, 3x3) (Lavin & Gray, 2016).

Each 6x6 input tile gives a 4x4 output tile with 36 channel matmuls instead of 144: 2.25 multiply-adds
per output element and channel pair where the direct convolution needs 9. The 36 matmuls run as one
batched GEMM; the tile transforms are small matmuls over tiles that stay in the cache, a few rows of
tiles at a time. Float32 results differ from the direct convolution by about 1e-5 of the output's
magnitude (the transforms' constants reach 8).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

# input transform B^T, kernel transform G and output transform A^T of F(4x4, 3x3)
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
TILE, OUT_TILE = 6, 4
# the transformed input of one chunk of tile rows is kept near this size, so that the chunk's
# transforms and GEMM work in the cache (measured on 2 CPU cores: 4 MB is within noise of the best)
CHUNK_BYTES = 4 << 20


@functools.lru_cache(maxsize=None)
def _transforms(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(_BT, dtype=dtype, device=device), torch.tensor(_AT, dtype=dtype, device=device))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) kernel -> (36, Cin, Cout) transformed kernel G w G^T, in the kernel's dtype.

    Index 6 * j + i of the first axis holds tile position (row i, column j).
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    # row 6 j + i, column 3 l + k of kron(G, G) holds G[j, l] G[i, k]: one GEMM over the 9 taps
    taps = weight.detach().permute(3, 2, 1, 0).reshape(9, cin * cout)  # (l, k) x (Cin, Cout)
    return (torch.kron(g, g).to(weight.dtype) @ taps).view(TILE * TILE, cin, cout)


def conv3x3_winograd(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.conv2d(x, w, bias, padding=1) for a 3x3 kernel w, given u = winograd_weight(w).

    x: (B, Cin, H, W) in any memory format; the output keeps it. Inference only (no autograd graph).
    """
    B, C, H, W = x.shape
    cout = u.shape[2]
    if u.shape[:2] != (TILE * TILE, C):
        raise ValueError(f"transformed kernel {tuple(u.shape)} does not fit an input with {C} channels")
    n_h, n_w = -(-H // OUT_TILE), -(-W // OUT_TILE)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(B, cout, OUT_TILE * n_h, OUT_TILE * n_w, dtype=x.dtype, device=x.device, memory_format=fmt)
    bt, at = _transforms(x.dtype, x.device)
    rows_per_chunk = max(1, min(n_h, CHUNK_BYTES // (TILE * TILE * B * n_w * max(C, cout) * x.element_size())))
    width = OUT_TILE * n_w + 2
    row = B * width * C  # one padded input row of every image: (B, width, C)
    # padded input rows of one chunk, (rows, B, width, C); the padding columns stay zero
    rows_buf = x.new_zeros(OUT_TILE * rows_per_chunk + 2, B, width, C)
    x_rows = x.permute(2, 0, 3, 1)  # (H, B, W, C) view
    out_rows = out.permute(2, 0, 3, 1)  # (H, B, W, Cout) view
    sh, sb, sw, sc = out_rows.stride()
    for n0 in range(0, n_h, rows_per_chunk):
        n = min(n_h, n0 + rows_per_chunk) - n0  # tile rows in this chunk
        first, last = OUT_TILE * n0 - 1, OUT_TILE * (n0 + n) + 1  # input rows it reads, padding included
        lo, hi = max(first, 0), min(last, H)
        rows_buf[:lo - first].zero_()
        rows_buf[hi - first:].zero_()
        rows_buf[lo - first:hi - first, :, 1:W + 1].copy_(x_rows[lo:hi])
        tile_rows = rows_buf.view(-1, row).as_strided((n, TILE, row), (OUT_TILE * row, row, 1))
        by_rows = torch.matmul(bt, tile_rows)  # (n, 6 i, B * width * C): rows transformed
        tiles = by_rows.as_strided((TILE, TILE, n, B, n_w, C),  # (column l, i, n, b, tile t, c)
                                   (C, row, TILE * row, width * C, OUT_TILE * C, 1)).contiguous()
        v = torch.matmul(bt, tiles.view(TILE, -1)).view(TILE * TILE, n * B * n_w, C)  # (6 j * 6 i, tiles, C)
        m = torch.bmm(v, u)  # (36, tiles, Cout)
        half = torch.matmul(at, m.view(TILE, TILE, -1))  # (6 j, 4 a, tiles * Cout)
        y = torch.matmul(at, half.view(TILE, -1)).view(OUT_TILE, OUT_TILE, n, B, n_w, cout)  # (b, a, n, B, t, Cout)
        target = out_rows[OUT_TILE * n0:OUT_TILE * (n0 + n)]
        target = target.as_strided((n, OUT_TILE, B, n_w, OUT_TILE, cout),
                                   (OUT_TILE * sh, sh, sb, OUT_TILE * sw, sw, sc), target.storage_offset())
        y = y.permute(2, 1, 3, 4, 0, 5)
        if bias is None:
            target.copy_(y)
        else:
            torch.add(y, bias, out=target)
    if out.shape[2:] != (H, W):
        out = out[:, :, :H, :W].contiguous(memory_format=fmt)
    return out


CONV_ALGORITHMS = ("auto", "direct", "winograd")
# 'auto' takes the Winograd path where it measured faster on 2 CPU cores (float32, 256px decoder:
# 1.4-2.2x per convolution from 128 channels up; at 32-64 channels the direct kernel wins) and where
# its cached kernel (4x the weight) pays for itself: the 256px decoder's 640-channel convolutions at
# 16x16 would save 0.11 s per image for 560 MiB of kernels, so they stay direct (229 MiB cached)
AUTO_MIN_CHANNELS, AUTO_MIN_SIZE = 128, 32


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(cin, cout, 3, padding=1) (same parameters) whose inference can run as F(4x4, 3x3).

    algorithm: 'direct' (F.conv2d), 'winograd', or 'auto' (Winograd for float32 on CPU from
    AUTO_MIN_CHANNELS channels and AUTO_MIN_SIZE pixels a side, outside autocast and torch.compile,
    which choose their own kernels). Training and autograd always use F.conv2d. The transformed
    kernel (36 Cin Cout elements) is cached and rebuilt when the weight changes; `drop_cache` frees it.
    """

    algorithm = "auto"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self._winograd: tuple[tuple, torch.Tensor] | None = None

    def uses_winograd(self, x: torch.Tensor) -> bool:
        if self.algorithm == "direct" or torch.is_grad_enabled() or x.dim() != 4 or not x.is_floating_point():
            return False
        if self.algorithm == "winograd":
            return True
        return (x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and min(self.in_channels, self.out_channels) >= AUTO_MIN_CHANNELS
                and min(x.shape[2], x.shape[3]) >= AUTO_MIN_SIZE)

    def winograd_kernel(self) -> torch.Tensor:
        w = self.weight
        # inference tensors (made under torch.inference_mode) cannot change in place: no version counter
        version = None if w.is_inference() else w._version
        key = (version, w.data_ptr(), w.dtype, w.device)
        if self._winograd is None or self._winograd[0] != key:
            self._winograd = (key, winograd_weight(w))
        return self._winograd[1]

    def cache_bytes(self) -> int:
        return 0 if self._winograd is None else self._winograd[1].numel() * self._winograd[1].element_size()

    def drop_cache(self) -> None:
        self._winograd = None

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(), memory formats: the cached kernel is stale
        self.drop_cache()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_winograd(x):
            kernel = self.winograd_kernel()
            return conv3x3_winograd(x, kernel.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return super().forward(x)
