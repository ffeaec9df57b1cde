"""Sampler speed and KV memory: var-engine's static-cache sampler vs a cat-growing reference on the
same weights and seeds (tokens must be identical). Prints a table, writes bench/results/sampler.{json,md}.

Usage: python -m bench.sampler [--models default,d16] [--batches 1,4] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.baseline import sample_cat_cache
from bench.common import markdown_table, parse_args, write_results
from var_engine import ModelConfig, Pipeline, TokenizerConfig, TransformerConfig
from var_engine.tokenizer import Tokenizer
from var_engine.transformer import VARTransformer


def build(name: str) -> Pipeline:
    """'default' (embedded model), or an official layout 'd16'/'d20'/... with random weights."""
    if name == "default":
        return Pipeline.from_pretrained()
    torch.manual_seed(0)
    var_cfg = TransformerConfig.from_preset(name)
    tok_cfg = TokenizerConfig(patch_nums=var_cfg.patch_nums)
    transformer = VARTransformer(var_cfg)
    transformer.init_weights()
    return Pipeline(Tokenizer(tok_cfg), transformer, ModelConfig(tok_cfg, var_cfg))


def time_engine(pipe: Pipeline, labels: torch.Tensor, seed: int, cfg: float):
    out = pipe.generate(labels, seed=seed, cfg=cfg, top_k=900, top_p=0.96)
    s = out.stats
    return out.tokens, s.transformer_seconds, s.decode_seconds, s.kv_bytes


def time_reference(pipe: Pipeline, labels: torch.Tensor, seed: int, cfg: float):
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    tokens, f_hat, held = sample_cat_cache(pipe.transformer, pipe.tokenizer.quantize, labels, cfg, 900, 0.96, g)
    t1 = time.perf_counter()
    pipe.tokenizer.set_channels_last(False)  # the original decodes in the default memory format
    try:
        with torch.no_grad():
            pipe.tokenizer.fhat_to_images(f_hat)
    finally:
        pipe.tokenizer.set_channels_last(True)
    return tokens, t1 - t0, time.perf_counter() - t1, held


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,d16")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--out-name", default="sampler")
    args = parse_args(p, argv)
    rows = []
    impls = (("var-engine", time_engine), ("cat-cache reference", time_reference))
    for name in args.models.split(","):
        pipe = build(name)
        L = pipe.config.transformer.num_tokens
        for _, fn in impls:  # warm-up: first-touch page faults, allocator, thread pools
            fn(pipe, torch.zeros(1, dtype=torch.long), 0, args.cfg)
        for batch in (int(b) for b in args.batches.split(",")):
            labels = torch.arange(batch) % pipe.config.num_classes
            analytic = batch * pipe.kv_bytes_per_image(cfg=args.cfg)
            runs: dict[str, list] = {impl: [] for impl, _ in impls}
            for _ in range(args.repeats):  # interleaved, so drifts of a shared machine hit both alike
                for impl, fn in impls:
                    runs[impl].append(fn(pipe, labels, 7, args.cfg))
            for impl, _ in impls:
                tr = statistics.median(r[1] for r in runs[impl])
                de = statistics.median(r[2] for r in runs[impl])
                total = tr + de
                rows.append({"model": name, "batch": batch, "impl": impl, "s_per_image": total / batch,
                             "tokens_per_s": batch * L / tr, "transformer_s": tr, "decode_s": de,
                             "decode_share": de / total, "kv_peak_bytes": runs[impl][0][3],
                             "kv_analytic_bytes": analytic, "kv_vs_analytic": runs[impl][0][3] / analytic})
                print(rows[-1], flush=True)
            same = torch.equal(runs["var-engine"][0][0], runs["cat-cache reference"][0][0])
            engine, ref = rows[-2], rows[-1]
            engine["identical_tokens"] = ref["identical_tokens"] = same
            engine["speedup_vs_reference"] = ref["s_per_image"] / engine["s_per_image"]
    cols = ["model", "batch", "impl", "s_per_image", "speedup_vs_reference", "tokens_per_s", "transformer_s",
            "decode_s", "decode_share", "kv_peak_bytes", "kv_analytic_bytes", "kv_vs_analytic", "identical_tokens"]
    write_results(args.out_name, {"rows": rows, "cfg": args.cfg, "repeats": args.repeats},
                  f"Sampler: static cache vs cat-growing reference (cfg {args.cfg}, top-k 900, top-p 0.96, "
                  f"median of {args.repeats} interleaved runs after a warm-up)\n\n" + markdown_table(rows, cols))


if __name__ == "__main__":
    main()
