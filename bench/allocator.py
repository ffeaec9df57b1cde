"""Generation speed with and without `keep_freed_cpu_memory` (glibc keeps freed blocks for reuse).

The setting is process-wide and cannot be undone, so every measurement runs in its own process:
pairs of child processes, one per setting, in alternating order. Each child loads the model, runs
one warm-up call per plan, then `--repeats` timed calls, and reports the median s/image.
Prints a table, writes bench/results/<out-name>.{json,md}.

Usage: python -m bench.allocator [--models default] [--batch 64] [--plans full,2@3] [--pairs 5]
       python -m bench.allocator --models d16 --batch 1 --plans full --pairs 3 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.common import markdown_table, parse_args, run_module_json, write_results

SETTINGS = ("default", "keep")


def parse_plan(text: str) -> tuple[int | None, int | None]:
    """'full' -> (None, None); 'D@S' -> subnet depth D after S full-depth scales."""
    if text == "full":
        return None, None
    depth, _, switch = text.partition("@")
    if not (depth.isdigit() and switch.isdigit()):
        raise SystemExit(f"plan {text!r}: use 'full' or DEPTH@SWITCH, e.g. 2@3")
    return int(depth), int(switch)


def child(args: argparse.Namespace) -> None:
    """One process: apply the setting, time every plan, print one JSON line."""
    from bench.sampler import build
    from var_engine.cpu_memory import keep_freed_cpu_memory

    applied = keep_freed_cpu_memory() if args.child == "keep" else False
    pipe = build(args.model)
    labels = torch.arange(args.batch) % pipe.config.num_classes
    result = {"applied": applied, "s_per_image": {}}
    with torch.no_grad():
        for plan in args.plans.split(","):
            depth, switch = parse_plan(plan)
            kw = dict(cfg=1.5, seed=0, depth=depth, switch_scale=switch, draw=args.draw)
            pipe.generate(labels, **kw)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pipe.generate(labels, **kw)
                times.append(time.perf_counter() - t0)
            result["s_per_image"][plan] = statistics.median(times) / args.batch
    print(json.dumps(result))


def run_child(args: argparse.Namespace, model: str, setting: str) -> dict:
    return run_module_json("bench.allocator", [
        "--child", setting, "--model", model, "--batch", str(args.batch), "--plans", args.plans,
        "--repeats", str(args.repeats), "--draw", args.draw, "--threads", str(args.threads)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--plans", default="full,2@3", help="comma list of 'full' or DEPTH@SWITCH")
    p.add_argument("--pairs", type=int, default=5, help="process pairs per model (alternating order)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per plan in each process")
    p.add_argument("--draw", default="release")
    p.add_argument("--out-name", default="allocator")
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = parse_args(p, argv)
    if args.child:
        return child(args)
    for plan in args.plans.split(","):
        parse_plan(plan)
    rows, runs = [], []
    for model in args.models.split(","):
        samples = {s: [] for s in SETTINGS}
        for pair in range(args.pairs):
            for setting in (SETTINGS if pair % 2 == 0 else SETTINGS[::-1]):
                out = run_child(args, model, setting)
                samples[setting].append(out["s_per_image"])
                runs.append({"model": model, "pair": pair, "setting": setting, **out})
                print(runs[-1], flush=True)
        for plan in args.plans.split(","):
            med = {s: statistics.median(r[plan] for r in samples[s]) for s in SETTINGS}
            ratios = [d[plan] / k[plan] for d, k in zip(samples["default"], samples["keep"])]
            rows.append({"model": model, "batch": args.batch, "plan": plan, "default_s_per_image": med["default"],
                         "keep_s_per_image": med["keep"], "speedup": med["default"] / med["keep"],
                         "pair_speedup_min": min(ratios), "pair_speedup_max": max(ratios),
                         "applied": all(r["applied"] for r in runs if r["setting"] == "keep")})
    cols = ["model", "batch", "plan", "default_s_per_image", "keep_s_per_image", "speedup", "pair_speedup_min",
            "pair_speedup_max", "applied"]
    table = (f"Generation with glibc keeping freed memory ('keep', var_engine.cpu_memory) vs its default, one "
             f"process per measurement, {args.pairs} alternating pairs, median of {args.repeats} calls per "
             f"process after a warm-up, draw {args.draw}\n\n" + markdown_table(rows, cols))
    write_results(args.out_name, {"rows": rows, "runs": runs}, table)


if __name__ == "__main__":
    main()
