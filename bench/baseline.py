"""A straightforward reference sampler, written the way the original code is structured: the KV
cache grows by torch.cat at every scale in every layer, and the AdaLN projections are recomputed at
every scale. It uses var-engine's modules and the same random-number protocol, so it must draw the
same tokens; the benchmark checks that before comparing speed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from var_engine.sampling.logits import cfg_mix, draw_tokens, guidance_scale, top_k_top_p_
from var_engine.transformer import VARTransformer


@torch.no_grad()
def sample_cat_cache(model: VARTransformer, quantizer, labels_B: torch.Tensor, cfg: float, top_k: int, top_p: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Returns (tokens, f_hat, bytes held by the grown caches at the end)."""
    c = model.cfg
    B = labels_B.shape[0]
    cond_BD = model.class_emb(torch.cat((labels_B, torch.full_like(labels_B, c.num_classes))))
    cached_k: list[torch.Tensor | None] = [None] * c.depth
    cached_v: list[torch.Tensor | None] = [None] * c.depth
    H = c.patch_nums[-1]
    f_hat = cond_BD.new_zeros(B, c.z_channels, H, H)
    sos = cond_BD.unsqueeze(1).expand(2 * B, model.first_l, -1) + model.pos_start.expand(2 * B, -1, -1)
    x = sos + model.level_pos(0, model.first_l)
    tokens = []
    for si, pn in enumerate(c.patch_nums):
        shared = model.shared_ada_lin(cond_BD)  # recomputed at every scale, as the original does
        for i, block in enumerate(model.blocks):
            ada = block.modulation(shared)
            g1, g2, s1, s2, b1, b2 = ada.unbind(2)
            h = block.ln_wo_grad(x).mul(s1.add(1)).add_(b1)
            q, k, v = block.attn.qkv(h)
            if cached_k[i] is not None:
                k = cached_k[i] = torch.cat((cached_k[i], k), dim=2)
                v = cached_v[i] = torch.cat((cached_v[i], v), dim=2)
            else:
                cached_k[i], cached_v[i] = k, v
            o = F.scaled_dot_product_attention(q, k, v, scale=block.attn.scale)
            x = x + block.attn.proj(o.transpose(1, 2).reshape(x.shape)).mul_(g1)
            h = block.ln_wo_grad(x).mul(s2.add(1)).add_(b2)
            x = x + block.ffn(h).mul(g2)
        logits = model.head(model.head_nm(x.float(), model.head_nm.modulation(cond_BD)).float()).float()
        logits = cfg_mix(logits, guidance_scale(cfg, si, c.num_scales))
        idx = draw_tokens(top_k_top_p_(logits, top_k, top_p), generator)
        tokens.append(idx)
        next_map = quantizer.next_scale_input(si, f_hat, quantizer.embed(idx, pn))
        if si + 1 < c.num_scales:
            x = model.scale_input(next_map, si + 1).repeat(2, 1, 1)
    held = sum(t.numel() * t.element_size() for t in (*cached_k, *cached_v))
    return torch.cat(tokens, 1), f_hat, held
