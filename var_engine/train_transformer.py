"""Training the VAR transformer: teacher-forced next-scale prediction over a frozen tokenizer.

One loop. Extensions plug in through arguments, never by copying the loop:
- `plan`: per-step depth plan (`block_tokens(step)`), used by supernet training;
- `loss_weight_L`: per-token loss weights (e.g. scale-weighted fine-tuning);
- `trainable`: which parameters to train (selective fine-tuning);
- `distill` (+ `teacher`): a soft-target loss from a teacher's logits mixed in; without a teacher the
  network at full depth teaches its own subnets on subnet steps (in-place distillation).
"""
from __future__ import annotations

import logging
from dataclasses import is_dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .checkpoints import save_pretrained
from .config import ModelConfig, SamplingConfig
from .distillation import Distillation, distill_loss
from .images import save_grid
from .sampling import sample
from .tokenizer import Tokenizer
from .training import (EMA, DistContext, MetricsLog, TrainConfig, load_state, lr_at, make_optimizer,
                       run_fingerprint, save_state, start_run)
from .transformer import VARTransformer

log = logging.getLogger(__name__)


class StepPlan(Protocol):
    def block_tokens(self, step: int) -> Sequence[int] | None:
        """Per-block count of leading tokens to process at this step (None: the full network)."""


