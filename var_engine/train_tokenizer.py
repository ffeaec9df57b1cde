"""Training the multi-scale VQVAE tokenizer from scratch (reconstruction + VQ losses)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Dataset

from .checkpoints import load_component, read_model_config, read_module_config, save_module
from .config import TokenizerConfig
from .images import save_grid
from .tokenizer import Tokenizer
from .training import (Callback, DistContext, TrainConfig, freeze_except, infinite_batches, run_fingerprint,
                       run_loop, start_run)

log = logging.getLogger(__name__)


@dataclass
class TokenizerLoss:
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    dead_code_every: int = 100  # restart codes unused over the recent steps (0: never)
    dead_code_threshold: float = 0.03  # EMA hits per step below which a code counts as dead


def psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on [0, 1])."""
    mse = F.mse_loss(recon.clamp(-1, 1), images).item() / 4
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def restart_dead_codes(tok: Tokenizer, latents: torch.Tensor, threshold: float, ctx: DistContext,
                       generator: torch.Generator) -> int:
    """Replace codes whose usage EMA is below `threshold` by random encoder latent vectors."""
    q = tok.quantize
    usage_V = q.ema_vocab_hit_SV.sum(0)
    dead = torch.nonzero(usage_V < threshold).flatten()
    if dead.numel():
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, q.Cvae)
        pick = torch.randint(0, vectors.shape[0], (dead.numel(),), generator=generator).to(vectors.device)
        noise = torch.randn(dead.numel(), q.Cvae, generator=generator).to(vectors.device) * 0.01
        q.embedding.weight[dead] = vectors[pick] + noise * vectors.std()
        q.ema_vocab_hit_SV[:, dead] = threshold * 4 / q.num_scales  # give restarted codes time
    if ctx.distributed:
        dist.broadcast(q.embedding.weight.data, 0)
        dist.broadcast(q.ema_vocab_hit_SV, 0)
    return int(dead.numel())


@torch.no_grad()
def evaluate_tokenizer(tok: Tokenizer, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Held-out PSNR and codebook usage (% of codes used by the held-out tokens)."""
    tok.eval()
    dev = next(tok.parameters()).device
    used = torch.zeros(tok.cfg.vocab_size, dtype=torch.bool, device=dev)
    se, n = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev)
        tokens = tok.encode(x)
        used[tokens.flatten()] = True
        rec = tok.decode(tokens)
        se += F.mse_loss(rec, x, reduction="sum").item() / 4
        n += x.numel()
    return {"psnr": 10 * math.log10(1 / max(se / n, 1e-12)), "codebook_usage": 100 * used.float().mean().item()}


def train_tokenizer(tok_cfg: TokenizerConfig, cfg: TrainConfig, dataset: Dataset,
                    heldout: torch.Tensor | None = None, loss_cfg: TokenizerLoss | None = None,
                    progress: bool = True) -> Tokenizer:
    """Train (or resume) a tokenizer in cfg.out_dir; saves `tokenizer.safetensors` + `tokenizer.json`."""
    loss_cfg = loss_cfg or TokenizerLoss()
    ctx = start_run(cfg)
    out = Path(cfg.out_dir)
    model = Tokenizer(tok_cfg).to(ctx.device)
    params = freeze_except(model, model.parameters())
    ddp = ctx.wrap(model)
    fingerprint = run_fingerprint(cfg, ctx.world_size, tokenizer=tok_cfg, loss=loss_cfg)
    batches: list = []  # started at the first step run (after a resume)
    last: dict = {}

    def step_loss(step: int) -> tuple[torch.Tensor, dict]:
        if not batches:
            batches.append(infinite_batches(dataset, cfg, ctx, step))
        images = next(batches[0])[0].to(ctx.device, non_blocking=True)
        res = ddp(images)
        rec = res.recon
        loss = (loss_cfg.l1_weight * F.l1_loss(rec, images) + loss_cfg.l2_weight * F.mse_loss(rec, images)
                + res.vq_loss)
        last.update(hits=res.hits_SV.detach(), latent=res.latent.detach())
        return loss, {"vq_loss": res.vq_loss.item(), "psnr": psnr(rec.detach(), images)}

    run_loop(model, params, step_loss, cfg, ctx, fingerprint=fingerprint, state_dir=out, log_dir=out,
             name="tokenizer", callbacks=[_CodebookUpkeep(model, loss_cfg, cfg, ctx, last),
                                          _TokenizerEval(heldout, out)], progress=progress)
    if ctx.is_main:
        save_module(out, "tokenizer", model, tok_cfg.to_dict())
    ctx.barrier()
    return model


class _CodebookUpkeep(Callback):
    """After each step: the codebook usage EMA, and restarts of dead codes."""

    def __init__(self, model: Tokenizer, loss_cfg: TokenizerLoss, cfg: TrainConfig, ctx: DistContext, last: dict):
        self.model, self.loss_cfg, self.cfg, self.ctx, self.last = model, loss_cfg, cfg, ctx, last
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.restarted = 0

    def after_step(self, step: int) -> bool:
        with torch.no_grad():
            hits = self.last["hits"]
            if self.ctx.distributed:
                dist.all_reduce(hits)
            ema = self.model.quantize.ema_vocab_hit_SV
            ema.copy_(hits if step == 1 else ema * 0.97 + hits * 0.03)
        self.restarted = 0
        every = self.loss_cfg.dead_code_every
        if every and step % every == 0 and step < self.cfg.steps * 0.9:
            self.restarted = restart_dead_codes(self.model, self.last["latent"], self.loss_cfg.dead_code_threshold,
                                                self.ctx, self.generator)
        return False

    def on_log(self, step: int, row: dict) -> None:
        row["restarted_codes"] = self.restarted
        row["active_codes"] = int((self.model.quantize.ema_vocab_hit_SV.sum(0) >= self.loss_cfg.dead_code_threshold).sum())


class _TokenizerEval(Callback):
    """Held-out PSNR, codebook usage and a reconstruction grid."""

    def __init__(self, heldout: torch.Tensor | None, out: Path):
        self.heldout, self.out = heldout, out

    def on_eval(self, step: int, model: torch.nn.Module) -> dict | None:
        if self.heldout is None:
            return None
        metrics = evaluate_tokenizer(model, self.heldout)
        x = self.heldout[:16].to(next(model.parameters()).device)
        with torch.no_grad():
            save_grid(torch.cat([x, model.decode(model.encode(x))]).add(1).mul(0.5).cpu(),
                      self.out / f"recon_{step:06d}.png", nrow=16)
        return metrics


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """A tokenizer saved by `train_tokenizer` (or the tokenizer of a full checkpoint directory)."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        cfg = TokenizerConfig.from_dict(read_module_config(directory, "tokenizer"))
    else:
        cfg = read_model_config(directory).tokenizer
    return load_component(Tokenizer(cfg), directory, "tokenizer").eval()
