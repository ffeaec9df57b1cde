"""The AdaLN VAR transformer: teacher-forced forward and cached per-scale step.

Module and parameter names follow the official release so its state dicts load unchanged.
No module holds sampling state: the KV cache is passed in by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionFn, resolve_backend
from .cache import KVCache
from .config import TransformerConfig
from .linear import Linear, set_linear_backend

# (block, x, ada, attend, cache, layer, start) -> x: how `VARTransformer.step` runs one block
BlockRunner = Callable[["AdaLNSelfAttn", torch.Tensor, torch.Tensor, AttentionFn, KVCache, int, int], torch.Tensor]


_GELU_C1 = 2 * math.sqrt(2 / math.pi)
_GELU_C3 = _GELU_C1 * 0.044715


def gelu_tanh_(h: torch.Tensor) -> torch.Tensor:
    """GELU (tanh form) of a tensor nothing else reads, for CPU inference; else F.gelu.

    0.5 h (1 + tanh(z)) = h sigmoid(2z): PyTorch's CPU sigmoid is about 3x faster than its tanh, so
    this runs in about half the time of F.gelu(approximate='tanh'), equal up to float rounding.
    """
    if h.device.type != "cpu" or h.requires_grad or torch.compiler.is_compiling():
        return F.gelu(h, approximate="tanh")
    z = torch.addcmul(h.new_tensor(_GELU_C1), h, h, value=_GELU_C3).mul_(h).sigmoid_()
    return h.mul_(z)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh_(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        C, H = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim = H, C // H
        self.attn_l2_norm = cfg.attn_l2_norm
        if self.attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = Linear(C, C)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, C) -> q, k, v each (B, H, L, head_dim), l2-normalised if configured."""
        B, L, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = self.mat_qkv.kernel(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, attend: AttentionFn, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.write(layer, start, k, v)
        out = attend(q, k, v, self.scale, mask)  # (B, H, L, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class AdaLNSelfAttn(nn.Module):
    """Block: x += attn(mod(LN(x))) * gamma1; x += ffn(mod(LN(x))) * gamma2; mod from the class."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        C = cfg.embed_dim
        self.C = C
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.shared_aln = cfg.shared_aln
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2; from the class only."""
        if self.shared_aln:
            return self.ada_gss + cond  # cond is the shared (B, 1, 6, C) projection
        return self.ada_lin(cond).view(-1, 1, 6, self.C)

    def forward(self, x: torch.Tensor, ada: torch.Tensor, attend: AttentionFn, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)  # each (B, 1, C)
        h = self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1)
        x = x + self.attn(h, attend, mask, cache, layer, start).mul_(gamma1)
        h = self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)
        return x + self.ffn(h).mul(gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.C = cfg.embed_dim
        self.ln_wo_grad = nn.LayerNorm(self.C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(self.C, 2 * self.C))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        return self.ada_lin(cond).view(-1, 1, 2, self.C)

    def forward(self, x: torch.Tensor, ada: torch.Tensor) -> torch.Tensor:
        scale, shift = ada.unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class SharedAdaLin(Linear):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.weight.shape[0] // 6)


@dataclass
class Conditioning:
    """Per-call class conditioning, computed once: the AdaLN projections depend on the class only."""

    cond_BD: torch.Tensor  # (B, C) class embeddings (also the first scale's input)
    block_ada: list[torch.Tensor]  # per block (B, 1, 6, C)
    head_ada: torch.Tensor  # (B, 1, 2, C)

    def index_select(self, rows: torch.Tensor) -> "Conditioning":
        return Conditioning(self.cond_BD.index_select(0, rows),
                            [a.index_select(0, rows) for a in self.block_ada],
                            self.head_ada.index_select(0, rows))


class VARTransformer(nn.Module):
    """Class-conditional next-scale prediction transformer."""

    def __init__(self, cfg: TransformerConfig, attention: str | None = None):
        super().__init__()
        self.cfg = cfg
        C, L = cfg.embed_dim, cfg.num_tokens
        self.num_classes = cfg.num_classes
        self.first_l = cfg.patch_nums[0] ** 2
        self.word_embed = Linear(cfg.z_channels, C)
        init_std = math.sqrt(1 / C / 3)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row: the null class for CFG
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(cfg.num_scales, C)
        for p in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(p.data, mean=0, std=init_std)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln
                               else nn.Identity())
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg) for _ in range(cfg.depth)])
        # scale index of every token, and the block-causal mask (a token sees scales <= its own)
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(cfg.patch_nums)]).view(1, L)
        self.register_buffer("lvl_1L", lvl)
        mask = torch.where(lvl.view(1, L, 1) >= lvl.view(1, 1, L), 0.0, -torch.inf).reshape(1, 1, L, L)
        self.register_buffer("attn_bias_for_masking", mask.contiguous())
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = Linear(C, cfg.vocab_size)
        self.attend: AttentionFn = resolve_backend(attention)
        set_linear_backend(self, "auto")  # switch with set_linear

    def set_attention(self, name: str | None) -> None:
        """Switch the attention backend ('auto', 'sdpa', 'math', 'xformers')."""
        self.attend = resolve_backend(name, self.pos_1LC.device)

    def set_linear(self, name: str | None) -> None:
        """Switch the linear-layer kernels ('auto', 'blas', 'onednn'; see `var_engine.linear`)."""
        set_linear_backend(self, name)

    # ----- conditioning and inputs -----
    def condition(self, labels_B: torch.Tensor) -> Conditioning:
        """Class ids (B,) (num_classes = null) -> embeddings and every AdaLN projection."""
        cond_BD = self.class_emb(labels_B)
        shared = self.shared_ada_lin(cond_BD)
        block_ada = [b.modulation(shared) for b in self.blocks]
        return Conditioning(cond_BD, block_ada, self.head_nm.modulation(cond_BD))

    def level_pos(self, begin: int, end: int) -> torch.Tensor:
        """Level + absolute position embeddings of tokens [begin, end): (1, end - begin, C)."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def first_input(self, cond: Conditioning) -> torch.Tensor:
        """The first scale's tokens (B, first_l, C): class embedding + start position."""
        B = cond.cond_BD.shape[0]
        sos = cond.cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        return sos + self.level_pos(0, self.first_l)

    def scale_input(self, next_map_BChw: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Scale `scale_index`'s input (B, pn*pn, C) from the area-resized f_hat (B, Cvae, pn, pn)."""
        begin, end = self.cfg.scale_ranges()[scale_index]
        B = next_map_BChw.shape[0]
        x = next_map_BChw.reshape(B, self.cfg.z_channels, -1).transpose(1, 2)
        return self.word_embed(x) + self.level_pos(begin, end)

    def logits(self, h_BLC: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond.head_ada).float()).float()

    # ----- forward passes -----
    def drop_labels(self, labels_B: torch.Tensor) -> torch.Tensor:
        """In training mode, each label becomes the null class with probability cond_drop_rate (for CFG)."""
        if not (self.training and self.cfg.cond_drop_rate > 0):
            return labels_B
        drop = torch.rand(labels_B.shape[0], device=labels_B.device) < self.cfg.cond_drop_rate
        return torch.where(drop, self.num_classes, labels_B)

    def forward(self, labels_B: torch.Tensor, x_BLCv: torch.Tensor,
                block_tokens: Sequence[int] | None = None, drop_labels: bool = True) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) under the block-causal mask.

        x_BLCv: (B, L - first_l, z_channels) from `Tokenizer.teacher_input`. With drop_labels (and
        in training mode) labels are dropped first (`drop_labels`); pass False for labels already dropped.
        block_tokens: optional per-block number of leading tokens the block processes; the block
        leaves later tokens untouched (used by depth plans; None = every block sees all tokens).
        """
        B = x_BLCv.shape[0]
        if drop_labels:
            labels_B = self.drop_labels(labels_B)
        cond = self.condition(labels_B)
        sos = cond.cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv.float())), dim=1)
        x = x + self.level_pos(0, x.shape[1])
        mask = self.attn_bias_for_masking
        for i, block in enumerate(self.blocks):
            n = x.shape[1] if block_tokens is None else block_tokens[i]
            if n <= 0:
                continue
            if n >= x.shape[1]:
                x = block(x, cond.block_ada[i], self.attend, mask)
            else:  # causal: the first n tokens never attend to later ones
                head = block(x[:, :n], cond.block_ada[i], self.attend, mask[:, :, :n, :n])
                x = torch.cat((head, x[:, n:]), dim=1)
        return self.logits(x, cond)

    def step(self, x_BlC: torch.Tensor, scale_index: int, cond: Conditioning, cache: KVCache,
             layers: Sequence[int] | None = None, run_block: BlockRunner | None = None) -> torch.Tensor:
        """One scale with the KV cache: tokens of `scale_index` -> logits (B, l, V).

        layers: blocks to run (ascending); None runs all. Skipped blocks leave x unchanged.
        run_block: how one block runs (a compiled runner passes its own); None calls the block.
        """
        start = self.cfg.scale_ranges()[scale_index][0]
        x = x_BlC
        for i in (range(len(self.blocks)) if layers is None else layers):
            if run_block is None:
                x = self.blocks[i](x, cond.block_ada[i], self.attend, None, cache, i, start)
            else:
                x = run_block(self.blocks[i], x, cond.block_ada[i], self.attend, cache, i, start)
        return self.logits(x, cond)

    # ----- initialisation for training from scratch -----
    @torch.no_grad()
    def init_weights(self, init_std: float = 0.02, init_head: float = 0.02, init_adaln: float = 0.5,
                     init_adaln_gamma: float = 1e-5) -> None:
        """Initialisation for training from scratch (residual branches start near zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=init_std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        C, depth = self.cfg.embed_dim, self.cfg.depth
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                block.ada_lin[-1].weight[2 * C:].mul_(init_adaln)
                block.ada_lin[-1].weight[:2 * C].mul_(init_adaln_gamma)
                block.ada_lin[-1].bias.zero_()
