"""Subject fine-tuning: a few pictures of one subject bound to a class id, the rest of the model kept.

Each step the subject pictures are augmented and tokenized, and the loss is the scale-weighted cross-entropy
on them (`loss.scale_weights`) plus `prior_weight` times KL(frozen model || tuned model) on the frozen
model's own samples of the prior classes (drawn once at the start). Only the chosen groups train
(`groups.TrainableSet`); the result is an `Adapter` holding just those tensors.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..checkpoints import Adapter, model_fingerprint
from ..config import SamplingConfig
from ..data import Augment
from ..distillation import distill_loss
from ..errors import ConfigError, InputError
from ..sampling import sample
from ..tokenizer import Tokenizer
from ..train_transformer import token_loss
from ..training import (Callback, DistContext, TrainConfig, config_dict, freeze_except, run_fingerprint, run_loop,
                        seed_everything, trainable_fingerprint)
from ..transformer import VARTransformer
from .groups import DEFAULT_GROUPS, TrainableSet, parse_groups
from .loss import scale_weights, token_weights

log = logging.getLogger(__name__)

PRIOR_LOGITS_BYTES = 512 * 2**20  # the frozen model's prior logits are kept when they fit, else recomputed


@dataclass
class FinetuneConfig:
    """What is trained and how. class_id: an existing class to bind the subject to; new_class: bind it to a
    new id instead (num_classes + 1: the null class keeps num_classes). rank 0 trains full tensors."""

    class_id: int | None = None
    new_class: bool = False
    groups: tuple[str, ...] = DEFAULT_GROUPS
    rank: int = 4
    lora_alpha: float = 4.0  # low-rank updates are scaled by lora_alpha / rank
    scale_weights: str = "power:1"
    prior_weight: float = 3.0
    prior_samples: int = 64
    prior_batch: int = 16
    prior_classes: tuple[int, ...] | None = None  # None: every class but the subject's, and the null class
    prior_cfg: float = 1.5
    subject_batch: int = 8
    init_class: int | None = None  # a new class's row starts as this class's row (None: the mean of all)
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        self.groups = parse_groups(self.groups)
        if (self.class_id is None) == (not self.new_class):
            raise ConfigError("give either a class id to bind the subject to or new_class=True, not both")
        for name in ("rank", "prior_samples", "prior_batch", "subject_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "rank" else 1):
                raise ConfigError(f"{name} must be an integer >= {0 if name == 'rank' else 1}, got {value!r}")
        for name in ("lora_alpha", "prior_weight", "prior_cfg"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if self.prior_classes is not None:
            self.prior_classes = tuple(int(c) for c in self.prior_classes)
            if not self.prior_classes:
                raise ConfigError("prior_classes must not be empty (None: every other class)")

    def subject_class(self, num_classes: int) -> int:
        """The id the subject is bound to; InputError when out of range."""
        if self.new_class:
            return num_classes + 1
        if not 0 <= self.class_id < num_classes:
            raise InputError(f"class id {self.class_id} is out of range: this model has classes 0..{num_classes - 1}"
                             " (or bind the subject to a new class id)")
        return self.class_id


@dataclass
class FinetuneResult:
    adapter: Adapter
    trainable_parameters: int
    seconds: float  # wall time of the whole tune (prior sampling included)
    steps: int


def default_train_config(steps: int = 150, seed: int = 0, device: str = "cpu", *, lr: float = 3e-3,
                         warmup_steps: int = 10, weight_decay: float = 0.0, grad_clip: float = 2.0,
                         run_dir: str | None = None) -> TrainConfig:
    """The optimisation settings of a subject tune (`var-engine finetune` and the web demo use these defaults)."""
    return TrainConfig(out_dir=run_dir or "", steps=steps, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                       grad_clip=grad_clip, ema_decay=0.0, log_every=max(1, min(25, steps)), eval_every=steps,
                       ckpt_every=max(1, min(50, steps)), seed=seed, device=device)


def prior_labels(cfg: FinetuneConfig, num_classes: int, subject: int) -> torch.Tensor:
    """The prior's class ids, cycled to cfg.prior_samples (num_classes is the null class)."""
    classes = cfg.prior_classes
    if classes is None:
        classes = tuple(c for c in range(num_classes) if c != subject) + (num_classes,)
    bad = [c for c in classes if not 0 <= c <= num_classes]
    if bad:
        raise InputError(f"prior classes {bad} are out of range 0..{num_classes} ({num_classes}: the null class)")
    return torch.tensor(classes, dtype=torch.long).repeat(math.ceil(cfg.prior_samples / len(classes)))[:cfg.prior_samples]


