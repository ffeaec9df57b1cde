"""The VQVAE tokenizer: images <-> multi-scale tokens (concatenated coarse to fine)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TokenizerConfig
from ..errors import InputError
from .quantizer import MultiScaleQuantizer
from .vqvae import GROUP_NORM_LAYOUTS, Decoder, Encoder, LayoutGroupNorm
from .winograd import CONV_ALGORITHMS, Conv3x3


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, 3, H, W), unclamped
    vq_loss: torch.Tensor
    hits_SV: torch.Tensor
    latent: torch.Tensor  # encoder output f (B, C, h, w), before quantization


class Tokenizer(nn.Module):
    """Multi-scale residual VQVAE; attribute names match the release ('encoder', 'quantize', ...)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.channels_last = False
        # on CPU, images whose decoder activations outgrow the caches decode faster in small
        # micro-batches (256px, ch 160: 2.63 vs 3.01 s/image at batch 4); None decodes all at once
        self.cpu_decode_chunk_bytes: int | None = 16 << 20

    def set_channels_last(self, enabled: bool = True) -> "Tokenizer":
        """Encode and decode in channels-last memory format (CPU, 256px: decode ~1.35x faster with outputs
        within ~4e-5; encode 1.36x faster on top of the Winograd convolutions, with the same tokens)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in (self.encoder, self.quant_conv, self.decoder, self.post_quant_conv):
            module.to(memory_format=fmt)
        self.channels_last = enabled
        return self

    def set_group_norm_layout(self, layout: str = "auto") -> "Tokenizer":
        """How the decoder's group norms treat channels-last inputs: one of GROUP_NORM_LAYOUTS."""
        if layout not in GROUP_NORM_LAYOUTS:
            raise ValueError(f"group norm layout must be one of {GROUP_NORM_LAYOUTS}, got {layout!r}")
        for m in self.decoder.modules():
            if isinstance(m, LayoutGroupNorm):
                m.layout = layout
        return self

    def set_conv_algorithm(self, algorithm: str = "auto") -> "Tokenizer":
        """How the encoder's and decoder's 3x3 convolutions run at inference: one of CONV_ALGORITHMS
        ('auto': Winograd F(4x4, 3x3) for wide float32 convolutions on CPU, else direct). Setting it
        frees the cached Winograd kernels (`conv_cache_bytes`); the next calls rebuild what they use."""
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"conv algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")
        for m in self.modules():
            if isinstance(m, Conv3x3):
                m.algorithm = algorithm
                m.drop_cache()
        return self

    def conv_cache_bytes(self) -> int:
        """Bytes held by cached Winograd kernels (256px official VQVAE, 'auto': 229 MiB once decoding ran)."""
        return sum(m.cache_bytes() for m in self.modules() if isinstance(m, Conv3x3))

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.cfg.patch_nums

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != size or images.shape[3] != size:
            raise InputError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> continuous latent f (B, C, h, w)."""
        self._check_images(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.quant_conv(self.encoder(images)).contiguous()  # the quantizer works on (B, C, h, w) views

    @torch.no_grad()
    def encode_scales(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images -> one (B, pn*pn) token map per scale."""
        return self.quantize.f_to_idx(self.encode_latent(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> tokens (B, L) int64."""
        return torch.cat(self.encode_scales(images), dim=1)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> one (B, pn*pn) map per scale; raises InputError on a wrong length or id."""
        L = self.cfg.num_tokens
        if tokens.ndim != 2 or tokens.shape[1] != L:
            raise InputError(f"expected tokens of shape (B, {L}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise InputError(f"token ids must be in [0, {self.cfg.vocab_size})")
        return list(tokens.split([p * p for p in self.patch_nums], dim=1))

    def tokens_to_fhat(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> accumulated latent f_hat (B, C, h, w)."""
        return self.quantize.idx_to_fhat(self.split(tokens))

    def decode_activation_bytes(self) -> int:
        """Float32 bytes of the decoder's largest activation for one image (level i: ch * ch_mult[i] at size / 2^i)."""
        size = self.cfg.image_size
        return 4 * max(self.cfg.ch * m * (size >> i) ** 2 for i, m in enumerate(self.cfg.ch_mult))

    def decode_chunk(self, batch: int, device: torch.device) -> int:
        """Images decoded per decoder call: micro-batches within `cpu_decode_chunk_bytes` on CPU, else all."""
        if device.type != "cpu" or self.cpu_decode_chunk_bytes is None:
            return max(1, batch)
        return max(1, min(batch, self.cpu_decode_chunk_bytes // self.decode_activation_bytes()))

    def fhat_to_images(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images (B, 3, H, W) clamped to [-1, 1]."""
        chunk = self.decode_chunk(f_hat.shape[0], f_hat.device)
        if chunk < f_hat.shape[0]:
            return torch.cat([self.fhat_to_images_at_once(part) for part in f_hat.split(chunk)])
        return self.fhat_to_images_at_once(f_hat)

    def fhat_to_images_at_once(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images in one decoder call."""
        if self.channels_last:
            f_hat = f_hat.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1).contiguous()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> images (B, 3, H, W) in [-1, 1]."""
        return self.fhat_to_images(self.tokens_to_fhat(tokens))

    def teacher_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> the transformer's teacher-forcing input (B, L - first_l, z_channels)."""
        return self.quantize.teacher_input(self.split(tokens))

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training pass: reconstruction through the straight-through quantizer."""
        f = self.encode_latent(images)
        q = self.quantize(f)
        return TokenizerOutput(self.decoder(self.post_quant_conv(q.f_hat)), q.vq_loss, q.hits_SV, f)
