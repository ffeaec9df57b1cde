"""`var-engine finetune`: bind a few pictures of one subject to a class id, save a small adapter."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import add_model_args, command, load_pipeline
from .errors import ConfigError


@command("finetune", "fine-tune on 3-10 pictures of one subject and write a small adapter file")
def cmd_finetune(args: argparse.Namespace) -> int:
    from .checkpoints import save_adapter
    from .data import Augment, load_subject_images
    from .finetune import FinetuneConfig, default_train_config, finetune_subject

    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise ConfigError(f"the adapter is a .safetensors file, got -o {out}")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.preview and not Path(args.preview).expanduser().parent.is_dir():
        raise ConfigError(f"cannot write the preview {args.preview}: its folder does not exist")
    if args.class_id is None and not args.new_class:
        raise ConfigError("give --class-id N (bind the subject to an existing class) or --new-class")
    cfg = FinetuneConfig(class_id=args.class_id, new_class=args.new_class, groups=args.groups, rank=args.rank,
                         lora_alpha=args.lora_alpha, scale_weights=args.scale_weights, prior_weight=args.prior_weight,
                         prior_samples=args.prior_samples, prior_batch=args.prior_batch,
                         subject_batch=args.subject_batch, augment=Augment(args.shift, args.scale_jitter, args.flip))
    train = default_train_config(args.steps, args.seed, args.device, lr=args.lr, warmup_steps=args.warmup_steps,
                                 weight_decay=args.weight_decay, grad_clip=args.grad_clip, run_dir=args.run_dir)
    pipe = load_pipeline(args)
    subject = cfg.subject_class(pipe.config.num_classes)  # range check before any image is read
    images = load_subject_images(args.images, pipe.config.tokenizer.image_size)
    print(f"{len(images)} subject image(s); class id {subject}{' (new)' if args.new_class else ''}")
    result = finetune_subject(pipe.transformer, pipe.tokenizer, images, cfg, train, run_dir=args.run_dir,
                              progress=not args.no_progress,
                              on_start=lambda n: print(f"trainable parameters: {n:,} "
                                                       f"(groups {','.join(cfg.groups)}, rank {cfg.rank})"))
    save_adapter(out, result.adapter)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {result.steps} steps, {result.seconds:.0f} s); "
          f"generate it with class id {subject} after pipe.load_adapter({str(out)!r})")
    if args.preview:
        from .images import save_grid

        images = pipe.generate([subject] * 8, seed=args.seed, adapter=result.adapter).images
        print(f"wrote {save_grid(images.cpu(), args.preview, nrow=8)} (8 samples of class {subject})")
    return 0


def _configure(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subject")
    g.add_argument("--images", nargs="+", required=True, help="image files and/or folders of them (1-64)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--class-id", type=int, default=None, help="bind the subject to this existing class id")
    which.add_argument("--new-class", action="store_true",
                       help="bind the subject to a new class id (num_classes + 1; num_classes stays the null class)")
    g.add_argument("-o", "--out", required=True, help="adapter file to write (.safetensors)")
    g.add_argument("--preview", default=None, help="also write a PNG grid of 8 samples of the tuned subject")
    m = p.add_argument_group("method")
    m.add_argument("--groups", default="class,ffn,adaln",
                   help="trainable groups: class, ffn, adaln, attn, head, embed, or all")
    m.add_argument("--rank", type=int, default=4, help="low-rank update rank of 2-D weights (0: full tensors)")
    m.add_argument("--lora-alpha", type=float, default=4.0, help="low-rank updates are scaled by alpha / rank")
    m.add_argument("--scale-weights", default="power:1",
                   help="per-scale loss weights: uniform, power:G ((p_K/p_k)^G), step:SIDE:W, or K numbers")
    m.add_argument("--prior-weight", type=float, default=3.0, help="weight of the prior distillation term (0: off)")
    m.add_argument("--prior-samples", type=int, default=64, help="frozen-model samples of the prior classes")
    m.add_argument("--prior-batch", type=int, default=16)
    m.add_argument("--subject-batch", type=int, default=8)
    m.add_argument("--shift", type=float, default=0.06, help="augmentation: largest shift (fraction of the side)")
    m.add_argument("--scale-jitter", type=float, default=0.08, help="augmentation: largest relative zoom")
    m.add_argument("--flip", action="store_true", help="augmentation: horizontal flips (off: mirrored digits differ)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=150)
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--warmup-steps", type=int, default=10)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--grad-clip", type=float, default=2.0)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--run-dir", default=None, help="folder for resumable state and metrics (default: none)")
    o.add_argument("--no-progress", action="store_true")
    add_model_args(p)


cmd_finetune.configure = _configure
