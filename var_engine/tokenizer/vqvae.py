"""Convolutional encoder and decoder of the VQVAE: image_B3HW <-> f_BChw.

Module names follow the official release so that its state dicts load unchanged.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TokenizerConfig
from .winograd import Conv3x3


GROUP_NORM_LAYOUTS = ("auto", "native", "keep")


class LayoutGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters) that can keep a channels-last input channels-last.

    Where the native kernel returns a channels-first tensor for a channels-last input (CUDA in
    some PyTorch versions: each norm then costs two layout conversions), the 'keep' path computes
    the same normalisation from float32 statistics of the channels-last view, with the output in
    the input's dtype and layout. layout: 'auto' (keep where the native op would not), 'native'
    or 'keep'. Inference only; training and other inputs always use the native op.
    """

    layout = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.layout != "native" and x.dim() == 4 and not torch.is_grad_enabled()
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and (self.layout == "keep" or not native_group_norm_keeps_layout(x.device))):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor | None,
                             bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.group_norm of a channels-last (B, C, H, W) tensor, returned channels-last in x's dtype."""
    B, C, H, W = x.shape
    per_group = C // groups
    grouped = x.permute(0, 2, 3, 1).reshape(B, H * W, groups, per_group)  # a view of channels-last memory
    var, mean = torch.var_mean(grouped.float(), dim=(1, 3), correction=0)  # (B, G)
    scale = (var + eps).rsqrt().unsqueeze(-1).expand(B, groups, per_group)  # per (sample, group, channel)
    if weight is not None:
        scale = scale * weight.float().view(groups, per_group)
    shift = -mean.unsqueeze(-1) * scale
    if bias is not None:
        shift = shift + bias.float().view(groups, per_group)
    scale, shift = scale.reshape(B, C), shift.reshape(B, C)
    return torch.addcmul(shift.to(x.dtype).view(B, C, 1, 1), x, scale.to(x.dtype).view(B, C, 1, 1))


@functools.lru_cache(maxsize=None)
def native_group_norm_keeps_layout(device: torch.device) -> bool:
    """Whether F.group_norm returns channels-last output for channels-last input on `device`."""
    x = torch.ones(1, 4, 2, 2, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return F.group_norm(x, 2).is_contiguous(memory_format=torch.channels_last)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return LayoutGroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


# Nearest 2x upsampling followed by a 3x3 convolution equals, for each of the four output phases,
# a 2x2 convolution of the low-resolution input with summed taps: rows (i-1, i) see kernel rows
# (0, 1+2) for even outputs, rows (i, i+1) see (0+1, 2) for odd ones (same for columns).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (phase, 2 taps, 3 kernel rows)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (4 * Cout, Cin, 2, 2): one 2x2 kernel per output phase (a, b)."""
    taps = _PHASE_TAPS.to(weight)
    w = torch.einsum("apk,bql,oikl->aboipq", taps, taps, weight)
    return w.reshape(4 * weight.shape[0], weight.shape[1], 2, 2)


def upsample_conv_subpixel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest_upsample_2x(x)) with 4/9 of the multiply-adds, equal up to float rounding."""
    B, _, H, W = x.shape
    cout = weight.shape[0]
    y = F.conv2d(x, subpixel_weight(weight), None if bias is None else bias.repeat(4), padding=1)
    y = y.unflatten(1, (2, 2, cout))  # (B, a, b, Cout, H + 1, W + 1)
    # a freshly allocated output (not a view), so later kernels see its memory format without copying
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = torch.empty(B, cout, 2 * H, 2 * W, dtype=y.dtype, device=x.device, memory_format=torch.channels_last)
        phases = out.permute(0, 2, 3, 1).view(B, H, 2, W, 2, cout).permute(0, 5, 1, 2, 3, 4)
    else:
        out = x.new_empty(B, cout, 2 * H, 2 * W, dtype=y.dtype)
        phases = out.view(B, cout, H, 2, W, 2)
    for a in (0, 1):
        for b in (0, 1):
            phases[:, :, :, a, :, b] = y[:, a, b, :, a:a + H, b:b + W]
    return out


class Upsample2x(nn.Module):
    """Nearest 2x upsampling + 3x3 conv; in eval mode computed as four 2x2 sub-pixel convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.subpixel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subpixel and not self.training:
            return upsample_conv_subpixel(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # asymmetric padding (right/bottom only), as the released weights expect
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # saves an activation-sized allocation when decoding
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        return h.add_(self.nin_shortcut(x)) if inplace else self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(1)
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


def _attn(channels: int, enabled: bool, groups: int) -> nn.Module:
    return AttnBlock(channels, groups) if enabled else nn.Identity()


class Encoder(nn.Module):
    """image (B, 3, H, W) in [-1, 1] -> latent (B, z_channels, H/ds, W/ds)."""

    def __init__(self, cfg: TokenizerConfig, in_channels: int = 3):
        super().__init__()
        ch, ch_mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        self.num_resolutions, self.num_res_blocks = len(ch_mult), cfg.num_res_blocks
        self.conv_in = Conv3x3(in_channels, ch)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            last = level == self.num_resolutions - 1
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if last and cfg.using_sa:
                    attn.append(AttnBlock(block_in, g))
            down = nn.Module()
            down.block, down.attn = block, attn
            if not last:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = _attn(block_in, cfg.using_mid_sa, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.norm_out = _norm(block_in, g)
        self.conv_out = Conv3x3(block_in, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """latent (B, z_channels, h, w) -> image (B, 3, h*ds, w*ds), unclamped."""

    def __init__(self, cfg: TokenizerConfig, out_channels: int = 3):
        super().__init__()
        ch, ch_mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = Conv3x3(cfg.z_channels, block_in)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = _attn(block_in, cfg.using_mid_sa, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if level == self.num_resolutions - 1 and cfg.using_sa:
                    attn.append(AttnBlock(block_in, g))
            up = nn.Module()
            up.block, up.attn = block, attn
            if level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)  # keep official indexing: up[0] is the finest level
        self.norm_out = _norm(block_in, g)
        self.conv_out = Conv3x3(block_in, out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
