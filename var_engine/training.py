"""Shared training machinery: config, LR schedule, EMA, torchrun/DDP context, resumable state, metrics,
and the one optimisation loop (`run_loop`) every trainer runs on."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .devices import resolve_device, set_threads
from .errors import CheckpointError, ConfigError

STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    """Optimisation settings shared by the tokenizer, transformer and evaluator loops."""

    out_dir: str = "runs/train"
    steps: int = 2000
    batch_size: int = 64  # per process
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 2.0  # 0: off
    ema_decay: float = 0.999  # 0: off
    eval_every: int = 500
    ckpt_every: int = 250
    log_every: int = 25
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: torch's choice

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "ckpt_every", "eval_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "ema_decay", "min_lr_ratio"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        if self.ema_decay >= 1:
            raise ConfigError(f"ema_decay must be < 1, got {self.ema_decay}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


class EMA:
    """Exponential moving average of a module's trainable parameters (frozen ones are never copied)."""

    def __init__(self, module: nn.Module, decay: float, params: Iterable[nn.Parameter] | None = None):
        self.decay = decay
        chosen = None if params is None else {id(p) for p in params}
        self.names = [n for n, p in module.named_parameters() if chosen is None or id(p) in chosen]
        own = dict(module.named_parameters())
        self.shadow = {n: own[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up of the average
        own = dict(module.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(own[n].detach(), 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if set(sd) != set(self.names):
            raise CheckpointError("the saved EMA covers other parameters than this run trains")
        for n in self.names:
            self.shadow[n].copy_(sd[n])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averages into `module` (for the final weights)."""
        own = dict(module.named_parameters())
        for n in self.names:
            own[n].copy_(self.shadow[n])

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """`module` with the averages in place of its trained values; restored exactly on exit."""
        own = dict(module.named_parameters())
        saved = {n: own[n].detach().clone() for n in self.names}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    own[n].copy_(saved[n])


class DistContext:
    """torchrun-aware process group: gloo on CPU, nccl on CUDA; a no-op for one process."""

    def __init__(self, device: str = "cpu"):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank)
        self.device = dev
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def infinite_batches(dataset: Dataset, cfg: TrainConfig, ctx: DistContext, start_step: int,
                     drop_last: bool = True) -> Iterator[Any]:
    """Endless batches over epochs, each process taking its own shard; resumes at start_step."""
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed, drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=drop_last)
    per_epoch = max(1, len(loader))
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if skip:
                skip -= 1
                continue
            yield batch
        epoch += 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_run(cfg: TrainConfig) -> None:
    """What can fail before any work: the device, the thread count, the run folder (created here)."""
    resolve_device(cfg.device)
    if cfg.threads < 0:
        raise ConfigError(f"threads must be a positive integer (or 0 for torch's choice), got {cfg.threads}")
    try:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run folder {cfg.out_dir}: {e.strerror or e}") from e


def start_run(cfg: TrainConfig) -> DistContext:
    """Check the run (`check_run`), join the torchrun process group (if any), set CPU threads, seed this
    process."""
    check_run(cfg)
    ctx = DistContext(cfg.device)
    set_threads(cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    return ctx


# ----------------------------------------------------------------------------- resumable state
def save_state(out_dir: str | Path, *, step: int, fingerprint: dict[str, Any], model: nn.Module,
               optimizer: torch.optim.Optimizer, ema: EMA | None, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write everything a killed run needs to continue (loadable with weights_only=True)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else {},
        "rng_cpu": torch.get_rng_state(),
        "extra": dict(extra or {}),
    }
    tmp = out / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)
    return out / STATE_FILE


def load_state(out_dir: str | Path, fingerprint: dict[str, Any], model: nn.Module,
               optimizer: torch.optim.Optimizer, ema: EMA | None) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore a run saved by `save_state`; returns (step, extra). Step 0 if there is nothing to resume."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return 0, {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable state is reported the same way
        raise CheckpointError(f"{path}: cannot resume, the training state is unreadable ({e})") from e
    saved = json.loads(state["fingerprint"])
    if saved != fingerprint:
        diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise CheckpointError(f"{path}: cannot resume: it was trained with another config (differs in {diff}); "
                              "use a new --out directory or the same settings")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state["ema"]:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_cpu"])
    return int(state["step"]), state.get("extra", {})


class MetricsLog:
    """Appends one row per record to `<name>.csv` and `<name>.jsonl` in the run directory."""

    def __init__(self, out_dir: str | Path, name: str = "metrics", enabled: bool = True):
        self.dir, self.name, self.enabled = Path(out_dir), name, enabled

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{self.name}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        path = self.dir / f"{self.name}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def config_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(obj)))


def run_fingerprint(cfg: TrainConfig, world_size: int, **parts: Any) -> dict[str, Any]:
    """What must match for a resume: the optimisation settings that change the result, and `parts`."""
    ignored = {"out_dir", "device", "threads", "num_workers", "eval_every", "ckpt_every", "log_every"}
    train = {k: v for k, v in config_dict(cfg).items() if k not in ignored}
    parts = {k: config_dict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in parts.items()}
    return json.loads(json.dumps({"train": train, "world_size": world_size, **parts}))  # as stored


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings of positions/levels and gains (ndim < 2)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


# ----------------------------------------------------------------------------- the loop
def freeze_except(model: nn.Module, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Make `params` the only parameters of `model` that take gradients; returns them as a list."""
    params = list(params)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def trainable_fingerprint(model: nn.Module, params: Sequence[nn.Parameter]) -> dict[str, Any]:
    """Which parameters a run trains, for the resume fingerprint: their count and a hash of their names."""
    chosen = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]
    shapes = [list(p.shape) for n, p in model.named_parameters() if id(p) in chosen]
    digest = hashlib.sha1(json.dumps([names, shapes]).encode()).hexdigest()[:16]
    return {"tensors": len(names), "numel": sum(p.numel() for p in params), "names_sha1": digest}


class Callback:
    """Hooks into `run_loop`; override what you need (each method is a no-op here)."""

    def after_step(self, step: int) -> bool:
        """After the optimizer step (`step` counts finished steps); True ends the run early."""
        return False

    def on_log(self, step: int, row: dict[str, Any]) -> None:
        """Add entries to the train log row before it is written (every log_every steps)."""

    def on_eval(self, step: int, model: nn.Module) -> dict[str, Any] | None:
        """Main process, every eval_every steps and at the end, with the evaluated (EMA) weights in `model`;
        a returned dict joins the eval log."""
        return None


# one step's loss and extra scalars for the log, given the step index
StepLoss = Callable[[int], "tuple[torch.Tensor, dict[str, torch.Tensor | float]]"]


def run_loop(model: nn.Module, params: Sequence[nn.Parameter], step_loss: StepLoss, cfg: TrainConfig,
             ctx: DistContext, *, fingerprint: dict[str, Any], state_dir: str | Path | None,
             log_dir: str | Path | None = None, name: str = "train", ema: EMA | None = None,
             callbacks: Sequence[Callback] = (), grad_clip: float | None = None, progress: bool = True) -> int:
    """AdamW on `params` (the LR schedule of `cfg`) minimising `step_loss(step)` until cfg.steps; returns the
    last step run (earlier when a callback stops the run).

    state_dir: where the resumable state lives (resumed when its fingerprint matches; None: not resumable).
    log_dir: where train/eval metrics go (None: not logged). grad_clip overrides cfg.grad_clip (0: off).
    With `ema`, evaluation sees the averaged weights; the caller writes them into the model at the end.
    Under torchrun, callbacks must stop (after_step -> True) on the same step in every process.
    """
    opt = make_optimizer(params, cfg)
    step = load_state(state_dir, fingerprint, model, opt, ema)[0] if state_dir is not None else 0
    enabled = ctx.is_main and log_dir is not None
    train_log = MetricsLog(log_dir or ".", "train", enabled)
    eval_log = MetricsLog(log_dir or ".", "eval", enabled)
    clip = cfg.grad_clip if grad_clip is None else grad_clip
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=name, disable=not (progress and ctx.is_main))
    while step < cfg.steps:
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, extra = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip else None
        opt.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        stop = any([cb.after_step(step) for cb in callbacks])  # every callback sees every step
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps or stop:
            row: dict[str, Any] = {"step": step, "loss": ctx.mean(loss.detach()).item(), "lr": lr_at(step - 1, cfg)}
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            row.update({k: ctx.mean(v.detach()).item() if isinstance(v, torch.Tensor) else v for k, v in extra.items()})
            for cb in callbacks:
                cb.on_log(step, row)
            train_log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if ctx.is_main and callbacks and (step % cfg.eval_every == 0 or step == cfg.steps or stop):
            row = {"step": step}
            with ema.applied(model) if ema is not None else _same(model):
                model.eval()
                for cb in callbacks:
                    row.update(cb.on_eval(step, model) or {})
            if len(row) > 1:
                eval_log.write(row)
        if state_dir is not None and (step % cfg.ckpt_every == 0 or step == cfg.steps or stop):
            if ctx.is_main:
                save_state(state_dir, step=step, fingerprint=fingerprint, model=model, optimizer=opt, ema=ema)
            ctx.barrier()
        if stop:
            break
    bar.close()
    model.eval()
    return step


@contextmanager
def _same(model: nn.Module) -> Iterator[nn.Module]:
    yield model
