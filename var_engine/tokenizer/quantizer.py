"""Multi-scale residual vector quantizer: f_BChw <-> token maps, coarse to fine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TokenizerConfig


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): the per-scale refinement of upsampled embeddings."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


def phi_indices(num_scales: int, share_quant_resi: int, num_phis: int) -> list[int]:
    """Which phi each scale uses, computed in float64 like the release (ties resolve as there).

    With 10 scales and 4 shared phis, scale 2 sits exactly between ticks 0 and 1; float64
    rounding picks 1, giving [0, 0, 1, 1, 1, 2, 2, 3, 3, 3].
    """
    if share_quant_resi == 1:
        return [0] * num_scales
    K = num_phis
    ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
    return [int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales)]


class PhiBank(nn.Module):
    """Holds the phis under the release's state-dict names for each sharing mode."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        K = len(cfg.patch_nums)
        count = {0: K, 1: 1}.get(cfg.share_quant_resi, cfg.share_quant_resi)

        def make() -> nn.Module:
            return Phi(cfg.z_channels, cfg.quant_resi) if abs(cfg.quant_resi) > 1e-6 else nn.Identity()

        if cfg.share_quant_resi == 0:  # keys: quant_resi.{i}.*
            for i in range(count):
                self.add_module(str(i), make())
            self._phis = [getattr(self, str(i)) for i in range(count)]
        elif cfg.share_quant_resi == 1:  # keys: quant_resi.qresi.*
            self.qresi = make()
            self._phis = [self.qresi]
        else:  # keys: quant_resi.qresi_ls.{i}.*
            self.qresi_ls = nn.ModuleList([make() for _ in range(count)])
            self._phis = list(self.qresi_ls)
        self.scale_to_phi = phi_indices(K, cfg.share_quant_resi, count)

    def forward(self, h: torch.Tensor, scale_index: int) -> torch.Tensor:
        return self._phis[self.scale_to_phi[scale_index]](h)


@dataclass
class QuantizerOutput:
    f_hat: torch.Tensor  # (B, C, h, w), straight-through to the encoder
    vq_loss: torch.Tensor  # scalar
    hits_SV: torch.Tensor  # (num_scales, vocab) code counts of this batch


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over patch_nums; state-dict names as in the release ('quantize.*')."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_nums = cfg.patch_nums
        self.vocab_size, self.Cvae = cfg.vocab_size, cfg.z_channels
        self.quant_resi = PhiBank(cfg)
        # training-only statistics; the release's row count may differ (tolerated by the loader)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry (L2, or cosine with using_znorm) per row."""
        weight = self.embedding.weight.detach()
        if self.cfg.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(weight.T, dim=0), dim=1)
        # same arithmetic order as the release, so near-ties resolve identically
        d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(weight.square(), dim=1)
        d.addmm_(z_NC, weight.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def upsample_residual(self, h_BChw: torch.Tensor, scale_index: int, size: int) -> torch.Tensor:
        """Bicubic upsampling to the latent size (none at the last scale), then phi."""
        if scale_index != self.num_scales - 1:
            h_BChw = F.interpolate(h_BChw, size=(size, size), mode="bicubic")
        return self.quant_resi(h_BChw, scale_index)

    def embed(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Token map (B, pn*pn) -> embeddings (B, C, pn, pn)."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    def _residual_pass(self, f_BChw: torch.Tensor):
        """Yield (scale_index, idx_N, h_BChw) while quantizing the residual scale by scale."""
        B, C, H, W = f_BChw.shape
        if H != self.patch_nums[-1] or W != self.patch_nums[-1]:
            raise ValueError(f"latent size {H}x{W} != last patch_num {self.patch_nums[-1]}")
        f_rest = f_BChw.detach().clone()
        last = self.num_scales - 1
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != last else f_rest
            idx_N = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.upsample_residual(self.embed(idx_N.view(B, pn * pn), pn), si, H)
            f_rest = f_rest - h.detach()
            yield si, idx_N, h

    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Latent -> token maps, one (B, pn*pn) LongTensor per scale."""
        B = f_BChw.shape[0]
        return [idx_N.view(B, -1) for _, idx_N, _ in self._residual_pass(f_BChw)]

    @torch.no_grad()
    def f_to_fhat(self, f_BChw: torch.Tensor) -> torch.Tensor:
        """Latent -> quantized latent f_hat (all scales accumulated)."""
        f_hat = torch.zeros_like(f_BChw)
        for _, _, h in self._residual_pass(f_BChw):
            f_hat.add_(h)
        return f_hat

    def idx_to_fhat(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Token maps (coarse to fine) -> f_hat (B, C, H, W)."""
        H = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, H, H)
        for si, (idx_Bl, pn) in enumerate(zip(idx_list, self.patch_nums)):
            f_hat.add_(self.upsample_residual(self.embed(idx_Bl, pn), si, H))
        return f_hat

    def teacher_input(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input (B, L - first_l, C): each prefix's f_hat area-resized to the next scale."""
        H = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, H, H)
        inputs = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self.upsample_residual(self.embed(idx_list[si], self.patch_nums[si]), si, H)
            pn_next = self.patch_nums[si + 1]
            nxt = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
            inputs.append(nxt.reshape(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def next_scale_input(self, scale_index: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> torch.Tensor:
        """Add scale `scale_index`'s embeddings to f_hat (in place); return the next scale's input map."""
        H = self.patch_nums[-1]
        f_hat.add_(self.upsample_residual(h_BChw, scale_index, H))
        if scale_index == self.num_scales - 1:
            return f_hat
        pn = self.patch_nums[scale_index + 1]
        return F.interpolate(f_hat, size=(pn, pn), mode="area")

    def forward(self, f_BChw: torch.Tensor) -> QuantizerOutput:
        """Training pass: straight-through f_hat, VQ loss (codebook + beta * commitment), code hits."""
        f = f_BChw.float()
        f_hat = torch.zeros_like(f)
        loss = f.new_zeros(())
        hits = f.new_zeros(self.num_scales, self.vocab_size)
        for si, idx_N, h in self._residual_pass(f):
            f_hat = f_hat + h
            hits[si] = torch.bincount(idx_N, minlength=self.vocab_size).float()
            loss = loss + self.cfg.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
        loss = loss / self.num_scales
        f_hat_st = f + (f_hat - f).detach()  # straight-through: decoder grads reach the encoder
        return QuantizerOutput(f_hat_st, loss, hits)
