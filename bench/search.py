"""Test-time search against Best-of-N and plain sampling on the default model, at equal compute.

Every method sees the same requests (class c, seed s) and returns one image per request. The search
is scored by the shipped evaluator (its reward); the reported accuracy, mean log p(label) and
FID-style distance come from an independent judge (another classifier, other seed and width,
trained here on first use and cached in bench/results/tmp/judge), so the search never grades itself.
Compute is transformer FLOPs in plain full-depth samples; wall-clock includes decodes and scoring.

Usage: python -m bench.search [--per-class 20] [--budgets 2,4] [--cfg 0] [--depth 2 --switch-scale 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.plot import line_chart
from var_engine import Pipeline
from var_engine.data import DigitsDataset, build_dataset
from var_engine.evaluator import Evaluator, EvaluatorConfig, FeatureExtractor, load_evaluator, train_evaluator
from var_engine.metrics import batches, frechet_distance
from var_engine.training import TrainConfig


def judge(steps: int = 800) -> Evaluator:
    """An independent classifier for the metrics (seed 1, width 24), trained once and cached."""
    out = results_dir() / "tmp" / "judge"
    if (out / "evaluator.safetensors").is_file():
        return load_evaluator(out)
    train = build_dataset("digits", "train", 32, recolour=True)
    cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=128, lr=2e-3, ema_decay=0.0, seed=1,
                      eval_every=steps, ckpt_every=steps, log_every=100)
    return train_evaluator(EvaluatorConfig(num_classes=10, image_size=32, width=24), cfg, train, None,
                           progress=False).eval()


def run_method(pipe: Pipeline, labels: torch.Tensor, seeds: list[int], chunk: int, **kwargs) -> dict:
    """One image per request; totals of compute, wall-clock, decodes and search overhead."""
    images, rewards, stats = [], [], dict(compute=0.0, seconds=0.0, decodes=0, overhead=0.0)
    evaluator = pipe.components["evaluator"]
    for i in range(0, len(labels), chunk):
        t = time.perf_counter()
        out = pipe.generate(labels[i:i + chunk], seed=seeds[i:i + chunk], **kwargs)
        stats["seconds"] += time.perf_counter() - t
        stats["compute"] += out.stats.compute
        stats["decodes"] += out.stats.decodes
        stats["overhead"] += out.stats.search_overhead_seconds
        images.append(out.images)
        rewards.append(evaluator.reward(out.images, out.labels))
    return dict(images=torch.cat(images), rewards=torch.cat(rewards), **stats)


def bootstrap_ci(diff: torch.Tensor, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of paired differences (resampling requests)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (rounds, len(diff)), generator=g)
    means = diff.float()[idx].mean(1).sort().values
    return float(means[int(0.025 * rounds)]), float(means[int(0.975 * rounds) - 1])


def diversity(features: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean pairwise feature distance within each class (higher: more varied); None with one image per class."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c]
        if len(f) > 1:
            d = torch.cdist(f, f)
            per_class.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(per_class).mean()) if per_class else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--per-class", type=int, default=20, help="requests per class (seeds 1000, 1001, ...)")
    p.add_argument("--budgets", default="2,4", help="compute budgets in plain full-depth samples")
    p.add_argument("--cfg", type=float, default=0.0)
    p.add_argument("--depth", type=int, default=2, help="subnet depth the searches run on")
    p.add_argument("--switch-scale", type=int, default=1)
    p.add_argument("--chunk", type=int, default=20, help="requests per generate call")
    p.add_argument("--judge-steps", type=int, default=800)
    p.add_argument("--out", default="search")
    args = parse_args(p, argv)

    pipe = Pipeline.from_pretrained(args.checkpoint)
    referee = judge(args.judge_steps)
    held = DigitsDataset("heldout").tensors()
    held01, held_labels = held[0].add(1).mul(0.5), held[1]
    judge_acc = float((referee(held01).argmax(1) == held_labels).float().mean())
    features = FeatureExtractor(referee)
    K = pipe.config.num_classes
    labels = torch.arange(K).repeat(args.per_class)  # request r: class r % K, seed 1000 + r
    seeds = [1000 + r for r in range(len(labels))]
    sub = dict(depth=args.depth, switch_scale=args.switch_scale)
    common = dict(cfg=args.cfg)
    budgets = [float(b) for b in args.budgets.split(",")]
    methods: list[tuple[str, float, dict]] = [("plain (full depth)", 1.0, {}), (f"plain (d{args.depth}@{args.switch_scale})", 1.0, sub)]
    for b in budgets:
        methods += [(f"best-of-N B={b:g}", b, dict(search="best_of_n", budget=b, **sub)),
                    (f"TTS B={b:g}", b, dict(search="tts", budget=b, **sub)),
                    (f"best-of-N B={2 * b:g}", 2 * b, dict(search="best_of_n", budget=2 * b, **sub))]
    seen, runs = set(), {}
    for name, budget, kwargs in methods:
        if name in seen:
            continue
        seen.add(name)
        res = run_method(pipe, labels, seeds, args.chunk, **common, **kwargs)
        with torch.no_grad():
            logp = referee(res["images"]).log_softmax(1)
            res["correct"] = (logp.argmax(1) == labels).float()
            res["judge_logp"] = logp.gather(1, labels.view(-1, 1)).squeeze(1)
            res["fid"] = frechet_distance(features, batches(held01), batches(res["images"]))
            res["diversity"] = diversity(referee.features(res["images"]), labels)
        runs[name] = res
        print(f"{name}: judge accuracy {res['correct'].mean():.3f}, FID-style {res['fid']:.2f}, "
              f"{res['seconds'] / len(labels) * 1e3:.1f} ms/image", flush=True)

    n = len(labels)
    rows = []
    for name, res in runs.items():
        rows.append({"method": name, "compute": res["compute"] / n, "ms_per_image": 1e3 * res["seconds"] / n,
                     "decodes_per_image": res["decodes"] / n,
                     "overhead_share": res["overhead"] / res["seconds"],
                     "judge_accuracy": float(res["correct"].mean()), "judge_logp": float(res["judge_logp"].mean()),
                     "fid": res["fid"], "search_reward": float(res["rewards"].mean()),
                     "diversity": res["diversity"]})
    comparisons = []
    for b in budgets:
        tts, bon, bon2 = runs[f"TTS B={b:g}"], runs[f"best-of-N B={b:g}"], runs[f"best-of-N B={2 * b:g}"]
        for other_name, other in ((f"best-of-N B={b:g}", bon), (f"best-of-N B={2 * b:g}", bon2),
                                  ("plain (full depth)", runs["plain (full depth)"])):
            diff = tts["correct"] - other["correct"]
            lo, hi = bootstrap_ci(diff)
            comparisons.append({"tts": f"TTS B={b:g}", "vs": other_name, "accuracy_diff": float(diff.mean()),
                                "ci95_low": lo, "ci95_high": hi, "fid_diff": tts["fid"] - other["fid"],
                                "wall_ratio": tts["seconds"] / other["seconds"]})
    cols = ["method", "compute", "ms_per_image", "decodes_per_image", "overhead_share", "judge_accuracy",
            "judge_logp", "fid", "search_reward", "diversity"]
    table = (f"Search on the default model: {n} requests ({args.per_class} per class, seeds 1000+), cfg {args.cfg}, "
             f"searches on depth {args.depth} after scale {args.switch_scale}; judge held-out accuracy "
             f"{judge_acc:.3f}\n\n" + markdown_table(rows, cols) + "\n\nTTS minus the other method, paired by "
             "request (accuracy difference with a 95% bootstrap interval):\n\n"
             + markdown_table(comparisons, ["tts", "vs", "accuracy_diff", "ci95_low", "ci95_high", "fid_diff",
                                            "wall_ratio"]))
    payload = {"args": vars(args), "judge_heldout_accuracy": judge_acc, "requests": n, "rows": rows,
               "comparisons": comparisons}
    write_results(args.out, payload, table)
    series: dict[str, list] = {"plain": [], "best-of-N": [], "TTS": []}
    for r in rows:
        key = "TTS" if r["method"].startswith("TTS") else "best-of-N" if r["method"].startswith("best") else "plain"
        series[key].append((r["ms_per_image"], r["judge_accuracy"], r["method"].split(" ", 1)[-1]))
    for key in series:
        series[key].sort()
    line_chart(Path(results_dir()) / f"{args.out}.png", "Judge accuracy vs wall-clock per image",
               "ms per image (2 CPU cores)", "judge accuracy", series)


if __name__ == "__main__":
    main()
