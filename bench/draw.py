"""Token drawing, 'release' vs 'fast', side by side on the same model, batch and depth plan.

'release' repeats the official code's top-p (a full sort per token) and multinomial draw (V random
numbers per token); 'fast' draws from the whole distribution by inverse CDF (one uniform number per
token) and redraws the tokens that fall outside the top-p set, so it never sorts. Reports s/image
for both (interleaved runs), the speed-up, and for the default model the evaluator's accuracy and
FID-style distance of each (same seeds). Writes
bench/results/<out-name>.{json,md,png}.

Usage: python -m bench.draw [--models default,d16] [--batches 1,16,64] [--per-class 100] [--threads 1]
GPU:   python -m bench.draw --device cuda --models d16,d30 --layout-batches 1,8,64 --precision bf16 --per-class 0
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import markdown_table, parse_args, results_dir, sync, write_results
from bench.plot import line_chart
from bench.quality import HeldoutScore
from bench.sampler import build
from var_engine.config import DRAW_METHODS
from var_engine.pipeline import PRECISIONS
from var_engine.variant import DepthPlan


def plans_for(name: str, pipe) -> dict[str, DepthPlan | None]:
    """The full network, and for the default model depth D/2 after 4 scales and depth 2 after 3."""
    plans: dict[str, DepthPlan | None] = {"full": None}
    if name == "default":
        D, pn = pipe.config.depth, pipe.config.patch_nums
        for depth, switch in ((D // 2, 4), (2, 3)):
            plans[f"d{depth}@{switch}"] = DepthPlan(D, depth, switch, pn)
    return plans


def timed_side_by_side(pipe, labels: torch.Tensor, plan, repeats: int, precision: str = "fp32") -> dict[str, float]:
    """Median seconds per call of each draw method, runs interleaved after one warm-up each."""
    times: dict[str, list[float]] = {d: [] for d in DRAW_METHODS}
    for r in range(repeats + 1):
        for draw in DRAW_METHODS:
            t0 = time.perf_counter()
            pipe.generate(labels, seed=r, cfg=1.5, layer_plan=plan, draw=draw, precision=precision)
            sync(pipe.device)
            if r:
                times[draw].append(time.perf_counter() - t0)
    return {d: statistics.median(t) for d, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,d16")
    p.add_argument("--batches", default="1,16,64", help="comma list for the default model")
    p.add_argument("--layout-batches", default="1", help="comma list for official layouts (d16, d30, ...)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per-class", type=int, default=100, help="images per class for quality (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-name", default="draw")
    args = parse_args(p, argv)
    rows = []
    for name in args.models.split(","):
        pipe = build(name, args.device)
        quality = name == "default" and args.per_class > 0 and "evaluator" in pipe.components
        score = HeldoutScore(pipe.components["evaluator"]) if quality else None
        batch_list = [int(b) for b in (args.batches if name == "default" else args.layout_batches).split(",")]
        for plan_name, plan in plans_for(name, pipe).items():
            for batch in batch_list:
                labels = torch.arange(batch) % pipe.config.num_classes
                t = timed_side_by_side(pipe, labels, plan, args.repeats, args.precision)
                row = {"model": name, "plan": plan_name, "batch": batch,
                       "release_s_per_image": t["release"] / batch, "fast_s_per_image": t["fast"] / batch,
                       "speedup": t["release"] / t["fast"]}
                rows.append(row)
                print(row, flush=True)
            if quality:
                for draw in DRAW_METHODS:
                    rows[-1][f"{draw}_accuracy"], rows[-1][f"{draw}_fid"] = score.of_generated(
                        pipe, args.per_class, plan, draw)
                print(rows[-1], flush=True)
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(f"{r['model']} {r['plan']}", []).append((r["batch"], r["speedup"]))
    line_chart(results_dir() / f"{args.out_name}.png", "fast draw: speed-up over the release draw (cfg 1.5)",
               "batch", "speed-up", series)
    cols = ["model", "plan", "batch", "release_s_per_image", "fast_s_per_image", "speedup", "release_accuracy",
            "fast_accuracy", "release_fid", "fast_fid"]
    write_results(args.out_name, {"rows": rows, "repeats": args.repeats, "per_class": args.per_class},
                  f"Token drawing, release vs fast (cfg 1.5, top-k 900, top-p 0.96, eager, {args.device}, {args.precision}, "
                  f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved runs; quality at the "
                  f"largest batch's row, {args.per_class} images per class, same seeds)\n\n" + markdown_table(rows, cols))


if __name__ == "__main__":
    main()
