"""Test-time search against Best-of-N and plain sampling on the default model, at equal compute.

Every method sees the same requests (class c; generate calls of `--chunk` requests seeded 1000 + the
first request's index) and returns one image per request. Searches score candidates with a shipped
scorer: 'evaluator' (decoded partial images, the evaluator's log p(label)), 'latent' (the latent
reward on f_hat, no decode) or 'auto' (latent during the search, the evaluator's final pick). The reported accuracy, mean log p(label) and FID-style distance come from
an independent judge (another classifier, other seed and width, trained here on first use and cached
in bench/results/tmp/judge), so a search never grades itself. Compute is transformer FLOPs in plain
full-depth samples; wall-clock includes decodes and scoring.

Usage: python -m bench.search [--per-class 20] [--budgets 2,4] [--scorers evaluator,latent,auto] [--cfg 0]
                              [--depth 2 --switch-scale 1] [--methods tts,best_of_n] [--finish-scales 5,6]

--finish-scales adds, per scale F, plain sampling and the searches on a plan that returns to full depth at F
(the subnet explores, the survivors' earlier scales are re-run at full depth and they finish at full depth).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.plot import line_chart
from var_engine import Pipeline
from var_engine.data import DigitsDataset, build_dataset
from var_engine.errors import ConfigError
from var_engine.search.schedule import LEVELS
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


@dataclass
class Judge:
    """The independent classifier's verdicts on a method's images: accuracy, log p, FID-style, diversity."""

    referee: Evaluator
    held01: torch.Tensor  # held-out real digits in [0, 1]

    @torch.no_grad()
    def score(self, res: dict, labels: torch.Tensor) -> dict:
        """Add `correct`, `judge_logp`, `fid` and `diversity` to a `run_method` result."""
        images = res["images"]
        logp = self.referee(images).log_softmax(1)
        res["correct"] = (logp.argmax(1) == labels).float()
        res["judge_logp"] = logp.gather(1, labels.view(-1, 1)).squeeze(1)
        res["fid"] = frechet_distance(FeatureExtractor(self.referee), batches(self.held01), batches(images))
        res["diversity"] = diversity(self.referee.features(images), labels)
        return res


def run_method(pipe: Pipeline, labels: torch.Tensor, chunk: int, **kwargs) -> dict:
    """One image per request; totals of compute, wall-clock, decodes and search overhead."""
    images, rewards, stats = [], [], dict(compute=0.0, seconds=0.0, decodes=0, overhead=0.0)
    evaluator = pipe.components["evaluator"]
    for i in range(0, len(labels), chunk):
        t = time.perf_counter()
        out = pipe.generate(labels[i:i + chunk], seed=1000 + i, **kwargs)
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


class RecordRewards:
    """A scale hook that scores every partial result with both shipped scorers (no selection)."""

    def __init__(self, pipe: Pipeline):
        self.image_reward, _ = pipe.search_scorer("evaluator")
        self.latent_reward, _ = pipe.search_scorer("latent")
        self.scores: dict[str, list[torch.Tensor]] = {"evaluator": [], "latent": []}

    def after_scale(self, step):
        pop = step.population
        self.scores["evaluator"].append(self.image_reward(step.decode(), pop.labels).cpu())
        self.scores["latent"].append(self.latent_reward(pop.f_hat, pop.labels, step.scale_index).cpu())
        return None


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[positive.bool()], scores[~positive.bool()]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def consistency(pipe: Pipeline, referee: Evaluator, labels: torch.Tensor, chunk: int, **kwargs) -> list[dict]:
    """Per scale: how well each scorer's partial reward predicts the final reward and the judge's verdict."""
    recs, correct = {"evaluator": [], "latent": []}, []
    for i in range(0, len(labels), chunk):
        hook = RecordRewards(pipe)
        out = pipe.generate(labels[i:i + chunk], seed=1000 + i, hooks=[hook], **kwargs)
        for name in recs:
            recs[name].append(torch.stack(hook.scores[name], 1))  # (b, K)
        with torch.no_grad():
            correct.append((referee(out.images).argmax(1) == out.labels.cpu()).float())
    correct_t = torch.cat(correct)
    rows = []
    for k in range(pipe.config.transformer.num_scales):
        row = {"scale": k}
        for name, parts in recs.items():
            r = torch.cat(parts)
            row[f"{name}_spearman_to_final"] = spearman(r[:, k], r[:, -1])
            row[f"{name}_auc_judge_correct"] = auc(r[:, k], correct_t)
        rows.append(row)
    return rows


def templates(pipe: Pipeline, judge_: Judge, labels, args) -> None:
    """TTS (scorer `auto`) at each budget with each schedule template (relative population after each selection)."""
    from var_engine.search import TTSConfig
    from var_engine.search.compute import layers_per_scale
    from var_engine.search.schedule import CLUSTER_AT, RESAMPLE_AT, scales_at, schedule_for_budget

    t = pipe.config.transformer
    plan = pipe.depth_plan(args.depth, args.switch_scale)
    K = t.num_scales
    cluster = scales_at(CLUSTER_AT, K)
    selection = (*cluster, *(k for k in scales_at(RESAMPLE_AT, K) if k not in cluster))
    rows = []
    for b in (float(x) for x in args.budgets.split(",")):
        for text in args.templates.split(";"):
            levels = tuple(int(v) for v in text.split(","))
            schedule = schedule_for_budget(b, t, selection, layers_per_scale(t, plan), levels)
            res = judge_.score(run_method(pipe, labels, args.chunk, cfg=args.cfg, depth=args.depth,
                                          switch_scale=args.switch_scale, reward="auto",
                                          search=TTSConfig(batches=schedule.batches)), labels)
            rows.append({"budget": b, "template": " -> ".join(map(str, levels)), "batches": list(schedule.batches),
                         "compute": res["compute"] / len(labels), "judge_accuracy": float(res["correct"].mean()),
                         "fid": res["fid"], "ms_per_image": 1e3 * res["seconds"] / len(labels)})
            print(rows[-1], flush=True)
    table = (f"TTS schedule templates ({len(labels)} requests, depth {args.depth} after scale {args.switch_scale}, "
             f"cfg {args.cfg}, scorer auto)\n\n"
             + markdown_table(rows, ["budget", "template", "batches", "compute", "judge_accuracy", "fid",
                                     "ms_per_image"]))
    write_results(args.out + "_templates", {"args": vars(args), "rows": rows}, table)


def ablation(pipe: Pipeline, judge_: Judge, labels, args) -> None:
    """Consistency of partial rewards per scale, then TTS variants at one budget (latent scorer)."""
    from var_engine.search import TTSConfig

    sub = dict(depth=args.depth, switch_scale=args.switch_scale, cfg=args.cfg)
    cons = consistency(pipe, judge_.referee, labels, args.chunk, **sub)
    b = float(args.budgets.split(",")[0])
    K = pipe.config.transformer.num_scales
    variants = {"both (default)": {}, "clustering only": {"resample_scales": ()},
                "resampling only": {"cluster_scales": ()}, "final pick only": {"cluster_scales": (),
                                                                               "resample_scales": ()}}
    for kind in ("diff", "sum", "max"):
        variants[f"potential {kind}"] = {"potential": kind}
    for scales in ((K - 4, K - 3), (K - 3,), (K - 2,)):
        variants[f"resample at {','.join(map(str, scales))}"] = {"resample_scales": scales}
    searches = {name: TTSConfig(budget=b, **over) for name, over in variants.items()}
    searches["best-of-N (same budget)"] = "best_of_n"
    rows = []
    for name, search in searches.items():
        res = judge_.score(run_method(pipe, labels, args.chunk, search=search, budget=b, reward="latent", **sub),
                           labels)
        acc = float(res["correct"].mean())
        rows.append({"variant": name, "compute": res["compute"] / len(labels), "judge_accuracy": acc,
                     "fid": res["fid"], "diversity": res["diversity"],
                     "ms_per_image": 1e3 * res["seconds"] / len(labels)})
        print(f"{name}: {acc:.3f}", flush=True)
    ccols = ["scale", "evaluator_spearman_to_final", "evaluator_auc_judge_correct", "latent_spearman_to_final",
             "latent_auc_judge_correct"]
    table = (f"Partial rewards per scale ({len(labels)} plain samples, depth {args.depth} after scale "
             f"{args.switch_scale}, cfg {args.cfg}): rank correlation with the final reward, and AUC for the "
             "judge's verdict on the final image\n\n" + markdown_table(cons, ccols)
             + f"\n\nTTS variants at budget {b:g}, latent scorer ({len(labels)} requests)\n\n"
             + markdown_table(rows, ["variant", "compute", "ms_per_image", "judge_accuracy", "fid", "diversity"]))
    write_results(args.out + "_ablation", {"args": vars(args), "consistency": cons, "rows": rows}, table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--per-class", type=int, default=20, help="requests per class (seeds 1000, 1001, ...)")
    p.add_argument("--budgets", default="2,4", help="compute budgets in plain full-depth samples")
    p.add_argument("--cfg", type=float, default=0.0)
    p.add_argument("--depth", type=int, default=2, help="subnet depth the searches run on")
    p.add_argument("--switch-scale", type=int, default=1)
    p.add_argument("--chunk", type=int, default=20, help="requests per generate call")
    p.add_argument("--scorers", default="evaluator",
                   help="search scorers (comma-separated): evaluator, latent, auto (latent during the search, the "
                        "evaluator for the final pick)")
    p.add_argument("--methods", default="tts,best_of_n", help="searches to run: tts, best_of_n")
    p.add_argument("--finish-scales", default="", help="also run each method finishing at full depth from these "
                                                        "scales (comma-separated)")
    p.add_argument("--judge-steps", type=int, default=800)
    p.add_argument("--out", default="search")
    p.add_argument("--templates", default="",
                   help="instead: TTS at each budget with these schedule templates (';'-separated, e.g. "
                        "'8,6,4,2,1;8,8,6,4,4'), written to <out>_templates.json")
    p.add_argument("--ablation", action="store_true",
                   help="instead: partial-reward consistency per scale and TTS variants at the first budget")
    args = parse_args(p, argv)

    pipe = Pipeline.from_pretrained(args.checkpoint)
    referee = judge(args.judge_steps)
    held = DigitsDataset("heldout").tensors()
    held01, held_labels = held[0].add(1).mul(0.5), held[1]
    judge_acc = float((referee(held01).argmax(1) == held_labels).float().mean())
    judge_ = Judge(referee, held01)
    K = pipe.config.num_classes
    labels = torch.arange(K).repeat(args.per_class)  # request r: class r % K
    if args.ablation:
        return ablation(pipe, judge_, labels, args)
    if args.templates:
        return templates(pipe, judge_, labels, args)
    sub = dict(depth=args.depth, switch_scale=args.switch_scale)
    common = dict(cfg=args.cfg)
    budgets = [float(b) for b in args.budgets.split(",")]
    scorers = [x.strip() for x in args.scorers.split(",") if x.strip()]
    wanted = [x.strip() for x in args.methods.split(",") if x.strip()]
    methods: list[tuple[str, dict]] = [("plain (full depth)", {})]
    finishes = [int(f) for f in args.finish_scales.split(",") if f.strip()]
    for finish in (None, *finishes):
        plan = dict(sub, finish_scale=finish) if finish is not None else sub
        tag = f" finish@{finish}" if finish is not None else ""
        methods.append((f"plain (d{args.depth}@{args.switch_scale}{tag})", plan))
        for scorer in scorers:
            for b in budgets:
                for mode, budget in (("best_of_n", b), ("tts", b), ("best_of_n", 2 * b)):
                    if mode in wanted:
                        name = f"{'TTS' if mode == 'tts' else 'best-of-N'} B={budget:g}{tag} [{scorer}]"
                        methods.append((name, dict(search=mode, budget=budget, reward=scorer, **plan)))
    runs = {}
    for name, kwargs in methods:
        if name in runs:
            continue
        try:
            res = judge_.score(run_method(pipe, labels, args.chunk, **common, **kwargs), labels)
        except ConfigError as e:  # e.g. a budget below one sample of a finishing plan
            print(f"{name}: skipped ({e})", flush=True)
            continue
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
                     "fid": res["fid"], "evaluator_logp": float(res["rewards"].mean()),
                     "diversity": res["diversity"]})
    comparisons = []
    for scorer, b, tag in ((s_, b_, t_) for s_ in scorers for b_ in budgets
                           for t_ in ("", *(f" finish@{f}" for f in finishes))):
        name = f"TTS B={b:g}{tag} [{scorer}]"
        if name not in runs:
            continue
        tts = runs[name]
        others = [f"best-of-N B={b:g}{tag} [{scorer}]", f"best-of-N B={2 * b:g}{tag} [{scorer}]",
                  "plain (full depth)"]
        if tag:
            others.append(f"TTS B={b:g} [{scorer}]")
        for other_name in (o for o in others if o in runs):
            other = runs[other_name]
            diff = tts["correct"] - other["correct"]
            lo, hi = bootstrap_ci(diff)
            comparisons.append({"tts": name, "vs": other_name, "accuracy_diff": float(diff.mean()),
                                "ci95_low": lo, "ci95_high": hi, "fid_diff": tts["fid"] - other["fid"],
                                "wall_ratio": tts["seconds"] / other["seconds"]})
    cols = ["method", "compute", "ms_per_image", "decodes_per_image", "overhead_share", "judge_accuracy",
            "judge_logp", "fid", "evaluator_logp", "diversity"]
    table = (f"Search on the default model: {n} requests ({args.per_class} per class), cfg {args.cfg}, "
             f"searches on depth {args.depth} after scale {args.switch_scale}; judge held-out accuracy "
             f"{judge_acc:.3f}\n\n" + markdown_table(rows, cols) + "\n\nTTS minus the other method, paired by "
             "request (accuracy difference with a 95% bootstrap interval):\n\n"
             + markdown_table(comparisons, ["tts", "vs", "accuracy_diff", "ci95_low", "ci95_high", "fid_diff",
                                            "wall_ratio"]))
    payload = {"args": vars(args), "schedule_levels": list(LEVELS), "judge_heldout_accuracy": judge_acc,
               "requests": n, "rows": rows,
               "comparisons": comparisons}
    write_results(args.out, payload, table)
    series: dict[str, list] = {}
    for r in rows:
        if r["method"].startswith("plain"):
            key, label = "plain", r["method"].split(" ", 1)[1]
        else:
            kind, rest = r["method"].split(" B=")
            budget, scorer = rest.split(" ", 1)
            key, label = f"{kind} {scorer}", f"B={budget}"
        series.setdefault(key, []).append((r["ms_per_image"], r["judge_accuracy"], label))
    for key in series:
        series[key].sort()
    line_chart(Path(results_dir()) / f"{args.out}.png", "Judge accuracy vs wall-clock per image",
               "ms per image (2 CPU cores)", "judge accuracy", series)


if __name__ == "__main__":
    main()
