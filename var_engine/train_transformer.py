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
from .training import (EMA, Callback, DistContext, TrainConfig, freeze_except, run_fingerprint,
                       run_loop, start_run, trainable_fingerprint)
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


class _TransformerEval(Callback):
    """Held-out loss and a sample grid at every evaluation."""

    def __init__(self, tokenizer: Tokenizer, held: tuple[torch.Tensor, torch.Tensor] | None, out: Path):
        self.tokenizer, self.held, self.out = tokenizer, held, out

    def on_eval(self, step: int, model: nn.Module) -> dict:
        row = evaluate_tokens(model, self.tokenizer, *self.held) if self.held is not None else {}
        sample_grid(model, self.tokenizer, self.out / f"samples_{step:06d}.png")
        return row


def train_transformer(model_cfg: ModelConfig, tokenizer: Tokenizer, cfg: TrainConfig, dataset: Dataset,
                      heldout: Dataset | None = None, *, plan: StepPlan | None = None,
                      loss_weight_L: torch.Tensor | None = None,
                      trainable: Callable[[VARTransformer], Iterable[nn.Parameter]] | None = None,
                      init_from: VARTransformer | None = None, distill: Distillation | None = None,
                      teacher: VARTransformer | None = None, augment_copies: int = 1,
                      label_smoothing: float = 0.0, extra_config: dict | None = None,
                      save_dtype: torch.dtype | None = None, callbacks: Sequence[Callback] = (),
                      progress: bool = True) -> VARTransformer:
    """Train (or resume) in cfg.out_dir; writes a var-engine checkpoint directory there (EMA weights).

    distill: mixes `Distillation`'s soft-target loss against `teacher` (a frozen model, every step),
    or without a teacher against the model itself at full depth (steps where `plan` picks a subnet).
    trainable: the parameters to train (the rest stay frozen; the EMA covers only these).
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
    params = freeze_except(model, trainable(model) if trainable is not None else model.parameters())
    ddp = ctx.wrap(model)
    ema = EMA(model, cfg.ema_decay, params) if cfg.ema_decay else None
    L = model_cfg.transformer.num_tokens
    weight_L = (torch.full((L,), 1.0 / L) if loss_weight_L is None else loss_weight_L / loss_weight_L.sum())
    weight_L = weight_L.to(ctx.device)
    fingerprint = run_fingerprint(cfg, ctx.world_size, model=model_cfg.to_dict(), augment_copies=augment_copies,
                                  label_smoothing=label_smoothing,
                                  plan=plan if is_dataclass(plan) else type(plan).__name__ if plan else None,
                                  trainable=trainable_fingerprint(model, params),
                                  loss_weights=None if loss_weight_L is None else [round(float(w), 8) for w in weight_L],
                                  **({"distill": distill, "teacher": teacher is not None} if distill else {}))
    if teacher is not None:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)

    tokens, labels = tokenize_dataset(tokenizer, dataset, augment_copies, progress=progress and ctx.is_main)
    held = tokenize_dataset(tokenizer, heldout) if heldout is not None else None
    batches: list[Iterator[torch.Tensor]] = []  # started at the first step run (after a resume)

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not batches:
            batches.append(token_batches(len(tokens), cfg, ctx, step))
        idx = next(batches[0])
        t, y = tokens[idx].to(ctx.device), labels[idx].to(ctx.device)
        block_tokens = plan.block_tokens(step) if plan is not None else None
        x = tokenizer.teacher_input(t)
        y = model.drop_labels(y)  # once, so that a teacher sees the same labels
        logits = ddp(y, x, block_tokens, drop_labels=False)
        loss = token_loss(logits, t, weight_L, label_smoothing)
        if distill is None:
            return loss, {}
        soft = loss.new_zeros(())
        if distill.weight > 0 and (teacher is not None or block_tokens is not None):
            with torch.no_grad():
                target = (teacher or model)(y, x, None, drop_labels=False)
            soft = distill_loss(logits, target, weight_L, distill.temperature)
            loss = (1 - distill.weight) * loss + distill.weight * soft
        return loss, {"distill": soft}

    run_loop(model, params, step_loss, cfg, ctx, fingerprint=fingerprint, state_dir=out, log_dir=out,
             name="transformer", ema=ema, callbacks=[_TransformerEval(tokenizer, held, out), *callbacks],
             progress=progress)
    if ema is not None:
        ema.copy_to(model)
    final_model = model.eval()
    if ctx.is_main:
        save_pretrained(out, model_cfg, {"tokenizer": tokenizer, "transformer": final_model}, extra_config,
                        save_dtype)
    ctx.barrier()
    return final_model
