"""Pieces shared by the command modules: the command registry and common flags."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from .config import OFFICIAL_PATCH_NUMS_256
from .errors import VarEngineError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str):
    """Register `fn(args)` as a subcommand; `fn.configure(parser)` adds its flags."""
    def wrap(fn):
        COMMANDS[name] = (help_text, fn)
        return fn
    return wrap


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="var-engine checkpoint directory (default: the embedded default model)")
    p.add_argument("--official-vae", default=None, help="official VQVAE weights (.pth/.safetensors/hf://...)")
    p.add_argument("--official-var", default=None, help="official VAR weights (.pth/.safetensors/hf://...)")
    p.add_argument("--patch-nums", type=int_list, default=OFFICIAL_PATCH_NUMS_256,
                   help="scales of an official model (default: the 256px release)")
    p.add_argument("--num-heads", type=int, default=None, help="heads of an official model (default: depth)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def load_pipeline(args: argparse.Namespace):
    from .pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_vae or args.official_var:
        if not (args.official_vae and args.official_var):
            raise VarEngineError("--official-vae and --official-var go together")
        return Pipeline.from_official(args.official_vae, args.official_var, patch_nums=args.patch_nums,
                                      num_heads=args.num_heads, device=args.device)
    return Pipeline.from_pretrained(args.checkpoint, device=args.device)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance (ramped over scales)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--more-smooth", action="store_true", help="gumbel smoothing (visualisation only)")