@torch.no_grad()
def tokenize_dataset(tokenizer: Tokenizer, dataset: Dataset, copies: int = 1, batch_size: int = 256,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the dataset `copies` times (epoch e recolours when the dataset supports it) -> tokens, labels."""
    from tqdm import tqdm

    dev = next(tokenizer.parameters()).device
    tokens, labels = [], []
    for copy in range(copies):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(copy)
        for i in tqdm(range(0, len(dataset), batch_size), desc=f"tokenize {copy + 1}/{copies}", disable=not progress):
            items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
            images = torch.stack([x for x, _ in items]).to(dev)
            tokens.append(tokenizer.encode(images).cpu())
            labels.append(torch.tensor([y for _, y in items]))
    return torch.cat(tokens), torch.cat(labels)


def token_batches(num: int, cfg: TrainConfig, ctx: DistContext, start_step: int) -> Iterator[torch.Tensor]:
    """Indices of each step's batch: a seeded permutation per epoch, sharded by rank; resumable."""
    per_rank = num // ctx.world_size
    per_epoch = max(1, per_rank // cfg.batch_size)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        shard = perm[ctx.rank::ctx.world_size]
        yield shard[offset * cfg.batch_size:(offset + 1) * cfg.batch_size]
        step += 1


def token_loss(logits_BLV: torch.Tensor, tokens_BL: torch.Tensor, weight_L: torch.Tensor,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token cross-entropy, weighted over positions by weight_L (sums to 1), mean over batch."""
    ce = F.cross_entropy(logits_BLV.transpose(1, 2), tokens_BL, reduction="none", label_smoothing=label_smoothing)
    return (ce * weight_L).sum(dim=1).mean()


@torch.no_grad()
def evaluate_tokens(model: VARTransformer, tokenizer: Tokenizer, tokens: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 256, block_tokens: Sequence[int] | None = None) -> dict[str, float]:
    """Teacher-forced loss and token accuracy on held-out tokens (labels kept, no dropout).

    block_tokens: a depth plan's `block_tokens()` to measure that subnet (None: the full network).
    """
    model.eval()
    dev = model.pos_1LC.device
    loss, correct, n = 0.0, 0, 0
    for i in range(0, len(tokens), batch_size):
        t, y = tokens[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev)
        logits = model(y, tokenizer.teacher_input(t), block_tokens)
        loss += F.cross_entropy(logits.transpose(1, 2), t, reduction="sum").item()
        correct += (logits.argmax(-1) == t).sum().item()
        n += t.numel()
    return {"heldout_loss": loss / n, "heldout_token_acc": correct / n}


@torch.no_grad()
def sample_grid(model: VARTransformer, tokenizer: Tokenizer, path: Path, per_class: int = 8, cfg: float = 1.5,
                seed: int = 0, max_classes: int = 10) -> Path:
    """A (classes x per_class) PNG grid of samples."""
    model.eval()
    dev = model.pos_1LC.device
    classes = min(model.num_classes, max_classes)
    labels = torch.arange(classes, device=dev).repeat_interleave(per_class)
    res = sample(model, tokenizer.quantize, labels, SamplingConfig(cfg=cfg),
                 generator=torch.Generator(device=dev).manual_seed(seed))
    images = tokenizer.fhat_to_images(res.f_hat).add(1).mul(0.5)
    return save_grid(images.cpu(), path, nrow=per_class)


def train_transformer(model_cfg: ModelConfig, tokenizer: Tokenizer, cfg: TrainConfig, dataset: Dataset,
                      heldout: Dataset | None = None, *, plan: StepPlan | None = None,
                      loss_weight_L: torch.Tensor | None = None,
                      trainable: Callable[[VARTransformer], Iterable[nn.Parameter]] | None = None,
                      init_from: VARTransformer | None = None, distill: Distillation | None = None,
                      teacher: VARTransformer | None = None, augment_copies: int = 1,
                      label_smoothing: float = 0.0, extra_config: dict | None = None,
                      save_dtype: torch.dtype | None = None, progress: bool = True) -> VARTransformer:
    """Train (or resume) in cfg.out_dir; writes a var-engine checkpoint directory there (EMA weights).

    distill: mixes `Distillation`'s soft-target loss against `teacher` (a frozen model, every step),
    or without a teacher against the model itself at full depth (steps where `plan` picks a subnet).
    extra_config: recorded in the checkpoint's config.json (e.g. {"variant": ...} for supernets).
    save_dtype: dtype of the written weights (e.g. torch.float16 to ship a smaller checkpoint).
    """
    ctx = start_run(cfg)
    out = Path(cfg.out_dir)
    tokenizer = tokenizer.to(ctx.device).eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    model = VARTransformer(model_cfg.transformer).to(ctx.device)
    if init_from is not None:
        model.load_state_dict(init_from.state_dict())
    else:
        model.init_weights()
    params = list(trainable(model)) if trainable is not None else list(model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    ddp = ctx.wrap(model)
    opt = make_optimizer(params, cfg)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    L = model_cfg.transformer.num_tokens
    weight_L = (torch.full((L,), 1.0 / L) if loss_weight_L is None else loss_weight_L / loss_weight_L.sum())
    weight_L = weight_L.to(ctx.device)
    fingerprint = run_fingerprint(cfg, ctx.world_size, model=model_cfg.to_dict(), augment_copies=augment_copies,
                                  label_smoothing=label_smoothing,
                                  plan=plan if is_dataclass(plan) else type(plan).__name__ if plan else None,
                                  **({"distill": distill, "teacher": teacher is not None} if distill else {}))
    if teacher is not None:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
    step, _ = load_state(out, fingerprint, model, opt, ema)
    if ema is not None and step == 0:
        ema.shadow.load_state_dict(model.state_dict())

    tokens, labels = tokenize_dataset(tokenizer, dataset, augment_copies, progress=progress and ctx.is_main)
    held = tokenize_dataset(tokenizer, heldout) if heldout is not None else None
    train_log, eval_log = MetricsLog(out, "train", ctx.is_main), MetricsLog(out, "eval", ctx.is_main)
    batches = token_batches(len(tokens), cfg, ctx, step)
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc="transformer", disable=not (progress and ctx.is_main))
    while step < cfg.steps:
        model.train()
        idx = next(batches)
        t, y = tokens[idx].to(ctx.device), labels[idx].to(ctx.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        block_tokens = plan.block_tokens(step) if plan is not None else None
        x = tokenizer.teacher_input(t)
        y = model.drop_labels(y)  # once, so that a teacher sees the same labels
        logits = ddp(y, x, block_tokens, drop_labels=False)
        loss = token_loss(logits, t, weight_L, label_smoothing)
        soft = loss.new_zeros(())
        if distill is not None and distill.weight > 0 and (teacher is not None or block_tokens is not None):
            with torch.no_grad():
                target = (teacher or model)(y, x, None, drop_labels=False)
            soft = distill_loss(logits, target, weight_L, distill.temperature)
            loss = (1 - distill.weight) * loss + distill.weight * soft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else torch.zeros(())
        opt.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": ctx.mean(loss.detach()).item(), "grad_norm": float(grad_norm),
                   "lr": lr_at(step - 1, cfg)}
            if distill is not None:
                row["distill"] = ctx.mean(soft.detach()).item()
            train_log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        final_model = ema.shadow if ema is not None else model
        if ctx.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
            row = {"step": step}
            if held is not None:
                row.update(evaluate_tokens(final_model, tokenizer, *held))
            eval_log.write(row)
            sample_grid(final_model, tokenizer, out / f"samples_{step:06d}.png")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            if ctx.is_main:
                save_state(out, step=step, fingerprint=fingerprint, model=model, optimizer=opt, ema=ema)
            ctx.barrier()
    bar.close()
    final_model = (ema.shadow if ema is not None else model).eval()
    if ctx.is_main:
        save_pretrained(out, model_cfg, {"tokenizer": tokenizer, "transformer": final_model}, extra_config,
                        save_dtype)
    ctx.barrier()
    return final_model
