"""Training commands: `train-tokenizer`, `train`, `train-evaluator` (single process or torchrun)."""
from __future__ import annotations

import argparse

from .cli_common import command, int_list
from .config import ModelConfig, TokenizerConfig, TransformerConfig
from .errors import ConfigError
from .training import TrainConfig

DTYPES = {"float32": None, "float16": "float16", "bfloat16": "bfloat16"}


def save_dtype(name: str):
    """--save-dtype value -> torch dtype (None keeps float32)."""
    import torch

    return None if DTYPES[name] is None else getattr(torch, DTYPES[name])


def add_train_args(p: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, ema: float) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--out", required=True, help="run directory (checkpoints, metrics, sample PNGs); resumes if present")
    g.add_argument("--steps", type=int, default=steps)
    g.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--grad-clip", type=float, default=2.0)
    g.add_argument("--ema", type=float, default=ema, help="EMA decay of weights (0: off)")
    g.add_argument("--eval-every", type=int, default=500)
    g.add_argument("--ckpt-every", type=int, default=250)
    g.add_argument("--log-every", type=int, default=25)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=0, help="data loader workers")
    g.add_argument("--device", default="cpu", help="cpu or cuda (torchrun: one GPU per process)")
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--data", default="digits", help="'digits' (default set) or an image folder root/<class>/<img>")
    g.add_argument("--augment", action="store_true",
                   help="image folders: small shifts and scale jitter of the training images (no flips)")
    g.add_argument("--no-progress", action="store_true")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings, checked (device, threads, run folder) before any data is loaded."""
    from .training import check_run

    cfg = TrainConfig(out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
                      ema_decay=args.ema, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                      log_every=args.log_every, seed=args.seed, num_workers=args.workers, device=args.device,
                      threads=args.threads)
    check_run(cfg)
    return cfg


def _datasets(args: argparse.Namespace, size: int):
    from .data import build_dataset

    train = build_dataset(args.data, "train", size, recolour=True, augment=args.augment)
    heldout = build_dataset(args.data, "heldout", size) if args.data == "digits" else None
    return train, heldout


# ---------------------------------------------------------------------------------- tokenizer
@command("train-tokenizer", "train the multi-scale VQVAE tokenizer from scratch")
def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from .train_tokenizer import TokenizerLoss, train_tokenizer

    if args.image_size % (2 ** (len(args.ch_mult) - 1)):
        raise ConfigError(f"image size {args.image_size} is not divisible by the downsampling of ch_mult {args.ch_mult}")
    latent = args.image_size // 2 ** (len(args.ch_mult) - 1)
    if args.patch_nums[-1] != latent:
        raise ConfigError(f"the last patch_num must equal the latent size {latent}, got {args.patch_nums}")
    tok_cfg = TokenizerConfig(vocab_size=args.vocab_size, z_channels=args.z_channels, ch=args.ch, ch_mult=args.ch_mult,
                              num_res_blocks=args.num_res_blocks, norm_groups=args.norm_groups,
                              using_sa=args.attn, using_mid_sa=args.attn, patch_nums=args.patch_nums)
    cfg = train_config(args)
    train, heldout = _datasets(args, args.image_size)
    held_images = heldout.tensors()[0] if heldout is not None else None
    train_tokenizer(tok_cfg, cfg, train, held_images,
                    TokenizerLoss(dead_code_every=args.dead_code_every), progress=not args.no_progress)
    print(f"tokenizer written to {args.out}")
    return 0


def _configure_train_tokenizer(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tokenizer")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--patch-nums", type=int_list, default=(1, 2, 3, 4, 5, 6, 8))
    g.add_argument("--vocab-size", type=int, default=512)
    g.add_argument("--z-channels", type=int, default=16)
    g.add_argument("--ch", type=int, default=32)
    g.add_argument("--ch-mult", type=int_list, default=(1, 2, 2))
    g.add_argument("--num-res-blocks", type=int, default=1)
    g.add_argument("--norm-groups", type=int, default=16)
    g.add_argument("--attn", action=argparse.BooleanOptionalAction, default=True, help="self-attention blocks")
    g.add_argument("--dead-code-every", type=int, default=100)
    add_train_args(p, steps=3000, batch_size=64, lr=2e-3, ema=0.0)


cmd_train_tokenizer.configure = _configure_train_tokenizer


# ---------------------------------------------------------------------------------- transformer
@command("train", "train the VAR transformer on a trained tokenizer (optionally as a VARiant supernet)")
def cmd_train(args: argparse.Namespace) -> int:
    from .distillation import Distillation
    from .train_tokenizer import load_tokenizer
    from .train_transformer import train_transformer
    from .variant import SupernetPlan, SupernetSchedule

    distill = Distillation(args.distill, args.distill_temperature) if args.distill else None
    if distill is not None and not args.supernet and not args.distill_teacher:
        raise ConfigError("--distill teaches subnets from the full network: it needs --supernet "
                          "(or a frozen --distill-teacher)")
    if args.distill_teacher and distill is None:
        raise ConfigError("--distill-teacher needs a distillation weight: --distill W with W in (0, 1]")
    schedule = SupernetSchedule.parse(args.schedule)
    cfg = train_config(args)
    tokenizer = load_tokenizer(args.tokenizer)
    tcfg = tokenizer.cfg
    train, heldout = _datasets(args, tcfg.image_size)
    num_classes = getattr(train, "num_classes", None) or len(train.classes)
    init_from = None
    if args.init_from:
        from .pipeline import Pipeline

        base = Pipeline.from_pretrained(args.init_from)
        var_cfg = base.config.transformer
        if base.config.tokenizer.to_dict() != tcfg.to_dict():
            raise ConfigError("--init-from checkpoint uses another tokenizer than --tokenizer")
        init_from = base.transformer
    else:
        var_cfg = TransformerConfig(depth=args.depth, embed_dim=args.width, num_heads=args.heads,
                                    num_classes=num_classes, mlp_ratio=args.mlp_ratio, shared_aln=args.shared_aln,
                                    attn_l2_norm=args.l2_norm, cond_drop_rate=args.cond_drop,
                                    vocab_size=tcfg.vocab_size, z_channels=tcfg.z_channels, patch_nums=tcfg.patch_nums)
    model_cfg = ModelConfig(tcfg, var_cfg)
    plan, extra = None, {}
    if args.supernet:
        extra["variant"] = {"depths": list(args.depths), "switch_scales": list(args.switch_scales),
                            "schedule": args.schedule, "switch_scale": max(args.switch_scales)}
        plan = SupernetPlan(var_cfg.depth, var_cfg.patch_nums, tuple(args.depths), tuple(args.switch_scales),
                            args.steps, schedule, seed=args.seed)
    teacher = None
    if args.distill_teacher:
        from .pipeline import Pipeline

        prior = Pipeline.from_pretrained(args.distill_teacher)
        t = prior.config.transformer
        if (t.vocab_size, t.patch_nums, t.num_classes) != (var_cfg.vocab_size, var_cfg.patch_nums, var_cfg.num_classes):
            raise ConfigError("--distill-teacher must share the trained model's vocabulary, scales and classes")
        teacher = prior.transformer
    if distill is not None:
        record = {"weight": distill.weight, "temperature": distill.temperature,
                  **({"teacher": str(args.distill_teacher)} if teacher is not None else {})}
        extra.setdefault("variant" if args.supernet else "fine_tune", {})["distill"] = record
    train_transformer(model_cfg, tokenizer, cfg, train, heldout, plan=plan, init_from=init_from, distill=distill,
                      teacher=teacher,
                      augment_copies=args.augment_copies, label_smoothing=args.label_smoothing,
                      extra_config=extra, save_dtype=save_dtype(args.save_dtype), progress=not args.no_progress)
    print(f"checkpoint written to {args.out}")
    return 0


def _configure_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transformer")
    g.add_argument("--tokenizer", required=True, help="directory written by train-tokenizer (or a full checkpoint)")
    g.add_argument("--init-from", default=None, help="start from this var-engine checkpoint (fine-tune)")
    g.add_argument("--depth", type=int, default=8)
    g.add_argument("--width", type=int, default=128)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--mlp-ratio", type=float, default=4.0)
    g.add_argument("--shared-aln", action="store_true")
    g.add_argument("--l2-norm", action=argparse.BooleanOptionalAction, default=True, help="attn_l2_norm")
    g.add_argument("--cond-drop", type=float, default=0.1, help="label dropout for classifier-free guidance")
    g.add_argument("--augment-copies", type=int, default=4, help="recoloured copies of the data tokenized up front")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--save-dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    s = p.add_argument_group("VARiant supernet")
    s.add_argument("--supernet", action="store_true", help="train depth-switchable subnets too")
    s.add_argument("--depths", type=int_list, default=(4, 2), help="subnet depths sampled in subnet steps")
    s.add_argument("--switch-scales", "--switch-scale", type=int_list, default=(3, 4, 5),
                   help="full-depth scale counts sampled in subnet steps")
    s.add_argument("--schedule", default="progressive",
                   help="'progressive', 'progressive:R0,R1,R2[@B0,B1]' (stage ratios and boundaries) "
                        "or 'fixed:R' (subnet step fraction)")
    s.add_argument("--distill", type=float, default=0.0,
                   help="in-place distillation: on subnet steps the loss is (1 - W) * cross-entropy + W * "
                        "KL(full network || subnet), W in [0, 1] (0: off)")
    s.add_argument("--distill-temperature", type=float, default=1.0)
    s.add_argument("--distill-teacher", default=None,
                   help="a frozen var-engine checkpoint to distil from on every step (full network and "
                        "subnets) instead of the network itself on subnet steps")
    add_train_args(p, steps=6000, batch_size=64, lr=1e-3, ema=0.999)


cmd_train.configure = _configure_train


# ---------------------------------------------------------------------------------- evaluator
@command("train-evaluator", "train the small classifier used for accuracy, FID-style distance and rewards")
def cmd_train_evaluator(args: argparse.Namespace) -> int:
    from .evaluator import EvaluatorConfig, accuracy, train_evaluator

    cfg = train_config(args)
    train, heldout = _datasets(args, args.image_size)
    num_classes = getattr(train, "num_classes", None) or len(train.classes)
    held = heldout.tensors() if heldout is not None else None
    model = train_evaluator(EvaluatorConfig(num_classes=num_classes, image_size=args.image_size, width=args.width),
                            cfg, train, held, progress=not args.no_progress,
                            save_dtype=save_dtype(args.save_dtype))
    if held is not None:
        print(f"held-out accuracy: {accuracy(model, held[0].add(1).mul(0.5), held[1]):.4f}")
    print(f"evaluator written to {args.out}")
    return 0


def _configure_train_evaluator(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluator")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--width", type=int, default=32)
    g.add_argument("--save-dtype", choices=sorted(DTYPES), default="float32")
    add_train_args(p, steps=2000, batch_size=128, lr=2e-3, ema=0.0)


cmd_train_evaluator.configure = _configure_train_evaluator


# ---------------------------------------------------------------------------------- latent reward
@command("train-latent-reward", "train the decode-free search reward: a classifier on partial latents")
def cmd_train_latent_reward(args: argparse.Namespace) -> int:
    from .search.latent import latent_accuracy, train_latent_reward
    from .train_tokenizer import load_tokenizer

    cfg = train_config(args)
    tokenizer = load_tokenizer(args.tokenizer)
    train, heldout = _datasets(args, tokenizer.cfg.image_size)
    num_classes = getattr(train, "num_classes", None) or len(train.classes)
    held = heldout.tensors() if heldout is not None else None
    model = train_latent_reward(tokenizer, num_classes, cfg, train, held, width=args.width,
                                progress=not args.no_progress, save_dtype=save_dtype(args.save_dtype))
    if held is not None:
        from .search.latent import LatentReward

        reward = LatentReward(model)
        accs = [latent_accuracy(reward, tokenizer, held[0], held[1], k) for k in range(len(tokenizer.cfg.patch_nums))]
        print("held-out accuracy per scale: " + ", ".join(f"{a:.3f}" for a in accs))
    print(f"latent reward written to {args.out}")
    return 0


def _configure_train_latent_reward(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latent reward")
    g.add_argument("--tokenizer", required=True, help="the model's checkpoint or tokenizer directory")
    g.add_argument("--width", type=int, default=64)
    g.add_argument("--save-dtype", choices=sorted(DTYPES), default="float32")
    add_train_args(p, steps=1500, batch_size=256, lr=2e-3, ema=0.0)


cmd_train_latent_reward.configure = _configure_train_latent_reward