@torch.no_grad()
def _teacher_logits(teacher: VARTransformer, labels: torch.Tensor, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([teacher(labels[i:i + chunk], x[i:i + chunk], drop_labels=False)
                      for i in range(0, len(labels), chunk)])


def finetune_subject(transformer: VARTransformer, tokenizer: Tokenizer, images: torch.Tensor, cfg: FinetuneConfig,
                     train: TrainConfig, *, run_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
                     progress: bool = False,
                     on_start: Callable[[int], None] | None = None) -> FinetuneResult:
    """Tune a copy of `transformer` (left unchanged, it is the frozen prior) on `images` (N, 3, S, S) in [-1, 1].

    train: steps, lr, warmup, weight decay, grad clip, seed, device (batch_size and ema_decay are not used:
    see cfg.subject_batch; adapters hold the final weights). run_dir: resumable state and metrics (None: none).
    on_start(trainable_count): called once the trainable set is known (the CLI prints it).
    """
    t0 = time.perf_counter()
    if images.ndim != 4 or images.shape[1] != 3 or not len(images):
        raise InputError(f"subject images must be (N, 3, H, W), got {tuple(images.shape)}")
    size = tokenizer.cfg.image_size
    if images.shape[-2:] != (size, size):
        raise InputError(f"subject images must be {size}x{size} for this model, got {tuple(images.shape[-2:])}")
    num_classes = transformer.num_classes
    subject = cfg.subject_class(num_classes)
    ctx = DistContext(train.device)
    seed_everything(train.seed)
    device = ctx.device
    teacher = transformer.to(device).eval()
    tokenizer = tokenizer.to(device).eval()
    base_fingerprint = model_fingerprint(teacher)
    student = copy.deepcopy(teacher)

    # the prior: the frozen model's own samples, and its predictions on them
    labels_P = prior_labels(cfg, num_classes, subject).to(device)
    generator = torch.Generator(device=device).manual_seed(train.seed + 17)
    prior_tokens = sample(teacher, tokenizer.quantize, labels_P, SamplingConfig(cfg=cfg.prior_cfg),
                          generator=generator).tokens
    with torch.no_grad():
        prior_x = tokenizer.teacher_input(prior_tokens)
    L, V = prior_tokens.shape[1], teacher.cfg.vocab_size
    prior_logits = None
    if cfg.prior_weight > 0 and len(labels_P) * L * V * 4 <= PRIOR_LOGITS_BYTES:
        prior_logits = _teacher_logits(teacher, labels_P, prior_x)

    # what trains
    init = None
    if cfg.new_class:
        table = teacher.class_emb.weight.detach()
        if cfg.init_class is not None and not 0 <= cfg.init_class < num_classes:
            raise InputError(f"init_class {cfg.init_class} is out of range: this model has classes 0..{num_classes - 1}")
        init = table[:num_classes].mean(0) if cfg.init_class is None else table[cfg.init_class]
    trainable = TrainableSet(student, cfg.groups, cfg.rank, subject, init, cfg.lora_alpha, train.seed)
    params = freeze_except(student, trainable.parameters())
    if not params:
        raise ConfigError(f"groups {cfg.groups} select no parameters in this model")
    if on_start is not None:
        on_start(trainable.num_parameters())

    patch_nums = teacher.cfg.patch_nums
    weight_L = token_weights(scale_weights(cfg.scale_weights, patch_nums), patch_nums).to(device)
    prior_weight_L = token_weights(scale_weights("uniform", patch_nums), patch_nums).to(device)
    images = images.to(device)
    gen = torch.Generator().manual_seed(train.seed)
    subject_labels = torch.full((min(cfg.subject_batch, len(images)),), subject, dtype=torch.long, device=device)

    drawn = [0]  # steps whose random draws `gen` has made

    def draw() -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step's draws, in order: the subject views (picked and augmented) and the prior rows."""
        pick = torch.randperm(len(images), generator=gen)[:len(subject_labels)].to(device)
        with torch.no_grad():
            views = cfg.augment(images[pick], gen)
        rows = torch.randint(len(labels_P), (cfg.prior_batch,), generator=gen).to(device) if cfg.prior_weight > 0 \
            else None
        drawn[0] += 1
        return views, rows

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        while drawn[0] < step:  # a resumed run replays the earlier steps' draws, so it continues the same stream
            draw()
        views, rows = draw()
        with torch.no_grad():
            tokens = tokenizer.encode(views)
            x = tokenizer.teacher_input(tokens)
        B = len(tokens)
        labels = subject_labels
        if cfg.prior_weight > 0:
            labels = torch.cat((labels, labels_P[rows]))
            x = torch.cat((x, prior_x[rows]))
        logits = student(labels, x, drop_labels=False)
        subject_loss = token_loss(logits[:B], tokens, weight_L)
        if cfg.prior_weight <= 0:
            return subject_loss, {"subject": subject_loss}
        target = prior_logits[rows] if prior_logits is not None else \
            _teacher_logits(teacher, labels_P[rows], prior_x[rows])
        prior = distill_loss(logits[B:], target, prior_weight_L)
        return subject_loss + cfg.prior_weight * prior, {"subject": subject_loss, "prior": prior}

    images_sha = hashlib.sha1(images.detach().cpu().numpy().tobytes()).hexdigest()[:16]
    fingerprint = run_fingerprint(train, 1, finetune=config_dict(cfg), base=base_fingerprint, images=images_sha,
                                  trainable=trainable_fingerprint(student, params))
    steps = run_loop(student, params, step_loss, train, ctx, fingerprint=fingerprint,
                     state_dir=run_dir, log_dir=run_dir, name="finetune", callbacks=callbacks,
                     progress=progress)
    settings = {"steps": steps, "lr": train.lr, "seed": train.seed, "scale_weights": cfg.scale_weights,
                "prior_weight": cfg.prior_weight, "prior_samples": cfg.prior_samples, "prior_cfg": cfg.prior_cfg,
                "images": len(images), "images_sha1": images_sha}
    meta = {"base_fingerprint": base_fingerprint, "class_id": subject, "class_rows": trainable.class_row_ids(),
            "new_class": cfg.new_class, "num_classes": num_classes, "groups": list(cfg.groups), "rank": cfg.rank,
            "lora_scale": trainable.lora_scale, "settings": settings}
    adapter = Adapter(trainable.adapter_tensors(), meta)
    log.info("tuned class %d: %d steps, %d trainable parameters, %.1f s", subject, steps,
             trainable.num_parameters(), time.perf_counter() - t0)
    return FinetuneResult(adapter, trainable.num_parameters(), time.perf_counter() - t0, steps)
