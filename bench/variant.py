"""VARiant depth plans: KV bytes (analytic and measured), peak memory of the call (each measured in a
fresh process, see bench.peak), s/image, and for the default model the evaluator's accuracy and
FID-style distance, per subnet depth and switch scale.
Writes bench/results/variant.{json,md} and variant_<model>.png.

Usage: python -m bench.variant [--models default,d16] [--per-class 50] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.floor import transformer_step_costs
from bench.peak import CallSpec, peak_call_bytes
from bench.plot import line_chart
from bench.quality import HeldoutScore
from bench.sampler import build
from var_engine.config import DRAW_METHODS
from var_engine.sampling import RUNNERS
from var_engine.variant import DepthPlan


def depths_for(D: int) -> list[int]:
    return sorted({D, max(1, D // 2), max(1, D // 4), 2}, reverse=True)


def _once(pipe, labels, plan, seed: int, draw: str = "release") -> tuple[float, float, int]:
    t0 = time.perf_counter()
    out = pipe.generate(labels, seed=seed, cfg=1.5, layer_plan=plan, draw=draw)
    return time.perf_counter() - t0, out.stats.transformer_seconds, out.stats.kv_bytes


def timed_against_full(pipe, labels, plan, repeats: int, draw: str = "release"
                       ) -> tuple[tuple[float, float, int], tuple[float, float], tuple[float, float]]:
    """Median (seconds, transformer seconds, KV bytes) of `plan`, its speed-ups over the full network
    (end to end, token generation alone) from runs interleaved with the full network's (drifts of a
    shared machine hit both alike), and the full network's median (seconds, transformer seconds)."""
    _once(pipe, labels, plan, 0, draw)  # warm-up (and compilation for the compile runner)
    runs, full = [], []
    for r in range(repeats):
        full.append(_once(pipe, labels, None, r, draw))
        runs.append(_once(pipe, labels, plan, r, draw))
    median = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2])
    full_median = (statistics.median(f[0] for f in full), statistics.median(f[1] for f in full))
    return median, (full_median[0] / median[0], full_median[1] / median[1]), full_median


def transformer_flops(cfg, plan: DepthPlan | None) -> float:
    """FLOPs of one image's scale steps (blocks with attention, word embedding, head) with the layers
    the plan runs at each scale."""
    return sum(transformer_step_costs(cfg, 1, si, None if plan is None or plan.layers(si) is None
                                      else len(plan.layers(si)))[0] for si in range(cfg.num_scales))


