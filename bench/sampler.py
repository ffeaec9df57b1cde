"""Sampler speed and KV memory: var-engine's runners vs a cat-growing reference on the same weights
and seeds (fp32 eager tokens must be identical), next to the device's physical floor.
Prints a table, writes bench/results/<out-name>.{json,md}.

CPU:  python -m bench.sampler [--models default,d16] [--batches 1,4] [--repeats 2] [--threads 2]
GPU:  python -m bench.sampler --device cuda --models d16,d20,d30 --batches 1,8,64 --precision bf16 \
          --runners eager,cuda-graphs --out-name sampler_gpu
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from bench.baseline import sample_cat_cache
from bench.common import (environment, markdown_table, parse_args, profile_tables, profile_top_ops, sync,
                          write_results)
from bench.floor import DevicePeaks, decoder_flops, measure_peaks, transformer_floor_seconds
from var_engine import ModelConfig, Pipeline, TokenizerConfig, TransformerConfig
from var_engine.pipeline import PRECISIONS
from var_engine.sampling import RUNNERS
from var_engine.tokenizer import Tokenizer
from var_engine.transformer import VARTransformer


def build(name: str, device: torch.device | str = "cpu") -> Pipeline:
    """'default' (embedded model), or an official layout 'd16'/'d20'/... with random weights.

    Random weights are created directly on `device` (a d30 initialises in seconds on a GPU).
    """
    if name == "default":
        return Pipeline.from_pretrained(device=device)
    torch.manual_seed(0)
    var_cfg = TransformerConfig.from_preset(name)
    tok_cfg = TokenizerConfig(patch_nums=var_cfg.patch_nums)
    with torch.device(device):
        transformer = VARTransformer(var_cfg)
        transformer.init_weights()
        tokenizer = Tokenizer(tok_cfg)
    return Pipeline(tokenizer, transformer, ModelConfig(tok_cfg, var_cfg))


def _sync(pipe: Pipeline) -> None:
    sync(pipe.device)


def engine_impl(runner: str, compile_mode: str = "default", compile_granularity: str = "auto"):
    """A timing function for var-engine with one runner (its graphs/caches persist across calls)."""
    made: dict[int, object] = {}

    def run(pipe: Pipeline, labels: torch.Tensor, seed: int, cfg: float, precision: str):
        if id(pipe) not in made:
            made.clear()
            made[id(pipe)] = pipe.with_runner(runner, compile_mode, compile_granularity).runner
        pipe.runner = made[id(pipe)]
        out = pipe.generate(labels, seed=seed, cfg=cfg, top_k=900, top_p=0.96, precision=precision)
        s = out.stats
        return out.tokens, s.transformer_seconds, s.decode_seconds, s.kv_bytes

    return run


def time_reference(pipe: Pipeline, labels: torch.Tensor, seed: int, cfg: float, precision: str):
    g = torch.Generator(pipe.device).manual_seed(seed)
    labels = labels.to(pipe.device)
    _sync(pipe)
    t0 = time.perf_counter()
    with pipe.autocast(precision):
        tokens, f_hat, held = sample_cat_cache(pipe.transformer, pipe.tokenizer.quantize, labels, cfg, 900, 0.96, g)
    _sync(pipe)
    t1 = time.perf_counter()
    pipe.tokenizer.set_channels_last(False)  # the original decodes in the default memory format
    try:
        with torch.no_grad(), pipe.autocast(precision):
            pipe.tokenizer.fhat_to_images_at_once(f_hat)  # and the whole batch in one call
        _sync(pipe)
    finally:
        pipe.tokenizer.set_channels_last(True)
    return tokens, t1 - t0, time.perf_counter() - t1, held


def image_decoder_flops(pipe: Pipeline) -> int:
    """FLOPs of decoding one image (counted once per model; the decoder is batch-independent per image)."""
    t = pipe.config.tokenizer
    h = t.patch_nums[-1]
    return decoder_flops(pipe.tokenizer.decoder, (1, t.z_channels, h, h), pipe.device)


def floor_seconds(pipe: Pipeline, batch: int, peaks: DevicePeaks, cfg: float, precision: str,
                  flops_per_image_decode: int) -> dict[str, float]:
    """Physical floor of one call: transformer (bytes vs FLOPs per scale) + decoder FLOPs."""
    elem = 4 if precision == "fp32" else 2
    tr = transformer_floor_seconds(pipe.config.transformer, batch, peaks, guided=cfg != 0, elem_bytes=elem)
    dec = batch * flops_per_image_decode / peaks.matmul
    return {"floor_transformer_s": tr, "floor_decode_s": dec, "floor_s_per_image": (tr + dec) / batch}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,d16")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--runners", default="eager", help=f"var-engine runners to time, from {','.join(RUNNERS)}")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for the compile runner")
    p.add_argument("--compile-granularity", default="auto",
                   help="block, step or auto (see CompiledRunner); a comma list times the compile runner once for each")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--no-reference", action="store_true", help="skip the cat-cache reference sampler")
    p.add_argument("--profile", action="store_true", help="add the top ops of one call of the first runner per shape")
    p.add_argument("--out-name", default="sampler")
    args = parse_args(p, argv)
    if "compile" in args.runners.split(",") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # first_call_s then counts a cold compilation, not kernels cached on disk by an earlier run
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
    device = torch.device(args.device)
    peaks = measure_peaks(device, torch.float32 if args.precision == "fp32" else PRECISIONS[args.precision])
    print(f"device peaks: {peaks.bandwidth / 1e9:.1f} GB/s copy, {peaks.matmul / 1e12:.2f} TFLOP/s matmul", flush=True)
    rows, profiles = [], {}
    granularities = args.compile_granularity.split(",")
    impls = []
    for r in args.runners.split(","):
        for g in granularities if r == "compile" else ["auto"]:
            label = f"var-engine {r}" + (f" ({g})" if r == "compile" and len(granularities) > 1 else "")
            impls.append((label, engine_impl(r, args.compile_mode, g)))
    if not args.no_reference:
        impls.append(("cat-cache reference", time_reference))
    for name in args.models.split(","):
        pipe = build(name, device)
        decode_flops = image_decoder_flops(pipe)
        L = pipe.config.transformer.num_tokens
        for batch in (int(b) for b in args.batches.split(",")):
            labels = torch.arange(batch) % pipe.config.num_classes
            analytic = batch * pipe.kv_bytes_per_image(cfg=args.cfg)
            floor = floor_seconds(pipe, batch, peaks, args.cfg, args.precision, decode_flops)
            runs: dict[str, list] = {impl: [] for impl, _ in impls}
            first_call = {}
            for impl, fn in impls:  # warm-up: page faults, allocator, compile / graph capture for this shape
                _sync(pipe)
                t0 = time.perf_counter()
                fn(pipe, labels, 0, args.cfg, args.precision)
                _sync(pipe)
                first_call[impl] = time.perf_counter() - t0
            for _ in range(args.repeats):  # interleaved, so drifts of a shared machine hit all alike
                for impl, fn in impls:
                    runs[impl].append(fn(pipe, labels, 7, args.cfg, args.precision))
            first = runs[impls[0][0]][0][0]
            group = []
            for impl, _ in impls:
                tr = statistics.median(r[1] for r in runs[impl])
                de = statistics.median(r[2] for r in runs[impl])
                total = tr + de
                group.append({"model": name, "batch": batch, "impl": impl, "precision": args.precision,
                              "s_per_image": total / batch, "tokens_per_s": batch * L / tr, "transformer_s": tr,
                              "decode_s": de, "decode_share": de / total, "first_call_s": first_call[impl], **floor,
                              "x_floor": total / batch / floor["floor_s_per_image"],
                              "kv_peak_bytes": runs[impl][0][3], "kv_analytic_bytes": analytic,
                              "kv_vs_analytic": runs[impl][0][3] / analytic,
                              "same_tokens_as_first": bool(torch.equal(runs[impl][0][0].cpu(), first.cpu()))})
            if not args.no_reference:
                for row in group:
                    row["speedup_vs_reference"] = group[-1]["s_per_image"] / row["s_per_image"]
            for row in group:
                print(row, flush=True)
            rows += group
            if args.profile:
                first_impl = impls[0][1]
                profiles[f"{name} batch {batch}, {impls[0][0]}"] = profile_top_ops(
                    lambda: first_impl(pipe, labels, 7, args.cfg, args.precision), device)
    cols = ["model", "batch", "impl", "precision", "s_per_image", "speedup_vs_reference", "x_floor", "tokens_per_s",
            "transformer_s", "decode_s", "decode_share", "first_call_s", "floor_s_per_image", "kv_peak_bytes",
            "kv_vs_analytic", "same_tokens_as_first"]
    env = environment()
    write_results(args.out_name, {"rows": rows, "profiles": profiles, "cfg": args.cfg, "repeats": args.repeats,
                                  "device": str(device),
                                  "peaks": {"copy_bytes_per_s": peaks.bandwidth, "matmul_flops": peaks.matmul}},
                  f"Sampler on {env.get('gpu') if device.type == 'cuda' else 'CPU'} ({args.precision}, cfg {args.cfg}, "
                  f"top-k 900, top-p 0.96, median of {args.repeats} interleaved runs after a warm-up per shape). "
                  f"Floor: per scale max(weights + KV bytes / {peaks.bandwidth / 1e9:.0f} GB/s, "
                  f"FLOPs / {peaks.matmul / 1e12:.2f} TFLOP/s), measured peaks.\n\n"
                  + markdown_table(rows, cols) + profile_tables(profiles, "one call"))


if __name__ == "__main__":
    main()
