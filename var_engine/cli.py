"""`var-engine` command line: argparse -> dataclasses -> library calls."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from . import cli_train  # noqa: F401  (registers the training commands)
from . import cli_serve  # noqa: F401  (registers `serve`; gradio loads only when it runs)
from . import cli_finetune  # noqa: F401  (registers `finetune`)
from . import cli_edit  # noqa: F401  (registers `edit`)
from .cli_common import (COMMANDS, add_depth_args, add_model_args, add_sampling_args, add_search_args, command,
                         depth_plan_from_args, load_pipeline, search_from_args)
from .errors import VarEngineError

log = logging.getLogger("var_engine")

# ---------------------------------------------------------------------------------- generate
@command("generate", "generate images of given classes into a grid PNG or a folder")
def cmd_generate(args: argparse.Namespace) -> int:
    from .images import save_grid, save_png

    if args.num < 1 or args.batch_size < 1:
        raise VarEngineError("--num and --batch-size must be >= 1")
    search, budget = search_from_args(args)
    if args.trace and not search:
        raise VarEngineError("--trace records a search: add --search tts or --search best_of_n")
    pipe = load_pipeline(args)
    adapter = pipe.load_adapter(args.adapter) if args.adapter else None
    classes = args.classes or [str(adapter.class_id) if adapter is not None else "0"]
    if classes == ["all"]:
        classes = [str(c) for c in range(pipe.config.num_classes)]
    labels = [c for c in classes for _ in range(args.num)]
    labels_t = pipe.parse_labels(labels)
    plan = depth_plan_from_args(pipe, args, min(args.batch_size, len(labels)))
    images, traces = [], []
    from tqdm import tqdm

    with tqdm(total=len(labels), unit="img", desc="generate", disable=args.quiet) as bar:
        for i in range(0, len(labels), args.batch_size):
            chunk = labels_t[i:i + args.batch_size]
            out = pipe.generate(chunk, seed=args.seed + i, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                more_smooth=args.more_smooth, layer_plan=plan, draw=args.draw,
                                transient_last_scale=args.transient_last_scale, precision=args.precision,
                                search=search, budget=budget)
            images.append(out.images.cpu())
            if out.search is not None:
                traces.append({"first_image": i, "labels": chunk.tolist(), "compute": out.stats.compute,
                               "seconds": out.stats.seconds, "decodes": out.stats.decodes,
                               "search_overhead_seconds": out.stats.search_overhead_seconds, **out.search.to_dict()})
            bar.update(len(chunk))
    images_t = torch.cat(images)
    if args.trace:
        Path(args.trace).write_text(json.dumps(traces, indent=1))
        print(f"wrote {args.trace} (search trace of {len(traces)} batch(es))")
    if args.outdir:
        for i, (img, lab) in enumerate(zip(images_t, labels_t.tolist())):
            save_png(img, Path(args.outdir) / f"{i:06d}_class{lab}.png")
        print(f"wrote {len(images_t)} images to {args.outdir}")
    else:
        nrow = args.num if len(classes) > 1 else min(8, len(images_t))
        save_grid(images_t, args.output, nrow=nrow)
        print(f"wrote {args.output} ({len(images_t)} images)")
    return 0


def _configure_generate(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_sampling_args(p)
    add_depth_args(p)
    add_search_args(p)
    p.add_argument("--trace", default=None, help="with --search: write the search trace (selections, scores) as JSON")
    p.add_argument("--class", dest="classes", action="append", default=None,
                   help="class id (repeatable; 'all' for every class; -1 or 'null' for unconditional)")
    p.add_argument("--adapter", default=None,
                   help="a subject adapter from `var-engine finetune` (default class: its subject's id)")
    p.add_argument("--num", type=int, default=4, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the first batch (the batch starting at image i uses seed + i)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--output", default="out.png", help="grid PNG path")
    p.add_argument("--outdir", default=None, help="write one PNG per image here instead of a grid")
    p.add_argument("--quiet", action="store_true")


cmd_generate.configure = _configure_generate


# ---------------------------------------------------------------------------------- sample
@command("sample", "generate a reproducible, resumable image set (PNG folder + optional .npz); torchrun-shardable")
def cmd_sample(args: argparse.Namespace) -> int:
    from .batch_generation import BatchSettings, generate_folder, pack_npz
    from .training import DistContext

    if args.per_class < 1 or args.batch_size < 1:
        raise VarEngineError("--per-class and --batch-size must be >= 1")
    search, budget = search_from_args(args)
    ctx = DistContext(args.device)
    args.device = str(ctx.device)
    pipe = load_pipeline(args)
    if args.classes.strip() == "all":
        classes = list(range(pipe.config.num_classes))
    else:
        classes = pipe.parse_labels([c for c in args.classes.split(",") if c.strip()]).tolist()
    settings = BatchSettings(classes=classes, per_class=args.per_class, seed=args.seed, batch_size=args.batch_size,
                             cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, depth=args.depth,
                             switch_scale=args.switch_scale, finish_scale=args.finish_scale,
                             precision=args.precision, draw=args.draw,
                             search=search, budget=budget)
    counts = generate_folder(pipe, args.outdir, settings, ctx=ctx, progress=not args.quiet)
    if ctx.is_main:
        print(f"{args.outdir}: {counts['total']} images ({counts['made']} new on rank 0)")
        if args.npz:
            print(f"wrote {pack_npz(args.outdir, settings, args.npz, pipe.config.num_classes)}")
    ctx.close()
    return 0


def _configure_sample(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_sampling_args(p)
    g = p.add_argument_group("set")
    g.add_argument("--classes", default="all", help="'all' or comma-separated class ids")
    g.add_argument("--per-class", type=int, default=50)
    g.add_argument("--outdir", required=True)
    g.add_argument("--npz", default=None, help="also pack the set as .npz (arr_0: N,H,W,3 uint8; labels)")
    g.add_argument("--seed", type=int, default=0, help="base seed; image i of class c always gets the same seed")
    g.add_argument("--batch-size", type=int, default=32, help="fixed chunk size (part of the set's settings)")
    g.add_argument("--depth", type=int, default=None, help="VARiant subnet depth for later scales")
    g.add_argument("--switch-scale", type=int, default=None)
    g.add_argument("--finish-scale", type=int, default=None, help="full depth again from this scale")
    g.add_argument("--quiet", action="store_true")
    add_search_args(p)


cmd_sample.configure = _configure_sample


# ---------------------------------------------------------------------------------- bench
@command("bench", "run a benchmark of the source checkout's bench/ folder (see bench/README.md)")
def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").is_file():
        raise VarEngineError(f"benchmarks live in the bench/ folder of a source checkout; none at {root}")
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    return bench_main([args.name, *args.rest])


def _configure_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a benchmark of bench/README.md (quality, memory, speed, variant, sampler, decoder, ...) or all")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (NAME --help)")


cmd_bench.configure = _configure_bench


# ---------------------------------------------------------------------------------- info
@command("info", "print a checkpoint's config, parameter counts and KV bytes per image")
def cmd_info(args: argparse.Namespace) -> int:
    if args.path:
        args.checkpoint = args.path
    pipe = load_pipeline(args)
    t = pipe.config.transformer
    info = {
        "config": pipe.config.to_dict(),
        "image_size": pipe.config.image_size,
        "tokens_per_image": t.num_tokens,
        "parameters": pipe.num_parameters(),
        "kv_bytes_per_image": {"cfg": pipe.kv_bytes_per_image(cfg=1.5), "no_cfg": pipe.kv_bytes_per_image(cfg=0)},
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    params = info["parameters"]
    print(f"model       : depth {t.depth}, width {t.embed_dim}, heads {t.num_heads}, classes {t.num_classes}, "
          f"vocab {t.vocab_size}, shared AdaLN {t.shared_aln}, attn_l2_norm {t.attn_l2_norm}")
    print(f"scales      : {t.patch_nums} ({t.num_tokens} tokens), image {pipe.config.image_size}px")
    print(f"parameters  : transformer {params['transformer'] / 1e6:.2f}M, tokenizer {params['tokenizer'] / 1e6:.2f}M")
    kv = info["kv_bytes_per_image"]
    print(f"KV / image  : {kv['cfg']:,} bytes with CFG ({kv['cfg'] / 2**20:.2f} MiB), {kv['no_cfg']:,} without")
    return 0


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=None, help="checkpoint directory (default: embedded model)")
    add_model_args(p)
    p.add_argument("--json", action="store_true")


cmd_info.configure = _configure_info


# ---------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="var-engine", description="Visual autoregressive image generation.")
    parser.add_argument("--version", action="version", version=f"var-engine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Errors reach the user as one line: exit code 2 for bad input, settings, files
    and checkpoints, 3 for out of memory, 1 for anything unexpected (--verbose adds the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except torch.OutOfMemoryError as e:
        print(f"error: out of memory ({str(e).splitlines()[0] if str(e) else 'allocation failed'}); "
              "try a smaller --batch-size", file=sys.stderr)
        return 3
    except (VarEngineError, ValueError, OSError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the command line never shows a traceback unless asked)
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {one_line(e)}"
              f"{'' if args.verbose else ' (rerun with --verbose for the traceback)'}", file=sys.stderr)
        return 1


def one_line(error: BaseException) -> str:
    """An exception as one line of text (OSError: 'message: path')."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())

if __name__ == "__main__":
    sys.exit(main())