def speedup_at_flop_ratio(full_seconds: float, full_token_seconds: float, flop_fraction: float) -> float:
    """The end-to-end speed-up a plan would reach if all of token generation scaled with its transformer
    FLOPs (flop_fraction of the full network's) and the rest (the decoder) stayed as it is."""
    return full_seconds / (full_seconds - full_token_seconds + full_token_seconds * flop_fraction)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,d16")
    p.add_argument("--switch-scales", default="", help="comma list (default: the model's own, and for the "
                                                        "default model 3,4,5)")
    p.add_argument("--depths", default="", help="comma list of subnet depths (default: D, D/2, D/4 and 2)")
    p.add_argument("--batch", type=int, default=16, help="batch for timing the default model (d16: 1)")
    p.add_argument("--per-class", type=int, default=50, help="images per class for quality (default model; 0: skip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runner", default="eager", choices=RUNNERS,
                   help="how scale steps execute (the same for the full network and the subnets)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--draw", default="release", choices=DRAW_METHODS, help="token draw method")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurements (a process each)")
    p.add_argument("--out-name", default="variant")
    args = parse_args(p, argv)
    rows = []
    for name in args.models.split(","):
        pipe = build(name, args.device).with_runner(args.runner)
        D, K = pipe.config.depth, pipe.config.transformer.num_scales
        switches = ([int(s) for s in args.switch_scales.split(",") if s] or
                    ([3, 4, 5] if name == "default" else [pipe.default_switch_scale()]))
        batch = args.batch if name == "default" else 1
        labels = torch.arange(batch) % pipe.config.num_classes
        quality = name == "default" and "evaluator" in pipe.components and args.per_class > 0
        score = HeldoutScore(pipe.components["evaluator"]) if quality else None
        full_kv = pipe.kv_bytes_per_image(1.5)
        full_flops = transformer_flops(pipe.config.transformer, None)
        depths = sorted({int(d) for d in args.depths.split(",") if d} | {D}, reverse=True) if args.depths else depths_for(D)
        for depth in depths:
            for switch in (switches if depth < D else [K]):
                plan = None if depth == D else DepthPlan(D, depth, switch, pipe.config.patch_nums)
                (total, transformer, measured), (speedup, transformer_speedup), (full_s, full_tokens_s) = \
                    timed_against_full(pipe, labels, plan, args.repeats, args.draw)
                flop_fraction = transformer_flops(pipe.config.transformer, plan) / full_flops
                analytic = batch * pipe.kv_bytes_per_image(1.5, plan)
                row = {"model": name, "runner": args.runner, "draw": args.draw, "depth": depth,
                       "switch_scale": switch, "batch": batch,
                       "kv_bytes_per_image": analytic // batch, "kv_measured_vs_analytic": measured / analytic,
                       "kv_saving_vs_full": 1 - analytic / (batch * full_kv), "s_per_image": total / batch,
                       "transformer_s_per_image": transformer / batch, "speedup_vs_full": speedup,
                       "transformer_speedup_vs_full": transformer_speedup, "flop_fraction": flop_fraction,
                       "speedup_at_flop_ratio": speedup_at_flop_ratio(full_s, full_tokens_s, flop_fraction)}
                if not args.no_peak:
                    peak = peak_call_bytes(CallSpec(name, batch, depth if plan else None, switch if plan else None,
                                                    1.5, draw=args.draw, device=args.device,
                                                    threads=torch.get_num_threads()))
                    row["peak_bytes_per_image"] = None if peak is None else peak / batch
                if quality:
                    row["accuracy"], row["fid_evaluator"] = score.of_generated(pipe, args.per_class, plan, args.draw)
                rows.append(row)
                print(row, flush=True)
        mine = [r for r in rows if r["model"] == name]
        series = {f"switch {s}{part}": [(r["depth"], r[key]) for r in mine if r["switch_scale"] in (s, K)]
                  for s in switches for part, key in (("", "speedup_vs_full"),
                                                      (", tokens only", "transformer_speedup_vs_full"))}
        line_chart(results_dir() / f"{args.out_name}_{name}_speed.png", f"{name}: speed-up vs full depth (cfg 1.5, batch {batch})",
                   "subnet depth", "speed-up", series)
        series = {f"{what}, switch {s}": [(r["depth"], r[key] / 2**20) for r in mine if r["switch_scale"] in (s, K)]
                  for what, key in (("KV", "kv_bytes_per_image"), ("peak", "peak_bytes_per_image"))
                  if mine[0].get(key) is not None for s in switches}
        line_chart(results_dir() / f"{args.out_name}_{name}_kv.png", f"{name}: KV cache and peak memory per image",
                   "subnet depth", "MiB", series)
        if quality:
            series = {f"switch {s}": [(r["depth"], r["fid_evaluator"]) for r in mine if r["switch_scale"] in (s, K)]
                      for s in switches}
            line_chart(results_dir() / f"{args.out_name}_{name}_fid.png", f"{name}: FID-style distance (evaluator features)",
                       "subnet depth", "FID-style", series)
    cols = ["model", "runner", "draw", "depth", "switch_scale", "batch", "kv_bytes_per_image", "kv_saving_vs_full",
            "kv_measured_vs_analytic", "peak_bytes_per_image", "s_per_image", "transformer_s_per_image",
            "speedup_vs_full", "transformer_speedup_vs_full", "flop_fraction", "speedup_at_flop_ratio", "accuracy",
            "fid_evaluator"]
    write_results(args.out_name, {"rows": rows, "per_class": args.per_class, "repeats": args.repeats,
                                  "batch": args.batch},
                  f"VARiant depth plans (cfg 1.5, runner {args.runner}, draw {args.draw}, {torch.get_num_threads()} "
                  "thread(s); d16 has random weights, so only memory and speed; peak_bytes_per_image: peak memory of "
                  "the call beyond the weights (KV, activations, decoder), measured in a fresh process per plan; "
                  "speed-ups from runs interleaved with the full network's, end to end and for token generation alone (transformer and "
                  "sampling, without the decoder); speedup_at_flop_ratio: the end-to-end speed-up if all of token "
                  "generation scaled with the plan's transformer FLOPs (flop_fraction of the full network's) "
                  "and the decoder stayed as measured)\n\n"
                  + markdown_table(rows, cols))


if __name__ == "__main__":
    main()
