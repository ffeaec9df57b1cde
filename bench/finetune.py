"""Subject fine-tuning on the default model: the full method against its ablations.

Subjects are the committed pictures in bench/subjects/ (made by bench/subjects/make_subjects.py from data
that ships offline), each bound to a new class id (num_classes + 1). Methods: `full` (class row, FFN and
AdaLN as rank-r updates, coarse-weighted scales, prior distillation), `all_layers` (every tensor trained in
full, no prior term: the plain fine-tune), `uniform` (uniform scale weights), `no_prior` (prior weight 0).

Metrics, all from the shipped evaluator's features or pixels, on `--subject-samples` generations of the
subject (the untuned model's row, "before", generates the subject's digit class, the closest it has):
- fidelity: mean cosine similarity of generated features to the subject pictures' mean feature, and the
  pixel distance (RMSE, 0-255, 2x2-pooled) from each generated image to its nearest subject picture;
- diversity: mean pairwise feature distance among the subject's generations;
- prior preservation: on `--per-class` generations of every existing class with the same seeds with and
  without the adapter, evaluator accuracy (and the independent judge's, bench.search) and the FID-style
  distance to held-out real digits;
- tuning time (this process's wall clock; the machine may be shared) and the adapter's size.

Usage: python -m bench finetune [--steps 150] [--subjects brick7,grass3] [--methods full,all_layers,uniform,no_prior]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import markdown_table, parse_args, results_dir, write_results
from var_engine import Pipeline
from var_engine.checkpoints import save_adapter
from var_engine.data import DigitsDataset, load_subject_images
from var_engine.evaluator import FeatureExtractor
from var_engine.finetune import FinetuneConfig, finetune_subject
from var_engine.images import save_grid
from var_engine.metrics import batches, frechet_distance
from var_engine.training import TrainConfig

SUBJECTS = Path(__file__).resolve().parent / "subjects"
DIGIT = {"brick7": 7, "grass3": 3}  # the digit each subject draws: the untuned model's closest class
METHODS = {
    "full": {},
    "all_layers": {"groups": ("all",), "rank": 0, "prior_weight": 0.0},
    "uniform": {"scale_weights": "uniform"},
    "no_prior": {"prior_weight": 0.0},
}


@torch.no_grad()
def generate(pipe: Pipeline, labels: list[int], seed: int, chunk: int = 100) -> torch.Tensor:
    return torch.cat([pipe.generate(labels[i:i + chunk], seed=seed + i).images for i in range(0, len(labels), chunk)])


def pooled(images01: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images01 * 255, 2)


@torch.no_grad()
def subject_metrics(evaluator, generated: torch.Tensor, subject01: torch.Tensor) -> dict:
    f_gen = F.normalize(evaluator.features(generated), dim=1)
    f_sub = F.normalize(evaluator.features(subject01).mean(0, keepdim=True), dim=1)
    pix = torch.cdist(pooled(generated).flatten(1), pooled(subject01).flatten(1)) / pooled(subject01)[0].numel() ** 0.5
    feats = evaluator.features(generated)
    d = torch.cdist(feats, feats)
    return {"feature_similarity": float((f_gen @ f_sub.T).mean()), "pixel_distance": float(pix.min(1).values.mean()),
            "diversity": float(d.sum() / (len(feats) * (len(feats) - 1)))}


@torch.no_grad()
def prior_metrics(pipe: Pipeline, referee, held01: torch.Tensor, per_class: int, seed: int) -> dict:
    n = pipe.config.num_classes
    labels = [c for c in range(n) for _ in range(per_class)]
    images = generate(pipe, labels, seed)
    y = torch.tensor(labels)
    ev = pipe.components["evaluator"]
    return {"accuracy": float((ev(images).argmax(1) == y).float().mean()) * 100,
            "judge_accuracy": float((referee(images).argmax(1) == y).float().mean()) * 100,
            "fid": frechet_distance(FeatureExtractor(ev), batches(held01), batches(images)), "images": images}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", default="brick7,grass3")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--prior-weight", type=float, default=3.0)
    p.add_argument("--scale-weights", default="power:1")
    p.add_argument("--groups", default="class,ffn,adaln")
    p.add_argument("--subject-samples", type=int, default=32)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="finetune")
    args = parse_args(p, argv)
    from bench.search import judge

    pipe = Pipeline.from_pretrained()
    ev = pipe.components["evaluator"]
    referee = judge()
    held01 = DigitsDataset("heldout").tensors()[0].add(1).mul(0.5)
    n = pipe.config.num_classes
    base_prior = prior_metrics(pipe, referee, held01, args.per_class, 5000)
    rows, grids, payload = [], {}, {"settings": vars(args), "runs": []}
    row = {"subject": "-", "method": "untuned (other classes)", "accuracy": base_prior["accuracy"],
           "judge_accuracy": base_prior["judge_accuracy"], "fid": base_prior["fid"]}
    rows.append(row)
    payload["runs"].append(row)
    out = results_dir()
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    for subject in args.subjects.split(","):
        images = load_subject_images([SUBJECTS / subject], pipe.config.tokenizer.image_size)
        subject01 = images.add(1).mul(0.5)
        before = generate(pipe, [DIGIT[subject]] * args.subject_samples, 9000)
        row = {"subject": subject, "method": "untuned (digit class)", **subject_metrics(ev, before, subject01)}
        rows.append(row)
        payload["runs"].append(row)
        grid = [subject01, before[:8]]
        for method in args.methods.split(","):
            settings = dict(groups=args.groups, rank=args.rank, prior_weight=args.prior_weight,
                            scale_weights=args.scale_weights)
            settings.update(METHODS[method])
            cfg = FinetuneConfig(new_class=True, **settings)
            train = TrainConfig(steps=args.steps, lr=args.lr if settings["rank"] else args.lr / 3, warmup_steps=10,
                                weight_decay=0.0, ema_decay=0.0, seed=args.seed, log_every=max(1, args.steps))
            t = time.perf_counter()
            res = finetune_subject(pipe.transformer, pipe.tokenizer, images, cfg, train)
            seconds = time.perf_counter() - t
            path = save_adapter(out / "tmp" / f"{args.name}_{subject}_{method}.safetensors", res.adapter)
            with pipe.using_adapter(res.adapter):
                gen = generate(pipe, [n + 1] * args.subject_samples, 9000)
                prior = prior_metrics(pipe, referee, held01, args.per_class, 5000)
            row = {"subject": subject, "method": method, **subject_metrics(ev, gen, subject01),
                   "accuracy": prior["accuracy"], "judge_accuracy": prior["judge_accuracy"], "fid": prior["fid"],
                   "fid_change_pct": 100 * (prior["fid"] / base_prior["fid"] - 1),
                   "accuracy_drop": base_prior["accuracy"] - prior["accuracy"],
                   "tune_seconds": seconds, "trainable": res.trainable_parameters,
                   "adapter_kib": path.stat().st_size / 1024, "settings": {**settings, "groups": list(cfg.groups)}}
            print({k: v for k, v in row.items() if k != "settings"}, flush=True)
            rows.append(row)
            payload["runs"].append(row)
            grid.append(gen[:8])
            if method == "full":
                grids[f"{subject}_others"] = (base_prior["images"].view(n, args.per_class, *gen.shape[1:])[:, :8],
                                              prior["images"].view(n, args.per_class, *gen.shape[1:])[:, :8])
        save_grid(torch.cat([g[:8] if len(g) >= 8 else torch.cat([g, g.new_ones(8 - len(g), *g.shape[1:])])
                             for g in grid]), out / f"{args.name}_{subject}.png", nrow=8)
    for key, (a, b) in grids.items():
        save_grid(torch.cat([torch.cat([x, y]) for x, y in zip(a, b)]), out / f"{args.name}_{key}.png", nrow=16)
    columns = ["subject", "method", "feature_similarity", "pixel_distance", "diversity", "accuracy", "accuracy_drop",
               "judge_accuracy", "fid", "fid_change_pct", "tune_seconds", "trainable", "adapter_kib"]
    table = markdown_table(rows, columns)
    note = (f"\n\nGrids: bench/results/{args.name}_<subject>.png, rows: subject pictures, untuned model (digit class), "
            f"then {', '.join(args.methods.split(','))}; {args.name}_<subject>_others.png: each existing class, "
            "8 samples before (left) and after (right) the full method's adapter, same seeds.")
    write_results(args.name, payload, table + note)


if __name__ == "__main__":
    main()
