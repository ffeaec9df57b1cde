"""Supernet schedules at equal training steps: fixed subnet-step ratios versus the progressive
schedule, measured for the full network and each subnet (evaluator accuracy and FID-style distance).
Trains small transformers on the shipped tokenizer; writes bench/results/supernet_frontier.{json,md}
and supernet_frontier.png (x: full-network distance, y: subnet distance; lower-left is better).

The defaults repeat the shipped model's recipe (depth 8, width 128, 3,000 steps of 256). On an H200,
1,000 steps of 256 took about 50 s a schedule (training and measuring); on 2 CPU cores it takes many
hours (a twentieth of the samples, width 64 and 600 steps of 64, took 11 minutes a schedule there and
left the models untrained: FID-style ~110, chance accuracy). Results are written after every schedule; a rerun with the same settings
skips the schedules already measured (--fresh starts over), so an interrupted run resumes.

A schedule name may end in "+distill" or "+distill:W": the same schedule with in-place distillation
(subnet steps learn the full network's distribution with weight W, default 1).

A progressive schedule may carry its own stage ratios and boundaries, as in `var-engine train
--schedule`: "progressive:0.2,0.7,0.1" anneals back toward full-depth steps in its last stage.

Usage: python -m bench.supernet_frontier --device cuda [--schedules progressive,fixed:0.5,fixed:0.2,fixed:0.8,progressive+distill]
       [--steps 3000] [--batch-size 256] [--depth 8] [--width 128] [--subnets 4,2] [--switch-scale 4]
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.plot import line_chart
from bench.quality import HeldoutScore
from var_engine import ModelConfig, Pipeline, TransformerConfig
from var_engine.data import DigitsDataset
from var_engine.distillation import Distillation
from var_engine.train_transformer import train_transformer
from var_engine.training import TrainConfig
from var_engine.variant import DepthPlan, SupernetPlan, SupernetSchedule


def split_schedules(text: str) -> list[str]:
    """'progressive,progressive:0.2,0.7,0.1,fixed:0.5' -> one name per schedule (a comma starts a new
    schedule only where 'progressive' or 'fixed' follows, so stage ratios may contain commas)."""
    return [name for name in re.split(r",(?=progressive|fixed)", text) if name]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--schedules", default="progressive,fixed:0.5,fixed:0.2,fixed:0.8,progressive+distill")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--augment-copies", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--subnets", default="4,2", help="subnet depths trained and measured")
    p.add_argument("--switch-scale", type=int, default=4)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--out-name", default="supernet_frontier")
    p.add_argument("--fresh", action="store_true", help="ignore schedules measured by an earlier run")
    args = parse_args(p, argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("schedules", "fresh", "threads")}
    base = Pipeline.from_pretrained(device=args.device)
    score = HeldoutScore(base.components["evaluator"])
    t = base.config.tokenizer
    var_cfg = TransformerConfig(depth=args.depth, embed_dim=args.width, num_heads=max(1, args.width // 32),
                                num_classes=10, vocab_size=t.vocab_size, z_channels=t.z_channels,
                                patch_nums=t.patch_nums)
    model_cfg = ModelConfig(t, var_cfg)
    rows = [] if args.fresh else previous_rows(args.out_name, settings)
    for name in split_schedules(args.schedules):
        if any(r["schedule"] == name for r in rows):
            print(f"{name}: measured by an earlier run with these settings, skipped", flush=True)
            continue
        subnets = [int(d) for d in args.subnets.split(",")]
        schedule, distill = parse_arm(name)
        plan = SupernetPlan(args.depth, t.patch_nums, tuple(subnets), (args.switch_scale,), args.steps, schedule)
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(out_dir=out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              warmup_steps=max(1, args.steps // 10), ema_decay=0.998, eval_every=10**9,
                              ckpt_every=10**9, log_every=50, device=args.device)
            torch.manual_seed(0)
            model = train_transformer(model_cfg, base.tokenizer, cfg, DigitsDataset("train", recolour=True),
                                      plan=plan, distill=distill, augment_copies=args.augment_copies,
                                      progress=False)
        pipe = Pipeline(base.tokenizer, model, model_cfg)
        row = {"schedule": name, "steps": args.steps,
               "subnet_steps": sum(plan.plan_at(s) is not None for s in range(args.steps))}
        plans = [("full", None)] + [(f"d{d}", DepthPlan(args.depth, d, args.switch_scale, t.patch_nums))
                                    for d in subnets]
        for label, lp in plans:
            row[f"{label}_accuracy"], row[f"{label}_fid"] = score.of_generated(pipe, args.per_class, lp)
        rows.append(row)
        print(row, flush=True)
        write_frontier(rows, args, settings)


def parse_arm(name: str) -> tuple[SupernetSchedule, Distillation | None]:
    """'SCHEDULE', 'SCHEDULE+distill' or 'SCHEDULE+distill:W' -> (schedule, distillation or None)."""
    schedule, plus, distill = name.partition("+")
    if not plus:
        return SupernetSchedule.parse(schedule), None
    kind, _, weight = distill.partition(":")
    if kind != "distill":
        raise SystemExit(f"unknown schedule suffix in {name!r} (expected +distill or +distill:W)")
    try:
        return SupernetSchedule.parse(schedule), Distillation(float(weight) if weight else 1.0)
    except ValueError as e:
        raise SystemExit(f"bad distillation weight in {name!r}: {e}") from e


def previous_rows(out_name: str, settings: dict) -> list[dict]:
    """Rows of an earlier run with the same settings (empty if none)."""
    path = results_dir() / f"{out_name}.json"
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return earlier["rows"] if earlier.get("settings") == settings else []


def plot_frontier(rows: list[dict], subnets: list[int], path) -> None:
    """Full-network vs subnet FID-style, one colour per subnet depth, each dot labelled by its schedule."""
    line_chart(path, "full vs subnet FID-style at equal steps", "full-network FID-style", "subnet FID-style",
               {f"depth {d}": [(r["full_fid"], r[f"d{d}_fid"], r["schedule"]) for r in rows] for d in subnets},
               connect=False)


def write_frontier(rows: list[dict], args, settings: dict) -> None:
    plot_frontier(rows, [int(d) for d in args.subnets.split(",")], results_dir() / f"{args.out_name}.png")
    write_results(args.out_name, {"rows": rows, "settings": settings},
                  f"Supernet schedules at equal steps ({args.steps} steps of {args.batch_size}, depth {args.depth}, "
                  f"width {args.width}, subnets {args.subnets} after {args.switch_scale} scales, cfg 1.5, "
                  f"{args.per_class} per class)\n\n" + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
