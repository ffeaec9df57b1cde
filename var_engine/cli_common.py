"""Pieces shared by the command modules: the command registry and common flags."""
from __future__ import annotations

import argparse
from typing import Callable

from .config import DRAW_METHODS, OFFICIAL_PATCH_NUMS_256
from .errors import VarEngineError
from .linear import LINEAR_BACKENDS
from .loading import LoadSettings, load_pipeline as load_configured_pipeline
from .pipeline import PRECISIONS
from .search.schedule import DEFAULT_BUDGET
from .sampling.runners import COMPILE_MODES, GRANULARITIES, RUNNERS

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
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa", "math", "xformers"],
                   help="attention backend (auto: PyTorch SDPA; xformers needs CUDA and the 'gpu' extra)")
    p.add_argument("--linear", default="auto", choices=list(LINEAR_BACKENDS),
                   help="linear kernels (auto: oneDNN for few-row CPU float32 inference, BLAS elsewhere)")
    p.add_argument("--runner", default="eager", choices=RUNNERS,
                   help="how scale steps execute: eager (reference), torch.compile, or CUDA graphs (GPU)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode for --runner compile")
    p.add_argument("--compile-granularity", default="auto", choices=GRANULARITIES,
                   help="what --runner compile compiles: one block shared by all layers (fast to compile), "
                        "a whole scale step, or auto (step for models of up to 8 blocks and for the CUDA-graph "
                        "modes on a GPU, else block)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="autocast precision (fp32 is the reference; bf16/fp16 for GPUs)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="let glibc keep freed CPU memory for reuse instead of page-faulting it in again "
                        "(var_engine.cpu_memory; faster repeated generation on CPU, the process keeps its peak)")


def load_settings(args: argparse.Namespace) -> LoadSettings:
    return LoadSettings(checkpoint=args.checkpoint, official_vae=args.official_vae, official_var=args.official_var,
                        patch_nums=args.patch_nums, num_heads=args.num_heads, device=args.device,
                        threads=args.threads, attention=args.attention, linear=args.linear, runner=args.runner,
                        compile_mode=args.compile_mode, compile_granularity=args.compile_granularity,
                        precision=args.precision, keep_freed_memory=args.keep_freed_memory)


def load_pipeline(args: argparse.Namespace):
    return load_configured_pipeline(load_settings(args))


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance (ramped over scales)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--more-smooth", action="store_true", help="gumbel smoothing (visualisation only)")
    p.add_argument("--draw", choices=DRAW_METHODS, default="release",
                   help="release: the official code's top-p and multinomial draw (its tokens for a seed); "
                        "fast: the same distribution with less sampling work")



def parse_bytes(text: str) -> int:
    """'200MB', '1.5GiB', '4096' -> bytes (k/M/G = powers of 1000, Ki/Mi/Gi = powers of 1024)."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
             "k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abgikm")
    try:
        value = float(num) * units[t[len(num):]]
    except (KeyError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"expected a size like 200MB or 1.5GiB, got {text!r}") from e
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"size must be a positive number, got {text!r}")
    return int(value)


def add_depth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("VARiant depth plans")
    g.add_argument("--depth", type=int, default=None, help="subnet depth for the later scales (default: full)")
    g.add_argument("--switch-scale", type=int, default=None, help="scales run at full depth before the switch")
    g.add_argument("--finish-scale", type=int, default=None,
                   help="full depth again from this scale (with --search: explore on the subnet, finish the "
                        "survivors at full depth)")
    g.add_argument("--memory-budget", type=parse_bytes, default=None,
                   help="KV-cache budget per batch, e.g. 200MB: picks the deepest plan that fits")
    g.add_argument("--transient-last-scale", action="store_true",
                   help="keep the final scale's keys/values out of the KV cache (about a third less KV memory)")


def depth_plan_from_args(pipe, args: argparse.Namespace, batch: int):
    if args.memory_budget is not None:
        if args.depth is not None or args.switch_scale is not None or args.finish_scale is not None:
            raise VarEngineError("--memory-budget chooses the depth plan itself; drop --depth/--switch-scale/"
                                 "--finish-scale")
        return pipe.plan_for_memory(batch, args.memory_budget, cfg=args.cfg,
                                    transient_last_scale=getattr(args, "transient_last_scale", False))
    return pipe.depth_plan(args.depth, args.switch_scale, args.finish_scale)


def add_search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("test-time search")
    g.add_argument("--search", choices=["tts", "best_of_n"], default=None,
                   help="spend more compute per image: TTS-VAR or Best-of-N, scored by the model's shipped "
                        "scorers (latent reward during the search, evaluator for the final pick)")
    g.add_argument("--budget", type=float, default=None,
                   help="search compute per image in plain full-depth samples (default 4)")


def search_from_args(args: argparse.Namespace) -> tuple[str | None, float | None]:
    if args.search is None:
        if args.budget is not None:
            raise VarEngineError("--budget needs --search tts or --search best_of_n")
        return None, None
    return args.search, DEFAULT_BUDGET if args.budget is None else args.budget
